"""Experiment tracking after the fact: W&B runs written offline (on nodes without network) and their upload.

``python -m llamantino.sync <run, pipeline or sweep dir>`` finds every offline W&B run under it and
uploads it with ``wandb sync`` from a machine with network (``--dry-run`` lists them). The API key
comes from ``WANDB_API_KEY`` or ``wandb login``, never from llamantino's files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llamantino.errors import LaunchError, RunDirError
from llamantino.rundir import PipelineDir, RunDir, SweepDir

WANDB_DIR = "wandb"  # under the run directory: the job runs there with WANDB_DIR=.


def run_dirs(target: Path) -> list[RunDir]:
    """The run directories of a run, pipeline or sweep directory."""
    pipeline, sweep, run = PipelineDir(Path(target)), SweepDir(Path(target)), RunDir(Path(target))
    if pipeline.is_pipeline():
        return [RunDir(step["run_dir"]) for step in pipeline.manifest()["steps"]]
    if sweep.is_sweep():
        return [RunDir(sweep.path / point["run_dir"]) for point in sweep.record()["points"]]
    if run.is_run():
        return [run]
    raise RunDirError(f"{target} is not a llamantino run, pipeline or sweep directory")


def offline_runs(target: Path) -> list[Path]:
    """Every offline W&B run folder under ``target``."""
    return [path for run in run_dirs(target) for path in sorted((run / WANDB_DIR).glob("offline-run-*"))
            if path.is_dir()]


def sync(paths: list[Path]) -> None:
    """Upload offline W&B runs with ``wandb sync`` (needs network and a W&B login)."""
    for path in paths:
        proc = subprocess.run([sys.executable, "-m", "wandb", "sync", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LaunchError(f"wandb sync {path} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
