"""Where a running (or finished) training stands: step of total, seconds per step, tokens/s, ETA.

The plugin's progress callback (llamantino_plugin.progress) writes one line per logging step to the
job's log; this module reads the last such line back (bounded, untrusted) for ``status`` and ``runs``,
and falls back on the newest checkpoint's trainer_state.json.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from llamantino.errors import RunDirError
from llamantino.records.files import MAX_STATE_BYTES, load_json, read_bytes
from llamantino.records.rundir import RunDir
from llamantino_plugin.progress import DONE, PREFIX, format_eta  # noqa: F401 - format_eta is this module's too

TAIL_BYTES = 1 << 20  # of each log: progress lines come once per logging step, the last is near the end
MAX_STEPS = 10**9
MAX_SECONDS_PER_STEP = 10**7
MAX_TOKENS_PER_SECOND = 10**12

# srun --label puts "N: " before a line; only global rank 0 writes progress, on whichever task it runs.
_LINE = re.compile(rf"^(?:\d{{1,6}}: )?{re.escape(PREFIX)}({re.escape(DONE)})?step (\d{{1,10}})(?:/(\d{{1,10}}))?"
                   r"(?= |$)([ -~]*)$")
_NUMBER = r"([0-9][0-9,]{0,20}(?:\.[0-9]{1,12})?(?:e[+-]?[0-9]{1,3})?)"
_LOSS = re.compile(rf" loss (-?{_NUMBER[1:-1]}|nan)(?= |$)")
_PER_STEP = re.compile(rf" {_NUMBER} s/step(?= |$)")
_TOKENS = re.compile(rf" {_NUMBER} tokens/s(?= |$)")


@dataclass(frozen=True)
class Progress:
    step: int
    total: Optional[int] = None
    loss: Optional[float] = None
    seconds_per_step: Optional[float] = None
    tokens_per_second: Optional[float] = None
    eta_seconds: Optional[float] = None

    @property
    def fraction(self) -> str:
        """``7/200`` (``7`` when the total is unknown)."""
        return f"{self.step}/{self.total}" if self.total else str(self.step)


def _number(pattern: re.Pattern, text: str, limit: float) -> float | None:
    """The number ``pattern`` finds in ``text``, when it is finite and within 0..limit."""
    match = pattern.search(text)
    if not match:
        return None
    try:
        value = float(match.group(1).replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value <= limit else None


def parse_progress(line: str) -> Progress | None:
    """The progress one log line reports; None for any other line, or one that does not add up."""
    match = _LINE.match(line.rstrip("\r\n"))
    if not match:
        return None
    done, step, total, rest = match.group(1), int(match.group(2)), match.group(3), match.group(4)
    total = int(total) if total is not None else None
    if step > MAX_STEPS or (total is not None and not 0 < total <= MAX_STEPS) or (total and step > total):
        return None
    loss_match = _LOSS.search(rest)
    loss = float(loss_match.group(1)) if loss_match else None
    per_step = _number(_PER_STEP, rest, MAX_SECONDS_PER_STEP)
    eta = 0.0 if done else ((total - step) * per_step if total and per_step is not None else None)
    return Progress(step=step, total=total, loss=loss if loss is None or math.isfinite(loss) else None,
                    seconds_per_step=per_step, tokens_per_second=_number(_TOKENS, rest, MAX_TOKENS_PER_SECOND),
                    eta_seconds=eta)


def log_progress(text: str) -> Progress | None:
    """The last complete progress line of a log's text (a line still being written is not one)."""
    lines = text.replace("\r", "\n").split("\n")[:-1]
    for line in reversed(lines):
        if PREFIX in line:
            found = parse_progress(line)
            if found is not None:
                return found
    return None


def _from_checkpoint(run: RunDir) -> Progress | None:
    """Step and total of the newest checkpoint that has a readable trainer_state.json."""
    for _, folder, _ in reversed(run.checkpoints()):
        try:
            state = load_json(folder / RunDir.TRAINER_STATE, MAX_STATE_BYTES)
        except (FileNotFoundError, RunDirError):
            continue
        step = state.get("global_step") if isinstance(state, dict) else None
        total = state.get("max_steps") if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEPS:
            continue
        if isinstance(total, bool) or not isinstance(total, int) or not step <= total <= MAX_STEPS or total == 0:
            total = None
        return Progress(step=step, total=total)
    return None


def run_progress(run: RunDir) -> Progress | None:
    """The run's latest progress, None before its first logged step (or saved checkpoint)."""
    run = RunDir(getattr(run, "path", run))
    for log in reversed(run.logs()):  # newest first
        try:
            text = read_bytes(log, TAIL_BYTES, tail=True).decode("utf-8", errors="replace")
        except (FileNotFoundError, RunDirError):
            continue
        found = log_progress(text)
        if found is not None:
            return found
    return _from_checkpoint(run)
