"""Read training progress back from logs: the losses Axolotl prints, one dict per logging step."""

from __future__ import annotations

import re

from llamantino.records.files import MAX_LOG_BYTES, read_bytes
from llamantino.records.rundir import RunDir

# Axolotl (HF Trainer) logs lines like: {'loss': '6.94', 'grad_norm': '0.15', ..., 'epoch': '0.17'}
# Multi-node jobs label each line with its srun task ("0: {...}"); only task 0 is counted.
_LOSS = re.compile(r"^(?:\s*0: )?.*?\{'loss': '?([0-9.eE+-]+|nan)'?", re.MULTILINE)
_OTHER_TASK = re.compile(r"^\s*[1-9]\d*: ")


def parse_losses(text: str) -> list[float]:
    """Every training loss in a log, in order (requeued runs append to the same log)."""
    lines = [line for line in text.replace("\r", "\n").splitlines() if not _OTHER_TASK.match(line)]
    return [float(match) for match in _LOSS.findall("\n".join(lines))]


def run_losses(run_dir) -> list[float]:
    """Training losses of a run across all its logs (of a log longer than MAX_LOG_BYTES, its end)."""
    losses: list[float] = []
    for log in RunDir(getattr(run_dir, "path", run_dir)).logs():
        losses += parse_losses(read_bytes(log, MAX_LOG_BYTES, tail=True).decode("utf-8", errors="replace"))
    return losses
