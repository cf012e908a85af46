"""Resolve what a run reads: base model, adapter, data; check it before anything is written.

A run directory is self-contained: ``axolotl.yaml`` names its inputs by paths relative to the run
directory (``inputs/base_model``, ``inputs/<data file>``), and ``inputs/`` holds symbolic links to
the real locations. The same recipe is therefore byte-identical on every machine, and
``axolotl train axolotl.yaml`` works from inside the run directory.

Each stage type (``llamantino/stages/``) decides which of these it needs. This module reads the
file system (data files, earlier run directories) but writes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llamantino.errors import ConfigError, DataError
from llamantino.paths import DATASETS_DIR
from llamantino.config.schema import BadRows, LlamantinoConfig
from llamantino.records.provenance import ModelSource, OutputKind, Provenance, RunOutput, SourceKind
from llamantino.records.rundir import RunDir

if TYPE_CHECKING:
    from llamantino.inputs.corpus import CorpusPlan
    from llamantino.inputs.rows import RowsPlan

MODEL_LINK = RunDir.MODEL_LINK
ADAPTER_LINK = RunDir.ADAPTER_LINK


@dataclass
class Inputs:
    """Everything a stage reads, as the recipe names it and where it really is."""

    base_model: str  # as written in axolotl.yaml: a hub id or MODEL_LINK
    base_model_revision: str | None = None
    model_source: ModelSource = field(default_factory=lambda: ModelSource(kind=SourceKind.path))  # where the model comes from
    adapter: str | None = None  # merge and eval of an adapter: ADAPTER_LINK
    data: dict | None = None  # {path, name, split, revision, format, columns, local, sha256, report}
    # merge: the adapter's dataset keys (Axolotl's CLI validates a recipe only with datasets)
    adapter_datasets: dict = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # run-relative name -> absolute target
    files: dict[str, bytes] = field(default_factory=dict)  # run-relative name -> content to write
    build_tiny: bool = False
    corpus: "CorpusPlan | None" = None  # corpus-scale text: the prepared corpus the run reads
    rows: "RowsPlan | None" = None  # SFT and DPO data: the prepared rows the run reads
    runs: dict = field(default_factory=dict)  # stage=release: the runs it reads (stages/release.py)

    @property
    def reads_hub_model(self) -> bool:
        return self.model_source.kind == SourceKind.hub

    @property
    def prepared(self) -> "CorpusPlan | RowsPlan | None":
        """The entry of the prepared cache the run reads (a corpus or rows), if any."""
        return self.corpus if self.corpus is not None else self.rows

    @property
    def reads_hub_data(self) -> bool:
        """The job itself reads data from the hub (prepared data is read from the cache)."""
        return self.prepared is None and self.data is not None and bool(self.data.get("hub_id"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_run(run_dir: Path, known_runs: dict | None = None) -> Provenance:
    """The record of an earlier llamantino run (its ``output`` says what it produced).

    ``known_runs`` maps absolute run directories to provenance not yet on disk (a pipeline renders
    every step before it writes any).
    """
    key = str(Path(run_dir).expanduser().resolve())
    if known_runs and key in known_runs:
        return known_runs[key]
    run = RunDir(run_dir)
    if not run.is_run():
        raise ConfigError(f"{run_dir} is not a llamantino run directory (no {RunDir.PROVENANCE})")
    return run.provenance()


def unfinished(path: Path, known_runs: dict, not_started: str = "not started") -> str | None:
    """Why an earlier run's output cannot be read yet (its state), or None: it completed, or it is a
    step of the same submission (``known_runs``: a pipeline step reads a future output)."""
    if str(Path(path).resolve()) in known_runs:
        return None
    status = RunDir(path).read_status()
    if status is not None and status.state.done:
        return None
    return str(status.state) if status is not None else not_started


def is_run(path: Path, known_runs: dict) -> bool:
    return RunDir(path).is_run() or str(Path(path).resolve()) in known_runs


def from_adapter_output(output: RunOutput, source: ModelSource, adapter_target: str) -> Inputs:
    """The base model and adapter of a LoRA/QLoRA run's output (for merge and eval)."""
    base = output.base_model
    inputs = Inputs(base_model=base.ref, base_model_revision=base.revision, adapter=ADAPTER_LINK, model_source=source)
    inputs.links[ADAPTER_LINK] = adapter_target
    if base.local:
        inputs.links[MODEL_LINK] = base.local
    return inputs


def model_from_run(path: Path, cfg: LlamantinoConfig, known_runs: dict) -> tuple[str, ModelSource]:
    """(absolute model path, source record) of a run's output, checking lineage."""
    output = read_run(path, known_runs).output
    kind = output.kind
    if kind == OutputKind.adapter:
        raise ConfigError(
            f"run.input_model={path} produced a {output.adapter} adapter, not a model: stage "
            f"{cfg.stage.name} cannot train on it. Merge it into its bf16 base first (stage=merge "
            f"run.input_adapter={path}), or put a merge step before this one in the pipeline"
        )
    if kind != OutputKind.model:
        raise ConfigError(f"run.input_model={path} produced no model (its stage has no model output)")
    if cfg.stage.adapter is None and output.precision == "4bit":
        raise ConfigError(
            f"run.input_model={path} is a 4-bit model; full fine-tuning (FSDP) must start from a merged "
            "bf16 model: merge the adapter with stage=merge (it loads the base in bf16)"
        )
    return str((path / output.path).resolve()), ModelSource(kind=SourceKind.run, run_dir=str(path.resolve()), output=output)


def base_model(cfg: LlamantinoConfig, tiny_dir, known_runs: dict) -> Inputs:
    """The model a stage starts from: ``run.input_model`` (a run or a model folder), else the model option."""
    model = cfg.model
    if cfg.run.input_model:
        path = Path(cfg.run.input_model).expanduser()
        if is_run(path, known_runs):
            target, source = model_from_run(path, cfg, known_runs)
        elif (path / "config.json").is_file():
            target, source = str(path.resolve()), ModelSource(kind=SourceKind.path, path=str(path.resolve()))
        else:
            raise ConfigError(f"run.input_model={path} is neither a llamantino run directory nor a model folder (no config.json)")
        return Inputs(base_model=MODEL_LINK, model_source=source, links={MODEL_LINK: target})
    if model.builder:
        from llamantino.inputs.tiny import TINY_BUILDERS

        if model.builder not in TINY_BUILDERS:
            raise ConfigError(f"model.builder={model.builder!r} is unknown; valid builders: {', '.join(TINY_BUILDERS)}")
        target = str(tiny_dir(model.builder))
        return Inputs(base_model=MODEL_LINK, links={MODEL_LINK: target}, build_tiny=True,
                      model_source=ModelSource(kind=SourceKind.built, builder=model.builder, path=target))
    if not model.hub_id:
        raise ConfigError(f"model {model.name} has neither hub_id nor builder")
    return Inputs(base_model=model.hub_id, base_model_revision=model.revision,
                  model_source=ModelSource(kind=SourceKind.hub, hub_id=model.hub_id, revision=model.revision))


def resolve_data(cfg: LlamantinoConfig, data=None) -> dict:
    """Check a training stage's data (``data``: one source of a mixture) and describe it for the recipe."""
    from llamantino_plugin.formats import DataFileError, check_file, columns_for, is_text_name, shown_path

    stage, data = cfg.stage, data or cfg.data
    if data.format not in stage.data_formats:
        wanted = [str(fmt) for fmt in stage.data_formats]
        raise ConfigError(
            f"stage {stage.name} trains on {' or '.join(wanted)} data, but data={data.name} "
            f"is {data.format}; choose a data option of format {'/'.join(wanted)}"
        )
    try:
        columns = columns_for(data.format, data.columns)
    except ValueError as exc:
        raise ConfigError(f"data.columns of {data.name}: {exc}") from None
    entry = {"name": data.name, "format": str(data.format), "columns": dict(data.columns), "split": data.split,
             "subset": data.subset, "revision": data.revision, "license": data.license or None,
             "normalize": data.normalize}
    if data.path:
        local = Path(data.path).expanduser()
        local = local if local.is_absolute() else DATASETS_DIR / local
        if not is_text_name(local):  # it is written into the recipe and the run's records, UTF-8 text
            raise DataError(f"data.path={shown_path(local)} is not a printable UTF-8 name; rename the file")
        kept: list[bytes] | None = [] if stage.bad_rows == BadRows.skip else None
        try:
            report = check_file(local, data.format, columns, str(stage.bad_rows), keep=kept)
        except (DataFileError, ValueError) as exc:  # ValueError: a bad LLAMANTINO_MAX_FILE_BYTES
            raise DataError(f"data={data.name}: {exc}") from None
        entry.update(local=str(local.resolve()), sha256=sha256_file(local), report=report.as_dict(),
                     recipe_path=f"{RunDir.INPUTS}/{local.name}")
        if kept is not None and report.skipped:
            entry["cleaned"] = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in kept)
        return entry
    if not data.hub_id:
        raise ConfigError(f"data {data.name} has neither path nor hub_id")
    entry.update(hub_id=data.hub_id, recipe_path=data.hub_id)
    return entry


def with_corpus(inputs: Inputs, cfg: LlamantinoConfig, world_size: int) -> Inputs:
    """Add the prepared corpus a stage on corpus-scale text reads (planned, not yet made)."""
    from llamantino.inputs.corpus import plan_corpus
    from llamantino_plugin.formats import CORPUS_FORMAT, format_spec

    stage, data = cfg.stage, cfg.data
    if not any(format_spec(fmt).corpus for fmt in stage.data_formats):
        raise ConfigError(f"stage {stage.name} trains on {'/'.join(str(f) for f in stage.data_formats)} data, but "
                          f"data={data.name} is a text corpus; corpora are for language adaptation (stage=adapt)")
    plan = plan_corpus(cfg, inputs.model_source, world_size)
    inputs.corpus = plan
    inputs.data = {"name": data.name, "format": str(CORPUS_FORMAT), "columns": dict(data.columns), "split": data.split,
                   "subset": data.subset, "revision": data.revision, "hub_id": data.hub_id,
                   "license": data.license or None, "corpus": {"key": plan.key, "entry": plan.entry, "budget_tokens": plan.budget_tokens,
                              "blocks": plan.blocks, "margin": plan.margin, "seed": plan.seed,
                              "sources": [{"name": s.name, "origin": s.origin, "hub_id": s.hub_id, "subset": s.subset,
                                           "revision": s.revision, "weight": s.weight, "blocks": s.blocks,
                                           "patterns": list(s.patterns),
                                           **s.normalize_mark}
                                          for s in plan.sources]}}
    return inputs


def _linked(inputs: Inputs, data: dict) -> dict:
    """A resolved local source linked into the run's inputs/ (or its cleaned copy written there)."""
    if data["recipe_path"] in inputs.links or data["recipe_path"] in inputs.files:
        raise ConfigError(f"data {data['name']}: two sources of the mixture are files named "
                          f"{Path(data['recipe_path']).name}; rename one of them")
    cleaned = data.pop("cleaned", None)
    if cleaned is not None:
        inputs.files[data["recipe_path"]] = cleaned
    elif "local" in data:
        inputs.links[data["recipe_path"]] = data["local"]
    return data


def with_rows(inputs: Inputs, cfg: LlamantinoConfig, recipe_keys: dict) -> Inputs:
    """Add the prepared rows (one source, or a weighted mixture) a stage on SFT or DPO data reads.

    ``recipe_keys``: the plugin's recipe keys for the data (render/axolotl.py), part of the key."""
    from llamantino.inputs.rows import mixture_entries, plan_rows, source_of

    entries = mixture_entries(cfg)
    total = sum(weight for _, weight in entries)
    resolved = [_linked(inputs, resolve_data(cfg, entry)) for entry, _ in entries]
    sources = [source_of(data, weight / total) for data, (_, weight) in zip(resolved, entries)]
    plan = plan_rows(cfg, inputs.model_source, sources, recipe_keys)
    inputs.rows = plan
    data = cfg.data
    if len(resolved) == 1:
        inputs.data = {**resolved[0], "rows": plan.record()}
    else:
        licences = sorted({d["license"] for d in resolved if d.get("license")})
        inputs.data = {"name": data.name, "format": str(data.format), "columns": {}, "split": None,
                       "subset": None, "revision": None, "license": data.license or "; ".join(licences) or None,
                       "rows": plan.record()}
    return inputs


def with_data(inputs: Inputs, cfg: LlamantinoConfig, world_size: int = 1, plugin_keys: dict | None = None) -> Inputs:
    """Add the checked training data to ``inputs``: a prepared corpus, prepared rows (SFT, DPO;
    ``plugin_keys``: the recipe's plugin keys, part of their key), or local text (a link to it, or
    its cleaned copy)."""
    if cfg.data.corpus_scale:
        return with_corpus(inputs, cfg, world_size)
    from llamantino_plugin.formats import format_spec

    if format_spec(cfg.data.format).corpus and not cfg.data.sources:  # local text: tokenised by the run itself
        inputs.data = _linked(inputs, resolve_data(cfg))
        return inputs
    return with_rows(inputs, cfg, plugin_keys or {})
