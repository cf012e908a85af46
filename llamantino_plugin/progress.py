"""Training progress as one plain line per logging step, written by global rank 0 to the job's log.

    llamantino: step 7/200 (3.5%) loss 4.9290 lr 1.20e-04 epoch 2.33 | 0.41 s/step 1,234 tokens/s | ETA 1m20s
    llamantino: training done: step 200/200 in 1m23s | 0.41 s/step 1,234 tokens/s

Lines, not a carriage-return bar: SLURM output files and ``logs/train.log`` keep every one, and
``llamantino.records.progress`` reads the last back for ``status``. Seconds per step are measured
over the steps of this attempt after its first (a resumed run does not count the steps it resumed
from, and the first step pays for compilation and warm-up); tokens/s comes from the token counts
Axolotl keeps (``include_tkps``), summed over every rank, and is left out when there are none.
Importing this module is cheap: transformers is imported when the callback is made.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time

PREFIX = "llamantino: "
DONE = "training done: "


def format_eta(seconds: float | None) -> str:
    """``1h02m``, ``3m20s``, ``45s``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def rate_text(seconds_per_step: float | None, tokens_per_second: float | None) -> str:
    """``0.41 s/step 1,234 tokens/s``; the parts that are known."""
    parts = []
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.3g} s/step")
    if tokens_per_second is not None:
        parts.append(f"{tokens_per_second:,.0f} tokens/s")
    return " ".join(parts)


def step_line(step: int, total: int | None, logs: dict, seconds_per_step: float | None,
              tokens_per_second: float | None) -> str:
    """The progress line of one logging step."""
    line = f"{PREFIX}step {step}/{total}" if total else f"{PREFIX}step {step}"
    if total:
        line += f" ({100 * step / total:.1f}%)"
    for key, label, spec in (("loss", "loss", ".4f"), ("learning_rate", "lr", ".2e"), ("epoch", "epoch", ".2f")):
        value = logs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            line += f" {label} {value:{spec}}"
    rates = rate_text(seconds_per_step, tokens_per_second)
    if rates:
        line += f" | {rates}"
    eta = (total - step) * seconds_per_step if total and seconds_per_step is not None else None
    return line + f" | ETA {format_eta(eta)}"


def _global_rank() -> int:
    """Asked of torch.distributed itself when it runs (see CheckpointComplete: a restored trainer
    state may say "world process zero" on every rank)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def _token_count(state) -> float | None:
    """Tokens processed so far, every rank's (Axolotl all-reduces them); None when it counts none."""
    tokens = getattr(state, "tokens", None)
    value = tokens.get("total") if isinstance(tokens, dict) else None
    if value is None:
        return None
    try:
        return float(value.sum()) if hasattr(value, "sum") else float(value)
    except (TypeError, ValueError):
        return None


@functools.cache
def _callback_class():
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self, out=None):
            self.out = out
            self.began = None  # monotonic time of this attempt's start
            self.first_step = None  # global step of this attempt's first step
            self.mark = None  # (time, global step, tokens) at the end of this attempt's first step

        def _print(self, line: str) -> None:
            print(line, file=self.out or sys.stdout, flush=True)

        def _rates(self, state) -> tuple[float | None, float | None]:
            if self.mark is None or state.global_step <= self.mark[1]:
                return None, None
            elapsed = time.monotonic() - self.mark[0]
            per_step = elapsed / (state.global_step - self.mark[1])
            tokens, start_tokens = _token_count(state), self.mark[2]
            per_second = ((tokens - start_tokens) / elapsed if tokens is not None and start_tokens is not None
                          and elapsed > 0 else None)
            return per_step, per_second

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.monotonic()
            return control

        def on_step_end(self, args, state, control, **kwargs):
            if self.mark is None:
                self.first_step = state.global_step
                self.mark = (time.monotonic(), state.global_step, _token_count(state))
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs or _global_rank() != 0:  # training logs only: not eval's, not the summary
                return control
            self._print(step_line(state.global_step, state.max_steps or None, logs, *self._rates(state)))
            return control

        def on_train_end(self, args, state, control, **kwargs):
            if _global_rank() != 0 or self.began is None:
                return control
            total = state.max_steps or None
            took = format_eta(time.monotonic() - self.began)
            done = f"step {state.global_step}/{total}" if total else f"step {state.global_step}"
            steps = state.global_step - (self.first_step - 1 if self.first_step is not None else state.global_step)
            rates = rate_text(*self._rates(state))
            self._print(f"{PREFIX}{DONE}{done} in {took} ({steps} steps this attempt)" + (f" | {rates}" if rates else ""))
            return control

    return TrainingProgress


def progress_callback(trainer=None, out=None):
    """A new progress callback (a ``transformers.TrainerCallback``) printing to ``out`` (stdout).

    Given the trainer, its tqdm bar gives way to transformers' plain printer of the same log dicts
    (``{'loss': ...}``, which llamantino.records.logs reads): in a log file the bar is carriage
    returns that the progress lines would be glued to, and these lines take its place.
    """
    if trainer is not None:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(PrinterCallback)
    return _callback_class()(out)
