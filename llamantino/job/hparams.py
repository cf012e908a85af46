"""TensorBoard HParams of a finished run: ``tensorboard --logdir <sweep>`` tabulates its points.

Written by the job's finish step into ``output/runs`` (the parent of the trainer's event folders, one
per attempt), so each run, sweep point or pipeline step is one HParams session: its hyperparameters
(the command's overrides as key/value pairs, the stage's main settings) and its final losses.
Written again, replacing the earlier one, when a requeued or relaunched run finishes again.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.config.tracking import override_pairs
from llamantino.records.rundir import RunDir

#: The stage settings every session shows (a sweep over any of them needs no override to be tabulated).
STAGE_HPARAMS = ("learning_rate", "lora_r", "lora_alpha", "micro_batch_size", "gradient_accumulation_steps",
                 "sequence_len", "max_steps", "num_epochs", "seed")
EVENTS = "events.out.tfevents.*"


def _value(text):
    """A number where the override is one (so TensorBoard sorts a learning rate numerically), else the text."""
    if isinstance(text, (bool, int, float)):
        return text
    try:
        return float(text)
    except (TypeError, ValueError):
        return str(text)


def run_hparams(stage, overrides: list[str]) -> dict:
    """The stage's main settings and the command's overrides (an override of a setting wins)."""
    hparams = {f"stage.{key}": getattr(stage, key) for key in STAGE_HPARAMS if getattr(stage, key, None) is not None}
    hparams.update(override_pairs(overrides))
    return {key: _value(value) for key, value in hparams.items()}


def write_hparams(run: RunDir, stage, overrides: list[str], losses: dict | None) -> Path | None:
    """The run's HParams session in ``output/runs``; None when the trainer wrote no event files there."""
    folder = run / RunDir.TENSORBOARD
    if not any(folder.glob(f"*/{EVENTS}")):
        return None
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    metrics = {f"loss/{kind}": float(losses[kind]) for kind in ("last", "best", "first")
               if losses and isinstance(losses.get(kind), (int, float))}
    for old in folder.glob(EVENTS):  # the session of an earlier attempt: replaced
        old.unlink()
    experiment, start, end = hparams(run_hparams(stage, overrides), metrics)
    with SummaryWriter(log_dir=str(folder)) as writer:
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for name, value in metrics.items():
            writer.add_scalar(name, value)
    return folder
