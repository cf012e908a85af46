"""Experiment tracking after the fact: W&B runs written offline (on nodes without network) and their upload.

``python -m llamantino sync <run, pipeline or sweep dir>`` finds every offline W&B run under it and
uploads it with ``wandb sync`` from a machine with network (``--dry-run`` lists them). The API key
comes from ``WANDB_API_KEY`` or ``wandb login``, never from llamantino's files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llamantino.errors import LaunchError
from llamantino.records.rundir import runs_under

WANDB_DIR = "wandb"  # under the run directory: the job runs there with WANDB_DIR=.


def offline_runs(target: Path) -> list[Path]:
    """Every offline W&B run folder under ``target``."""
    return [path for _, run in runs_under(target) for path in sorted((run / WANDB_DIR).glob("offline-run-*"))
            if path.is_dir()]


def sync(paths: list[Path]) -> None:
    """Upload offline W&B runs with ``wandb sync`` (needs network and a W&B login)."""
    for path in paths:
        proc = subprocess.run([sys.executable, "-m", "wandb", "sync", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LaunchError(f"wandb sync {path} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
