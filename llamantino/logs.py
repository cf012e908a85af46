"""Read training progress back from logs: the losses Axolotl prints, one dict per logging step."""

from __future__ import annotations

import re
from pathlib import Path

# Axolotl (HF Trainer) logs lines like: {'loss': '6.94', 'grad_norm': '0.15', ..., 'epoch': '0.17'}
# Multi-node jobs label each line with its srun task ("0: {...}"); only task 0 is counted.
_LOSS = re.compile(r"^(?:\s*0: )?.*?\{'loss': '?([0-9.eE+-]+|nan)'?", re.MULTILINE)
_OTHER_TASK = re.compile(r"^\s*[1-9]\d*: ")
_EVAL_LOSS = re.compile(r"'eval_loss': '?([0-9.eE+-]+)'?")


def parse_losses(text: str) -> list[float]:
    """Every training loss in a log, in order (requeued runs append to the same log)."""
    lines = [line for line in text.replace("\r", "\n").splitlines() if not _OTHER_TASK.match(line)]
    return [float(match) for match in _LOSS.findall("\n".join(lines))]


def run_logs(run_dir: Path) -> list[Path]:
    """The log files of a run: logs/*.log and logs/*.out, oldest first."""
    logs = Path(run_dir) / "logs"
    if not logs.is_dir():
        return []
    return sorted((p for p in logs.iterdir() if p.suffix in (".log", ".out")), key=lambda p: p.stat().st_mtime)


def run_losses(run_dir: Path) -> list[float]:
    """Training losses of a run across all its logs."""
    losses: list[float] = []
    for log in run_logs(run_dir):
        losses += parse_losses(log.read_text(errors="replace"))
    return losses
