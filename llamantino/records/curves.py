"""Training curves from the trainer's own records, by global step, one point per step.

Sources, best first: the TensorBoard event files the trainer writes (``tracking=tensorboard``, the
default), the ``log_history`` of the newest ``trainer_state.json`` (every checkpoint), and last the
losses printed in the logs (numbered in order, for runs with neither). A requeued job's second
attempt logs again the steps after its checkpoint: the later record of a step wins, so a curve's
steps are strictly increasing.

What the trainer left is read as untrusted (a job killed mid-save cuts a checkpoint short): a file
that cannot be read is skipped for the next source, and said so in ``notes`` when a caller asks.
"""

from __future__ import annotations

import io
import re
import stat
from pathlib import Path

from llamantino.errors import RunDirError
from llamantino.records.files import MAX_STATE_BYTES, load_json, write_bytes
from llamantino.records.logs import run_losses
from llamantino.records.rundir import RunDir

LOSS = "loss"


_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def _regular(paths) -> list[tuple[Path, float]]:
    """(path, mtime) of the regular files among ``paths`` (links and devices are not the trainer's)."""
    found = []
    for path in paths:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            found.append((path, info.st_mtime))
    return found


def event_files(run: RunDir) -> list[Path]:
    """The run's TensorBoard event files, oldest first (a requeued job writes a second folder)."""
    files = _regular((run / RunDir.OUTPUT).glob("runs/*/events.out.tfevents.*"))
    return [path for path, _ in sorted(files, key=lambda item: item[1])]


def _from_events(files: list[Path], notes: list[str]) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    series: dict[str, dict[int, float]] = {}
    for path in files:
        try:
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
        except Exception as exc:  # noqa: BLE001 - TensorBoard's own errors for a file cut short or garbled
            notes.append(f"{path} could not be read to its end ({type(exc).__name__}: {exc})")
    return series


def _log_history(path: Path) -> dict[str, dict[int, float]]:
    """The metrics of one trainer_state.json; RunDirError when it is not one."""
    state = load_json(path, MAX_STATE_BYTES)
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise RunDirError(f"{path}: log_history must be a list")
    series: dict[str, dict[int, float]] = {}
    for record in history:
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        for key, number in record.items():
            if key not in ("step", "epoch") and isinstance(number, (int, float)) and not isinstance(number, bool):
                series.setdefault(key, {})[step] = float(number)
    return series


def _from_trainer_state(run: RunDir, notes: list[str]) -> dict[str, dict[int, float]]:
    """The newest checkpoint's log history; a checkpoint cut short gives way to the one before it."""
    checkpoints = [path for path in (run / RunDir.OUTPUT).glob("checkpoint-*") if _CHECKPOINT.fullmatch(path.name)]
    for checkpoint in sorted(checkpoints, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            return _log_history(checkpoint / RunDir.TRAINER_STATE)
        except FileNotFoundError:
            notes.append(f"{checkpoint} has no {RunDir.TRAINER_STATE}")
        except RunDirError as exc:
            notes.append(str(exc))
    return {}


def run_metrics(run, notes: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """Every training metric of a run: name -> [(global step, value)], steps strictly increasing.
    What could not be read is appended to ``notes``."""
    run = RunDir(getattr(run, "path", run))
    notes = [] if notes is None else notes
    files = event_files(run)
    series = _from_events(files, notes) if files else _from_trainer_state(run, notes)
    if LOSS not in series:
        losses = run_losses(run)
        if losses:
            series[LOSS] = dict(enumerate(losses, start=1))
    return {name: sorted(points.items()) for name, points in series.items()}


def loss_curve(run, notes: list[str] | None = None) -> list[tuple[int, float]]:
    """[(global step, training loss)] of a run."""
    return run_metrics(run, notes).get(LOSS, [])


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
    return save_figure(figure, path)


def save_figure(figure, path: Path) -> Path:
    """Draw ``figure`` as a PNG and write it atomically (never through a link at ``path``)."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=110)
    finally:
        pyplot().close(figure)
    write_bytes(path, buffer.getvalue())
    return path
