"""The release stage: a trained model written as a Hub model repository, with its scores and lineage.

``python -m llamantino stage=release run.input_model=<eval run, or a trained/merged run>``; the last
step of the shipped pipelines. Given an eval run, it releases the model that run evaluated, with
those scores in the card's ``model-index``; given a trained or merged run, the model alone. The run
directory holds ``release.json`` (the plan: which runs, what to write); the job,
``python -m llamantino.job.release .``, writes ``release/`` (llamantino/job/release.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from llamantino.config.method import BF16_BYTES, checkpoint_gb, io_hours, model_ram_gb
from llamantino.config.schema import LlamantinoConfig, ReleaseWhat, non_commercial, to_plain
from llamantino.errors import ConfigError
from llamantino.inputs.resolve import Inputs, read_run, unfinished
from llamantino.records.manifests import ReleasePlan, ReleasePush
from llamantino.records.provenance import OutputKind, Provenance, RunOutput, SourceKind
from llamantino.records.rundir import RunDir
from llamantino.stages.base import Stage, Work
from llamantino.stages.eval import run_output


class ReleaseStage(Stage):
    task = "release"
    command = ("-m", "llamantino.job.release", ".")
    plan_file = RunDir.RELEASE_PLAN

    def inputs(self, cfg: LlamantinoConfig, method, tiny_dir, known_runs: dict) -> Inputs:
        if not cfg.run.input_model:
            raise ConfigError("stage=release needs run.input_model=<an eval run, or a trained or merged run>")
        model_run, eval_runs = released_runs(Path(cfg.run.input_model).expanduser(), known_runs)
        inputs = run_output(model_run, known_runs)
        records = dict(known_runs)
        lineage = lineage_of(model_run, records)
        inputs.runs = {"model_run": model_run, "eval_runs": eval_runs, "lineage": lineage,
                       "data": [records[run_dir].data for run_dir in lineage if records[run_dir].data is not None]}
        return inputs

    def render(self, cfg, method, inputs, notices):
        model_run, eval_runs, lineage = (inputs.runs[key] for key in ("model_run", "eval_runs", "lineage"))
        output = inputs.model_source.output
        if cfg.release.what == ReleaseWhat.adapter and output.kind != OutputKind.adapter:
            raise ConfigError(f"release.what=adapter, but {model_run} produced a full model, not an adapter; "
                              "use release.what=model")
        for data in inputs.runs["data"]:
            if non_commercial(data.license):
                notices.append(f"data {data.name} is licensed {data.license}: the released model may not be used "
                               "commercially (the card says so in bold)")
        plan = ReleasePlan(
            name=cfg.run.name or f"{cfg.model.name}-release", what=str(cfg.release.what), model_run=str(model_run),
            output_kind=str(output.kind), eval_runs=[str(path) for path in eval_runs], lineage=lineage,
            max_shard_size=cfg.release.max_shard_size, template=output.template, system_prompt=output.system_prompt,
            push=ReleasePush(repo_id=cfg.release.repo_id, private=cfg.release.private, revision=cfg.release.revision))
        return None, {RunDir.RELEASE_PLAN: json.dumps(to_plain(plan), indent=2, ensure_ascii=False) + "\n"}

    def validate(self, cfg, recipe, files):
        pass  # everything is checked while rendering: the runs, their outputs, the options

    def output(self, cfg, method, inputs, recipe):
        source = inputs.model_source.output
        return RunOutput(kind=OutputKind.release, path=RunDir.RELEASE, template=source.template,
                         system_prompt=source.system_prompt)

    def prepare_command(self, run):
        return None, {}  # reads finished runs only

    def work(self, cfg, shape):
        adapter = cfg.release.what == ReleaseWhat.adapter
        size = checkpoint_gb(cfg.model.params_b, "lora") if adapter else cfg.model.params_b * BF16_BYTES
        hours, how = io_hours(cfg.hardware, 2 * size)
        return Work(hours, f"read and write the {'adapter' if adapter else 'bf16 model in shards'} ({size:,.1f} GB) "
                           f"with its card: {how}")

    def shape(self, cfg, method):
        """Merging an adapter loads the 16-bit model once, in host memory: no GPU, no whole node."""
        return self.sized_shape(cfg, 0, model_ram_gb(cfg.model.params_b)) if cfg.hardware.gpu else \
            super().shape(cfg, method)


def _finished(path: Path, known_runs: dict, what: str) -> Provenance:
    """The record of a run the release reads: one of this pipeline's steps, or a run that completed."""
    state = unfinished(path, known_runs)
    if state is not None:
        raise ConfigError(f"run.input_model={path}: {what} has not finished (state: {state}); release it once it "
                          "has completed")
    return read_run(path, known_runs)


def released_runs(path: Path, known_runs: dict) -> tuple[Path, list[Path]]:
    """(the run whose model is released, the eval runs whose scores go with it) of run.input_model."""
    provenance = _finished(path, known_runs, "the run")
    output = provenance.output
    if output.kind == OutputKind.eval_results:
        source = provenance.model
        if source.kind != SourceKind.run or not source.run_dir:
            raise ConfigError(f"run.input_model={path} evaluated {source.hub_id or source.path or 'a model folder'}, "
                              "not a llamantino run: release the run that trained it")
        return Path(source.run_dir), [path.resolve()]
    if not output.trained:
        raise ConfigError(f"run.input_model={path} produced {output.kind}, nothing to release: give an eval run or "
                          "a trained or merged run")
    return path.resolve(), []


def lineage_of(model_run: Path, known_runs: dict) -> list[str]:
    """Every run that made ``model_run``'s output, base first: the runs each one read its model (or
    adapter) from, back to the base model. Their records are read into ``known_runs``."""
    chain: list[str] = []
    current: Path | None = model_run
    while current is not None:
        key = str(current.resolve())
        if key in chain:
            raise ConfigError(f"{current}: its records name each other as inputs (a loop); re-render these runs")
        provenance = _finished(current, known_runs, "a run it was made from")
        known_runs.setdefault(key, provenance)
        chain.append(key)
        source = provenance.model
        upstream = source.adapter_run if source.kind == SourceKind.merge else \
            source.run_dir if source.kind == SourceKind.run else None
        current = Path(upstream) if upstream else None
    return chain[::-1]
