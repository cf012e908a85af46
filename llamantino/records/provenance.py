"""A run's record (provenance.json), typed: code and package versions, command line, the model and data
it read (with their hashes and revisions), how it trained, what it produces.

Written once when the run directory is written, read back through :meth:`RunDir.provenance`; every
reader works from these types, never from string keys."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import subprocess
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from llamantino.errors import ConfigError, RunDirError
from llamantino.records.files import relative_inside
from llamantino.paths import PROJECT_ROOT

RECORD_VERSION = 2  # provenance.json's layout; 1 was the untyped record before llamantino's records/

PACKAGES = ("llamantino", "axolotl", "torch", "transformers", "tokenizers", "peft", "trl", "datasets", "accelerate",
            "bitsandbytes", "hydra-core", "omegaconf", "lm_eval")


@lru_cache(maxsize=None)
def package_versions() -> dict[str, str | None]:
    """Installed versions of the training stack (None where a package is absent)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@lru_cache(maxsize=None)
def git_state() -> dict:
    """The project's git commit and whether the work tree has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _cuda_runtime() -> str | None:
    """The CUDA runtime torch was built with here (None for CPU builds, or when torch is not imported)."""
    torch = sys.modules.get("torch")  # never imported just for this: rendering stays light
    return getattr(getattr(torch, "version", None), "cuda", None)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --- the typed run record: provenance.json ------------------------------------------------------


class OutputKind(StrEnum):
    """What a run produces (the next stage's lineage checks read it)."""

    adapter = "adapter"  # a LoRA/QLoRA adapter on output.base_model
    model = "model"  # a full model (trained in full, or merged)
    eval_results = "eval_results"  # results.json and results.md
    release = "release"  # a folder laid out as a Hub model repository (stage=release)
    none = "none"


class SourceKind(StrEnum):
    """Where a run's model comes from."""

    hub = "hub"  # a hub repository, by id and revision
    built = "built"  # built locally by a builder (llamantino/inputs/tiny.py), named in ModelSource.builder
    path = "path"  # a local model folder
    run = "run"  # the output of an earlier run
    merge = "merge"  # an adapter run's base, with the adapter (merge stage)


@dataclass(frozen=True)
class BaseModelRef:
    """The model an adapter was trained on, as its recipe names it."""

    ref: str  # a hub id, or the run-relative link inputs/base_model
    revision: Optional[str] = None
    local: Optional[str] = None  # the link's target, when ref is the link


@dataclass(frozen=True)
class RunOutput:
    kind: OutputKind = OutputKind.none
    path: Optional[str] = None  # relative to the run directory
    adapter: Optional[str] = None  # lora or qlora, for adapters
    precision: Optional[str] = None  # fp32, bf16, fp16 or 4bit, for models
    base_model: Optional[BaseModelRef] = None  # adapters: what they apply to
    datasets: dict[str, Any] = field(default_factory=dict)  # adapters: the recipe's dataset keys (merge needs them)
    data_links: dict[str, str] = field(default_factory=dict)  # adapters: the data links of the training run
    # The prompt template the output answers in (None: raw text), and the system prompt it was
    # trained with (None: the template's default): chat and release read them; merges carry them on.
    template: Optional[str] = None
    system_prompt: Optional[str] = None

    @property
    def trained(self) -> bool:
        """A model or adapter came out of it (something to sample, card or evaluate)."""
        return self.kind in (OutputKind.adapter, OutputKind.model)


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    hub_id: Optional[str] = None  # hub
    revision: Optional[str] = None  # hub
    revision_pinned: Optional[bool] = None  # hub: False when no revision pins it
    path: Optional[str] = None  # built, path: the folder
    builder: Optional[str] = None  # built: the builder that made it (tiny_llama, tiny_mixtral, ...)
    run_dir: Optional[str] = None  # run: the run whose output this is
    output: Optional[RunOutput] = None  # run: that output
    adapter_run: Optional[str] = None  # merge: the adapter's run
    base: Optional[BaseModelRef] = None  # merge: the adapter's base

    def __post_init__(self) -> None:
        if (self.kind == SourceKind.built) != (self.builder is not None):
            raise ConfigError(f"model.builder={self.builder!r} with model.kind={self.kind}: a built model names its "
                              "builder, and no other kind names one")

    def folder(self) -> Optional[Path]:
        """The local folder holding the model (and its tokenizer), where there is one."""
        if self.kind in (SourceKind.built, SourceKind.path) and self.path:
            return Path(self.path)
        if self.kind == SourceKind.run and self.run_dir and self.output is not None and self.output.path:
            return Path(self.run_dir) / self.output.path
        if self.kind == SourceKind.merge and self.base is not None and self.base.local:
            return Path(self.base.local)
        return None


@dataclass(frozen=True)
class DataInput:
    name: str
    format: str
    hub_id: Optional[str] = None
    subset: Optional[str] = None
    revision: Optional[str] = None
    revision_pinned: Optional[bool] = None
    split: Optional[str] = None
    local: Optional[str] = None  # a local file: its absolute path ...
    sha256: Optional[str] = None  # ... and its hash
    report: Optional[dict[str, Any]] = None  # the data check's counts
    corpus: Optional[dict[str, Any]] = None  # a prepared corpus: key, entry, budget, sources
    rows: Optional[dict[str, Any]] = None  # prepared SFT/DPO rows: key, entry, seed, sources with weights
    license: Optional[str] = None  # the data option's licence (a release lists it; non-commercial is named)

    def prepared(self) -> tuple[str, dict[str, Any]] | None:
        """(what, record) of the entry of the prepared cache the run reads: a corpus or rows."""
        if self.corpus:
            return "corpus", self.corpus
        return ("rows", self.rows) if self.rows else None


@dataclass(frozen=True)
class MethodRecord:
    adapter: Optional[str]
    distributed: str
    nodes: int
    processes_per_node: int


@dataclass
class Provenance:
    """Everything a run was made from, written once as provenance.json and read back typed."""

    stage_type: str  # the stage type that built the run (llamantino/stages): stage_for(run) asks it
    llamantino: Optional[str]
    created: str
    git: dict[str, Any]
    packages: dict[str, Optional[str]]
    python: str
    cuda: Optional[str]
    command: list[str]
    overrides: list[str]
    choices: dict[str, str]
    experiment: Optional[str]
    model: ModelSource
    data: Optional[DataInput]
    method: Optional[MethodRecord]
    notices: list[str]
    output: RunOutput
    env: dict[str, str] = field(default_factory=dict)  # the stage process's environment (no secrets)
    data_report: Optional[dict[str, Any]] = None  # the plugin's loader report, added when the run finished
    derived_from: Optional[str] = None  # launch --again: the run this one was written afresh from
    record: int = RECORD_VERSION

    def to_json(self) -> str:
        from llamantino.config.schema import to_plain

        return json.dumps(to_plain(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_data(cls, data, where: str) -> "Provenance":
        """The record from parsed JSON; anything malformed names the file (RunDirError)."""
        from llamantino.config.schema import from_plain

        if isinstance(data, dict) and data.get("record") != RECORD_VERSION:
            raise RunDirError(f"{where} is a run record of another llamantino version (record "
                              f"{data.get('record', 1)}, this one reads {RECORD_VERSION}): re-render the run")
        try:
            record = from_plain(cls, data, "provenance")
        except ConfigError as exc:
            raise RunDirError(f"{where}: {exc}") from None
        output = record.output.path
        if output is not None and not relative_inside(output):
            raise RunDirError(f"{where}: output.path={output!r} must be a path inside the run directory")
        return record


def compact(record) -> dict | None:
    """A record as plain data without its unset fields (lock files, shared recipes)."""
    from llamantino.config.schema import to_plain

    return None if record is None else {key: value for key, value in to_plain(record).items() if value is not None}


def build_provenance(stage_type: str, cfg, overrides: list[str], choices: dict, method, inputs,
                     output: RunOutput, notices: list[str], env: dict[str, str]) -> Provenance:
    """The provenance record written as provenance.json (secrets never appear: none are read here)."""
    data = None
    if inputs.data is not None:
        fields_ = {item.name for item in dataclasses.fields(DataInput)}
        data = DataInput(**{key: value for key, value in inputs.data.items() if key in fields_ and value is not None})
        if data.hub_id and not data.revision:
            data = dataclasses.replace(data, revision_pinned=False)
    model = inputs.model_source
    if model.kind == SourceKind.hub and not model.revision:
        model = dataclasses.replace(model, revision_pinned=False)
    return Provenance(
        stage_type=stage_type,
        llamantino=package_versions()["llamantino"],
        created=now_iso(),
        git=git_state(),
        packages=package_versions(),
        python=sys.version.split()[0],
        cuda=_cuda_runtime(),
        command=list(sys.argv),
        overrides=list(overrides),
        choices={str(k): str(v) for k, v in choices.items()},
        experiment=cfg.experiment,
        model=model,
        data=data,
        method=None if method is None else MethodRecord(adapter=method.adapter, distributed=method.distributed,
                                                        nodes=method.nodes, processes_per_node=method.processes_per_node),
        notices=list(notices),
        output=output,
        env=dict(env),
    )


CHECKED_PACKAGES = ("llamantino", "axolotl", "torch", "transformers")


def environment_mismatches(provenance: Provenance, needs_gpu: bool) -> list[str]:
    """How this process's Python, packages and CUDA differ from those the run was validated with."""
    found = []
    rendered_python = ".".join(provenance.python.split(".")[:2])
    here_python = ".".join(sys.version.split()[0].split(".")[:2])
    if rendered_python and rendered_python != here_python:
        found.append(f"Python {here_python} (validated {rendered_python})")
    versions, validated = package_versions(), provenance.packages
    for name in CHECKED_PACKAGES:
        if validated.get(name) and versions.get(name) != validated.get(name):
            found.append(f"{name} {versions.get(name)} (validated {validated[name]})")
    if needs_gpu:
        import torch

        if not torch.cuda.is_available():
            found.append(f"no CUDA device visible (torch {torch.__version__}, CUDA runtime {torch.version.cuda})")
        elif provenance.cuda and torch.version.cuda != provenance.cuda:
            found.append(f"CUDA runtime {torch.version.cuda} (validated {provenance.cuda})")
    return found
