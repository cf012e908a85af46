"""Experiment tracking after the fact: W&B runs written offline (on nodes without network) and their upload.

``python -m llamantino sync <run, pipeline or sweep dir>`` finds every offline W&B run under it and
uploads it with ``wandb sync`` from a machine with network (``--dry-run`` lists them). The API key
comes from ``WANDB_API_KEY`` or ``wandb login``, never from llamantino's files. A requeued or relaunched
run writes one offline folder per attempt, all with the run's one id (kept in the run directory,
``RunDir.TRACKING_RUN``); they are uploaded oldest first, so the attempts continue one W&B run.

Without network ``wandb sync`` retries for good, so each upload has a time limit
(:data:`SYNC_TIMEOUT_S`, ``--timeout``); a run that was not uploaded, or nothing to upload at all,
is an error, never a silent success.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from llamantino.errors import ConfigError, LaunchError, RunDirError, one_line
from llamantino.records.rundir import runs_under

WANDB_DIR = "wandb"  # under the run directory: the job runs there with WANDB_DIR=.
SYNC_TIMEOUT_S = 600.0  # per offline run: uploads of long trainings take minutes; a dead network never answers


def offline_runs(target: Path) -> list[Path]:
    """Every offline W&B run folder under ``target`` that holds a run record (``run-*.wandb``); an
    error when there is none (``wandb sync`` would answer "No runs to sync." and exit 0)."""
    found = [path for _, run in runs_under(target) for path in sorted((run / WANDB_DIR).glob("offline-run-*"))
             if path.is_dir() and any(path.glob("run-*.wandb"))]
    if not found:
        raise RunDirError(f"{target}: nothing to sync: no offline W&B run (<run>/{WANDB_DIR}/offline-run-*/run-*.wandb) "
                          "under it; only runs trained with tracking=wandb offline write them")
    return found


def _wandb_sync(path: Path, timeout_s: float) -> str | None:
    """Upload one offline run; None when it was uploaded, else why not (one line)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        # Its own process group: wandb starts helper processes, and a timeout must end them all.
        proc = subprocess.Popen([sys.executable, "-m", "wandb", "sync", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f"wandb sync did not finish in {timeout_s:g} s (no network? raise --timeout for a large run)"
        finally:
            if proc.returncode is None:  # timed out or interrupted
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        log.seek(0)
        output = log.read()
    return None if rc == 0 else f"wandb sync failed (exit {rc}): {one_line(output)[-400:]}"


def sync(paths: list[Path], timeout_s: float = SYNC_TIMEOUT_S, progress=print) -> None:
    """Upload offline W&B runs with ``wandb sync`` (needs network and a W&B login), each within
    ``timeout_s``; the ones that fail are named in one error after the others were tried."""
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(f"--timeout {timeout_s:g} must be a positive number of seconds (default {SYNC_TIMEOUT_S:g})")
    failed = []
    for path in paths:
        why = _wandb_sync(path, timeout_s)
        if why is None:
            progress(f"synced {path}")
        else:
            failed.append(f"{path}: {why}")
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        # LaunchError keeps line breaks (a training's log tail); this one is one line.
        raise LaunchError(one_line(f"{len(failed)} of {len(paths)} offline W&B run(s) not synced: {failed[0]}{more}"))
