"""Run a prepared run directory here: the stage command in a subprocess, progress streamed.

The full output goes to ``<run>/logs/train.log``; the console shows the data report, each logged
loss and errors. A failing run exits non-zero and the message names the log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from llamantino.errors import LaunchError
from llamantino.finish import finish

_LOSS = re.compile(r"\{'loss': '?([^',]+)'?.*?'learning_rate': '?([^',]+)'?.*'epoch': '?([^',}]+)'?")
_SHOW = re.compile(r"^llamantino (data|eval):|^\|.*\|$|Error|Traceback|Killed")


def progress_line(line: str, step: int) -> str | None:
    """The console's view of one log line: losses condensed, data reports and errors as they are."""
    match = _LOSS.search(line)
    if match:
        loss, lr, epoch = match.groups()
        return f"  step {step}: loss {loss}  lr {lr}  epoch {epoch}"
    if _SHOW.search(line) and "Warning" not in line:
        return "  " + line.strip()[:300]
    return None


def stage_argv(provenance: dict, stage_args: list[str]) -> list[str]:
    """The command line: torchrun when the hardware has several local processes, else plain Python."""
    method = provenance.get("method") or {}
    procs = method.get("processes_per_node") or 1
    if method.get("nodes", 1) > 1:
        raise LaunchError("a multi-node run cannot start with launcher=local; use launcher=slurm")
    if procs > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *stage_args]
    return [sys.executable, *stage_args]


def run_local(run_dir: Path, stage_args: list[str], echo=print) -> dict:
    """Run the stage in ``run_dir``; returns the finish status or raises LaunchError."""
    run_dir = Path(run_dir)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    argv = stage_argv(provenance, stage_args)
    env = {**os.environ, **provenance.get("env", {}), "PYTHONUNBUFFERED": "1"}
    log_path = run_dir / "logs" / "train.log"
    log_path.parent.mkdir(exist_ok=True)
    echo(f"llamantino: running {' '.join(argv[1:])} in {run_dir} (log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
        argv, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        bufsize=1,
    ) as proc:
        step = 0
        for line in proc.stdout:
            log.write(line)
            for part in line.replace("\r", "\n").splitlines():
                step += bool(_LOSS.search(part))
                shown = progress_line(part, step)
                if shown:
                    echo(shown)
        rc = proc.wait()
    status = finish(run_dir, rc)
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise LaunchError(
            f"{argv[-2] if len(argv) > 1 else argv[0]} failed with exit code {rc}; full log: {log_path}\n"
            + "\n".join("  | " + line for line in tail)
        )
    return status
