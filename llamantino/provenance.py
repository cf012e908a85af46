"""Provenance of a run: code version, package versions, command line, inputs and their hashes."""

from __future__ import annotations

import datetime as _dt
import subprocess
import sys
from functools import lru_cache
from importlib import metadata

from llamantino.paths import PROJECT_ROOT

PACKAGES = ("llamantino", "axolotl", "torch", "transformers", "peft", "trl", "datasets", "accelerate",
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


def build_provenance(cfg, overrides: list[str], choices: dict, method, inputs, output: dict | None,
                     notices: list[str]) -> dict:
    """The provenance record written as provenance.json (secrets never appear: none are read here)."""
    data = None
    if inputs.data is not None:
        data = {key: inputs.data.get(key) for key in ("name", "format", "hub_id", "subset", "revision", "split",
                                                       "local", "sha256", "report", "corpus") if inputs.data.get(key) is not None}
        if data.get("hub_id") and not data.get("revision"):
            data["revision_pinned"] = False
    model = dict(inputs.model_source)
    if model.get("kind") == "hub" and not model.get("revision"):
        model["revision_pinned"] = False
    return {
        "llamantino": package_versions()["llamantino"],
        "created": now_iso(),
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "cuda": _cuda_runtime(),
        "command": list(sys.argv),
        "overrides": list(overrides),
        "choices": dict(choices),
        "experiment": cfg.experiment,
        "model": model,
        "data": data,
        "method": None if method is None else {
            "adapter": method.adapter, "distributed": method.distributed,
            "nodes": method.nodes, "processes_per_node": method.processes_per_node,
        },
        "notices": notices,
        "output": output,
    }


CHECKED_PACKAGES = ("llamantino", "axolotl", "torch", "transformers")


def environment_mismatches(provenance: dict, needs_gpu: bool) -> list[str]:
    """How this process's Python, packages and CUDA differ from those the run was validated with."""
    found = []
    rendered_python = ".".join(str(provenance.get("python", "")).split(".")[:2])
    here_python = ".".join(sys.version.split()[0].split(".")[:2])
    if rendered_python and rendered_python != here_python:
        found.append(f"Python {here_python} (validated {rendered_python})")
    versions, validated = package_versions(), provenance.get("packages") or {}
    for name in CHECKED_PACKAGES:
        if validated.get(name) and versions.get(name) != validated.get(name):
            found.append(f"{name} {versions.get(name)} (validated {validated[name]})")
    if needs_gpu:
        import torch

        if not torch.cuda.is_available():
            found.append(f"no CUDA device visible (torch {torch.__version__}, CUDA runtime {torch.version.cuda})")
        elif provenance.get("cuda") and torch.version.cuda != provenance["cuda"]:
            found.append(f"CUDA runtime {torch.version.cuda} (validated {provenance['cuda']})")
    return found
