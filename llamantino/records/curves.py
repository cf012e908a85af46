"""Training curves from the trainer's own records, by global step, one point per step.

Sources, best first: the TensorBoard event files the trainer writes (``tracking=tensorboard``, the
default), the ``log_history`` of the newest ``trainer_state.json`` (every checkpoint), and last the
losses printed in the logs (numbered in order, for runs with neither). A requeued job's second
attempt logs again the steps after its checkpoint: the later record of a step wins, so a curve's
steps are strictly increasing.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamantino.records.logs import run_losses
from llamantino.records.rundir import RunDir

LOSS = "loss"


def event_files(run: RunDir) -> list[Path]:
    """The run's TensorBoard event files, oldest first (a requeued job writes a second folder)."""
    return sorted((run / RunDir.OUTPUT).glob("runs/*/events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)


def _from_events(files: list[Path]) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    series: dict[str, dict[int, float]] = {}
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if not value.tag.startswith("train/"):
                    continue
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.tensor.float_val:
                    number = value.tensor.float_val[0]
                else:
                    continue
                series.setdefault(value.tag.removeprefix("train/"), {})[int(event.step)] = float(number)
    return series


def _from_trainer_state(run: RunDir) -> dict[str, dict[int, float]]:
    states = sorted((run / RunDir.OUTPUT).glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[-1]))
    series: dict[str, dict[int, float]] = {}
    if states:
        for record in json.loads(states[-1].read_text()).get("log_history", []):
            for key, number in record.items():
                if key not in ("step", "epoch") and isinstance(number, (int, float)) and "step" in record:
                    series.setdefault(key, {})[int(record["step"])] = float(number)
    return series


def run_metrics(run) -> dict[str, list[tuple[int, float]]]:
    """Every training metric of a run: name -> [(global step, value)], steps strictly increasing."""
    run = RunDir(getattr(run, "path", run))
    files = event_files(run)
    series = _from_events(files) if files else _from_trainer_state(run)
    if LOSS not in series:
        losses = run_losses(run)
        if losses:
            series[LOSS] = dict(enumerate(losses, start=1))
    return {name: sorted(points.items()) for name, points in series.items()}


def loss_curve(run) -> list[tuple[int, float]]:
    """[(global step, training loss)] of a run."""
    return run_metrics(run).get(LOSS, [])


def pyplot():
    """matplotlib's pyplot, drawing to files (no display here or on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """One PNG, one loss curve per label, global step on the x axis."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 5))
    for label, points in curves.items():
        if points:
            axis.plot([s for s, _ in points], [v for _, v in points], marker=".", label=label[:80])
    axis.set_xlabel("global step")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    if any(curves.values()):
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
