"""Resolve what a run reads: base model, adapter, data; check it before anything is written.

A run directory is self-contained: ``axolotl.yaml`` names its inputs by paths relative to the run
directory (``inputs/base_model``, ``inputs/<data file>``), and ``inputs/`` holds symbolic links to
the real locations. The same recipe is therefore byte-identical on every machine, and
``axolotl train axolotl.yaml`` works from inside the run directory.

This module reads the file system (data files, earlier run directories) but writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from llamantino.errors import ConfigError, DataError
from llamantino.paths import DATASETS_DIR

MODEL_LINK = "inputs/base_model"
ADAPTER_LINK = "inputs/adapter"


@dataclass
class Inputs:
    """Everything a stage reads, as the recipe names it and where it really is."""

    base_model: str  # as written in axolotl.yaml: a hub id or MODEL_LINK
    base_model_revision: str | None = None
    model_source: dict = field(default_factory=dict)  # provenance of the base model
    adapter: str | None = None  # merge: ADAPTER_LINK
    data: dict | None = None  # {path, name, split, revision, format, columns, local, sha256, report}
    # merge: the adapter's dataset keys (Axolotl's CLI validates a recipe only with datasets)
    adapter_datasets: dict = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # run-relative name -> absolute target
    files: dict[str, bytes] = field(default_factory=dict)  # run-relative name -> content to write
    build_tiny: bool = False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_run(run_dir: Path, known_runs: dict | None = None) -> dict:
    """The provenance of an earlier llamantino run (its ``output`` record says what it produced).

    ``known_runs`` maps absolute run directories to provenance not yet on disk (a pipeline renders
    every step before it writes any).
    """
    key = str(Path(run_dir).expanduser().resolve())
    if known_runs and key in known_runs:
        return known_runs[key]
    provenance = run_dir / "provenance.json"
    if not provenance.is_file():
        raise ConfigError(f"{run_dir} is not a llamantino run directory (no provenance.json)")
    return json.loads(provenance.read_text())


def _model_from_run(path: Path, stage: dict, known_runs: dict) -> tuple[str, dict]:
    """(absolute model path, source record) of a run's output, checking lineage."""
    output = read_run(path, known_runs).get("output") or {}
    kind = output.get("kind")
    if kind == "adapter":
        raise ConfigError(
            f"run.input_model={path} produced a {output.get('adapter')} adapter, not a model: stage "
            f"{stage['name']} cannot train on it. Merge it into its bf16 base first (stage=merge "
            f"run.input_adapter={path}), or put a merge step before this one in the pipeline"
        )
    if kind != "model":
        raise ConfigError(f"run.input_model={path} produced no model (its stage has no model output)")
    if stage["adapter"] is None and output.get("precision") == "4bit":
        raise ConfigError(
            f"run.input_model={path} is a 4-bit model; full fine-tuning (FSDP) must start from a merged "
            "bf16 model: merge the adapter with stage=merge (it loads the base in bf16)"
        )
    return str((path / output["path"]).resolve()), {"kind": "run", "run_dir": str(path.resolve()), **output}


def _eval_input(path: Path, known_runs: dict) -> Inputs:
    """What an eval reads from a run: its merged/full model, or its base plus adapter."""
    key = str(path.resolve())
    if key not in known_runs:  # a run on disk must have finished; a pipeline step evaluates a future output
        from llamantino.finish import read_status

        state = read_status(path).get("state") or "not finished"
        if state != "COMPLETED":
            raise ConfigError(f"run.input_model={path} has no finished output to evaluate (state: {state})")
    output = read_run(path, known_runs).get("output") or {}
    source = {"kind": "run", "run_dir": key, **output}
    if output.get("kind") == "model":
        return Inputs(base_model=MODEL_LINK, model_source=source, links={MODEL_LINK: str((path / output["path"]).resolve())})
    if output.get("kind") != "adapter":
        raise ConfigError(f"run.input_model={path} produced nothing to evaluate")
    base = output["base_model"]
    inputs = Inputs(base_model=base["ref"], base_model_revision=base.get("revision"), adapter=ADAPTER_LINK,
                    model_source=source)
    inputs.links[ADAPTER_LINK] = str((path / output["path"]).resolve())
    if base.get("local"):
        inputs.links[MODEL_LINK] = base["local"]
    return inputs


def resolve_model(cfg: dict, tiny_dir, known_runs: dict) -> Inputs:
    """The base model (and, for merge, the adapter) of a stage."""
    stage, model, run = cfg["stage"], cfg["model"], cfg["run"]
    if stage["task"] == "merge":
        if not run["input_adapter"]:
            raise ConfigError("stage=merge needs run.input_adapter=<run directory of a LoRA/QLoRA stage>")
        adapter_run = Path(run["input_adapter"]).expanduser()
        output = read_run(adapter_run, known_runs).get("output") or {}
        if output.get("kind") != "adapter":
            raise ConfigError(f"run.input_adapter={adapter_run} produced no adapter to merge (output: {output.get('kind')})")
        base = output["base_model"]
        inputs = Inputs(base_model=base["ref"], base_model_revision=base.get("revision"), adapter=ADAPTER_LINK,
                        model_source={"kind": "merge", "adapter_run": str(adapter_run.resolve()), **base})
        inputs.links[ADAPTER_LINK] = str((adapter_run / output["path"]).resolve())
        if base.get("local"):
            inputs.links[MODEL_LINK] = base["local"]
        inputs.adapter_datasets = output.get("datasets") or {}
        for name, target in (output.get("data_links") or {}).items():
            inputs.links[name] = target
        return inputs
    if run["input_model"]:
        path = Path(run["input_model"]).expanduser()
        if stage["task"] == "eval" and ((path / "provenance.json").is_file() or str(path.resolve()) in known_runs):
            return _eval_input(path, known_runs)
        if (path / "provenance.json").is_file() or str(path.resolve()) in known_runs:
            target, source = _model_from_run(path, stage, known_runs)
        elif (path / "config.json").is_file():
            target, source = str(path.resolve()), {"kind": "path", "path": str(path.resolve())}
        else:
            raise ConfigError(f"run.input_model={path} is neither a llamantino run directory nor a model folder (no config.json)")
        return Inputs(base_model=MODEL_LINK, model_source=source, links={MODEL_LINK: target})
    if model["builder"] == "tiny_llama":
        target = str(tiny_dir())
        return Inputs(base_model=MODEL_LINK, links={MODEL_LINK: target}, build_tiny=True,
                      model_source={"kind": "tiny_llama", "path": target})
    if model["builder"]:
        raise ConfigError(f"model.builder={model['builder']!r} is unknown; the only builder is tiny_llama")
    if not model["hub_id"]:
        raise ConfigError(f"model {model['name']} has neither hub_id nor builder")
    return Inputs(base_model=model["hub_id"], base_model_revision=model["revision"],
                  model_source={"kind": "hub", "hub_id": model["hub_id"], "revision": model["revision"]})


def resolve_data(cfg: dict) -> dict | None:
    """Check the stage's data and describe it for the recipe; nothing for merge/eval stages."""
    from llamantino_plugin.formats import DataFileError, check_file, columns_for

    stage, data = cfg["stage"], cfg["data"]
    if stage["task"] != "train":
        return None
    if data["format"] not in stage["data_formats"]:
        raise ConfigError(
            f"stage {stage['name']} trains on {' or '.join(stage['data_formats'])} data, but data={data['name']} "
            f"is {data['format']}; choose a data option of format {'/'.join(stage['data_formats'])}"
        )
    try:
        columns = columns_for(data["format"], data["columns"])
    except ValueError as exc:
        raise ConfigError(f"data.columns of {data['name']}: {exc}") from None
    entry = {"name": data["name"], "format": data["format"], "columns": data["columns"], "split": data["split"],
             "subset": data["subset"], "revision": data["revision"]}
    if data["path"]:
        local = Path(data["path"]).expanduser()
        local = local if local.is_absolute() else DATASETS_DIR / local
        kept: list[bytes] | None = [] if stage["bad_rows"] == "skip" else None
        try:
            report = check_file(local, data["format"], columns, stage["bad_rows"], keep=kept)
        except DataFileError as exc:
            raise DataError(f"data={data['name']}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"stage.bad_rows: {exc}") from None
        entry.update(local=str(local.resolve()), sha256=sha256_file(local), report=report.as_dict(),
                     recipe_path=f"inputs/{local.name}")
        if kept is not None and report.skipped:
            entry["cleaned"] = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in kept)
        return entry
    if not data["hub_id"]:
        raise ConfigError(f"data {data['name']} has neither path nor hub_id")
    entry.update(hub_id=data["hub_id"], recipe_path=data["hub_id"])
    return entry


def resolve_inputs(cfg: dict, tiny_dir, known_runs: dict | None = None) -> Inputs:
    """Model, adapter and data of a stage; raises ConfigError/DataError naming what is wrong."""
    inputs = resolve_model(cfg, tiny_dir, known_runs or {})
    data = resolve_data(cfg)
    if data is not None:
        cleaned = data.pop("cleaned", None)
        if cleaned is not None:
            inputs.files[data["recipe_path"]] = cleaned
        elif "local" in data:
            inputs.links[data["recipe_path"]] = data["local"]
    inputs.data = data
    return inputs
