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
import math
import re
import stat
import textwrap
from dataclasses import dataclass
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


def _metric_name(tag: str) -> str | None:
    """A TensorBoard tag as the trainer's log history names the metric: ``train/loss`` -> ``loss``,
    ``eval/loss`` -> ``eval_loss``; None for tags that are not metrics (the run's arguments as text)."""
    if tag.startswith("train/"):
        return tag.removeprefix("train/")
    if tag.startswith("eval/"):
        return "eval_" + tag.removeprefix("eval/")
    return None


def _from_events(files: list[Path], notes: list[str]) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    series: dict[str, dict[int, float]] = {}
    for path in files:
        try:
            for event in EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    name = _metric_name(value.tag)
                    if name is None:
                        continue
                    if value.HasField("simple_value"):
                        number = value.simple_value
                    elif value.tensor.float_val:
                        number = value.tensor.float_val[0]
                    else:
                        continue
                    series.setdefault(name, {})[int(event.step)] = float(number)
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
    series = _from_events(files, notes) if files else {}
    if not series:  # no event files, or none that TensorBoard could read a metric from
        series = _from_trainer_state(run, notes)
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


#: The panels ``collect`` draws where a run logged them, in order, each with its axis label (unit included).
PANELS = {
    "loss": "training loss (nats/token)",
    "eval_loss": "eval loss (nats/token)",
    "learning_rate": "learning rate",
    "grad_norm": "gradient norm (L2, before clipping)",
}
EVAL_LOSS = "eval_loss"
STEP_AXIS = "optimizer step"


def axis_label(metric: str) -> str:
    return PANELS.get(metric, metric)


def finite(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The points whose value is a finite number (a diverged run logs nan or inf)."""
    return [(step, value) for step, value in points if math.isfinite(value)]


def lowest(points: list[tuple[int, float]]) -> tuple[int, float] | None:
    """(step, value) of the lowest finite value; the earliest step on a tie; None when there is none."""
    return min(finite(points), key=lambda point: (point[1], point[0]), default=None)


def moving_average(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """Each point's value averaged with the ``window - 1`` logged points before it (trailing, so a
    smoothed curve never looks ahead); non-finite values are left out of the averages."""
    points = finite(points)
    averaged = []
    for index, (step, _) in enumerate(points):
        values = [value for _, value in points[max(0, index - window + 1):index + 1]]
        averaged.append((step, sum(values) / len(values)))
    return averaged


def wrapped(text: str, width: int, lines: int = 4) -> str:
    """``text`` in lines of at most ``width`` characters (each of its own lines wrapped apart)."""
    return "\n".join(part for line in text.splitlines()
                     for part in textwrap.wrap(line, max(width, 20), max_lines=lines) or [""])


def legend_columns(labels: list[str], figure_width: float) -> int:
    """As many legend columns as fit the figure's width (small font: about 13 characters an inch)."""
    longest = max(map(len, labels)) + 6  # the line sample and the gap
    return max(1, min(len(labels), int(figure_width * 13) // longest))


@dataclass(frozen=True)
class Line:
    """One run's curves on a figure: its legend label and each metric's points."""

    label: str
    series: dict[str, list[tuple[int, float]]]
    best: bool = False  # the best run of the figure: drawn thicker and starred in the legend


@dataclass(frozen=True)
class Drawn:
    """A figure written: where, and the legend labels and panel titles it shows (what a reader sees)."""

    path: Path
    labels: list[str]
    panels: list[str]
    steps: list[float]  # the x ticks of every panel


def plot_runs(lines: list[Line], metrics: list[str], path: Path, title: str, *, mark: str | None = None,
              log_y: bool = False, smooth: int = 0) -> Drawn:
    """One PNG, one panel per metric, one colour per run across panels, optimizer steps on integer ticks.

    ``mark``: the metric whose lowest point is marked on each run's curve. ``log_y``: loss panels on a
    log scale. ``smooth``: a trailing moving average over that many logged points, the raw values
    drawn faint behind it. The legend goes below the panels, as many columns as fit."""
    from matplotlib.ticker import LogFormatter, MaxNLocator

    plt = pyplot()
    columns = 1 if len(metrics) == 1 else 2
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 3.6 * rows + 0.6 + 0.28 * len(lines)),
                                squeeze=False, layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = {}
    for index, metric in enumerate(metrics):
        axis = axes[index // columns][index % columns]
        for number, line in enumerate(lines):
            points = [(step, value if math.isfinite(value) else math.nan) for step, value in line.series.get(metric, [])]
            if not points:
                continue
            colour = colours[number % len(colours)]
            shown = moving_average(points, smooth) if smooth > 1 else points
            if smooth > 1:
                axis.plot([s for s, _ in points], [v for _, v in points], color=colour, alpha=0.25, linewidth=1)
            drawn, = axis.plot([s for s, _ in shown], [v for _, v in shown], color=colour,
                               linewidth=2.4 if line.best else 1.4, marker="." if len(shown) <= 60 else None)
            handles.setdefault(number, drawn)
            best = lowest(points) if metric == mark else None
            if best is not None:
                axis.plot(*best, marker="*" if line.best else "o", markersize=13 if line.best else 7, color=colour,
                          markeredgecolor="black", linestyle="none", zorder=5)
        axis.set_xlabel(STEP_AXIS)
        axis.set_ylabel(axis_label(metric) + (" (log scale)" if log_y and "loss" in metric else ""))
        axis.set_title(axis_label(metric).split(" (")[0], fontsize="medium")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if log_y and "loss" in metric:
            axis.set_yscale("log")
            plain = LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))  # 6.95, not 6.95×10⁰
            axis.yaxis.set_major_formatter(plain)
            axis.yaxis.set_minor_formatter(plain)
        elif metric == "learning_rate":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for index in range(len(metrics), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    width = figure.get_figwidth()
    figure.suptitle(wrapped(title, int(width * 11)), fontsize="medium")
    starred = f"  ★ lowest {axis_label(mark).split(' (')[0]}" if mark else "  ★ best"
    labels = [lines[number].label + (starred if lines[number].best else "") for number in sorted(handles)]
    if handles:
        legend = figure.legend([handles[number] for number in sorted(handles)], labels, loc="outside lower center",
                               ncols=legend_columns(labels, width), fontsize="small",
                               frameon=False)
        labels = [text.get_text() for text in legend.get_texts()]
    shown = [axis for row in axes for axis in row if axis.get_visible()]
    steps = [float(tick) for axis in shown for tick in axis.get_xticks()]
    return Drawn(save_figure(figure, path), labels, [axis.get_title() for axis in shown], steps)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """One PNG, one training loss curve per label, optimizer steps on the x axis."""
    return plot_runs([Line(label, {LOSS: points}) for label, points in curves.items()], [LOSS], path, title).path


def save_figure(figure, path: Path) -> Path:
    """Draw ``figure`` as a PNG and write it atomically (never through a link at ``path``)."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=110)
    finally:
        pyplot().close(figure)
    write_bytes(path, buffer.getvalue())
    return path
