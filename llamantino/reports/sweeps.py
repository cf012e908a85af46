"""Runs side by side (``llamantino collect``): a sweep's points, a pipeline's steps, or one run.

Training runs: one table of each run's final and best value of a metric, and one PNG with a panel per
metric logged (training loss, eval loss, learning rate, gradient norm), lines labelled by the
override keys that vary across the runs only (reports/varied.py); the best run is starred. Eval
runs (an eval sweep, a pipeline's eval step): the scores per task with their standard errors
(reports/scores.py). Files are written atomically into the directory collected (or ``out``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from llamantino.errors import ConfigError, RunDirError
from llamantino.records.curves import EVAL_LOSS, LOSS, PANELS, Drawn, Line, finite, lowest, plot_runs, run_metrics
from llamantino.records.rundir import PipelineDir, RunDir, StudyDir, SweepDir, runs_under, write_text
from llamantino.reports.scores import (Chart, Comparison, bar_chart, comparison, csv_rows, evaluated, is_eval_run,
                                       overrides_of, run_name)
from llamantino.reports.status import run_row
from llamantino.reports.varied import Varied, shown_value, varied

METRIC_CHARS = 60
COLUMNS = ("point", "label", "state", "series", "best", "best_step", "steps_logged")  # a row's own keys


@dataclass
class Collected:
    """What ``collect`` read: the training rows, the eval comparison, and what labels them."""

    title: str  # "sweep <time>", "pipeline <name>", "run <name>"
    folder: Path
    metric: str  # the metric of the table's final/best and of the best run ("loss" or "eval_loss" by default)
    panels: list[str]  # the metrics drawn
    keys: list[str]  # the varied override keys, one column each
    shared: str  # the overrides every run shares, said once (paths left out)
    rows: list[dict] = field(default_factory=list)  # training runs
    scores: Comparison | None = None  # eval runs
    notes: list[str] = field(default_factory=list)

    @property
    def ranked(self) -> bool:
        """Whether a best run is marked (a sweep with more than one point that logged the metric)."""
        return any(row["best"] for row in self.rows)

    def header(self) -> str:
        shared = self.shared if self.rows else self.scores.header().removeprefix("shared: ") if self.scores else ""
        return f"{self.title}" + (f"; shared: {shared}" if shared else "")


def _members(target: Path) -> tuple[str, list[tuple[str, RunDir, list[str]]]]:
    """(title, [(name, run, overrides)]): a sweep's points with their overrides, a pipeline's steps
    (labelled by step name), or the run itself."""
    target = Path(target)
    sweep, pipeline, study = SweepDir(target), PipelineDir(target), StudyDir(target)
    if study.is_study():  # every trial of every batch, labelled by the values it took
        members = []
        for batch in study.batches():
            points = batch.record().points
            members += [(name, run, list(point.overrides)) for (name, run), point in zip(runs_under(batch.path), points)]
        return f"study {target.name}", members
    if sweep.is_sweep():
        points = sweep.record().points
        return f"sweep {target.name}", [(name, run, list(point.overrides))
                                        for (name, run), point in zip(runs_under(target), points)]
    members = runs_under(target)  # a pipeline's steps or the run: refused with one line when neither
    if pipeline.is_pipeline():
        return f"pipeline {target.name}", [(name, run, []) for name, run in members]
    run = members[0][1]
    return f"run {run_name(run)} ({target.name})", [(run_name(run), run, overrides_of(run))]


def collect(target: Path, metric: str | None = None) -> Collected:
    """The runs of ``target`` (a sweep, a pipeline or a run directory), read and labelled.

    ``metric``: the table's final/best and the best run by its lowest value (default: the eval loss
    where a run logged one, else the training loss); it is then the one panel drawn."""
    title, members = _members(Path(target))
    kinds = [is_eval_run(run) for _, run, _ in members]
    training = [member for member, is_eval in zip(members, kinds) if not is_eval]
    evals = [(name, run) for (name, run, _), is_eval in zip(members, kinds) if is_eval]
    labels: Varied = varied([overrides for _, _, overrides in training])
    notes: list[str] = []
    rows = []
    for index, (name, run, _) in enumerate(training):
        run_notes: list[str] = []
        series = run_metrics(run, run_notes)
        notes += [f"{name}: {note}" for note in run_notes]
        columns = {key: value for key, value in labels.columns(index).items() if key not in COLUMNS}
        rows.append({"point": name, "label": labels.label(index) or name, **columns,
                     "state": run_row(name, run, series.get(LOSS, []))["state"], "series": series})
    logged = list(dict.fromkeys(key for row in rows for key in row["series"]))
    if metric is not None and metric not in logged and rows:
        raise ConfigError(f"--metric {shown_value(metric)}: no run logged it; logged: "
                          + ", ".join(shown_value(name) for name in logged[:METRIC_CHARS]))
    chosen = metric or (EVAL_LOSS if EVAL_LOSS in logged else LOSS)
    for row in rows:
        points = row["series"].get(chosen, [])
        best = lowest(points)
        row.update({f"final_{chosen}": f"{points[-1][1]:.4f}" if points else "",
                    f"best_{chosen}": f"{best[1]:.4f}" if best else "", "best_step": best[0] if best else "",
                    "steps_logged": len(row["series"].get(LOSS, [])), "best": ""})
    # A sweep's points differ in their overrides only: the best is one of them. A pipeline's steps train
    # on different data one after the other, so none is "best".
    ranked = [row for row in rows if lowest(row["series"].get(chosen, []))] if (
        SweepDir(Path(target)).is_sweep() or StudyDir(Path(target)).is_study()) else []
    if len(ranked) > 1:
        min(ranked, key=lambda row: lowest(row["series"][chosen])[1])["best"] = "*"
    scored = [run for _, run in evals if evaluated(run)]
    notes += [f"{name}: no {RunDir.RESULTS_JSON} yet ({run_row(name, run)['state']})"
              for name, run in evals if not evaluated(run)]
    scores = comparison(scored, mixed_modes=True) if scored else None
    if scores is not None:
        notes += scores.notes
    panels = [chosen] if metric else [name for name in PANELS if any(finite(row["series"].get(name, []))
                                                                    for row in rows)]
    keys = [key for key in labels.keys if key not in COLUMNS]  # an override named like a column: in the label only
    return Collected(title=title, folder=Path(target), metric=chosen, panels=panels, keys=keys,
                     shared=labels.constant_line(), rows=rows, scores=scores, notes=notes)


def table_columns(collected: Collected) -> list[str]:
    return ["point", *collected.keys, "state", f"final_{collected.metric}", f"best_{collected.metric}",
            "best_step", "steps_logged", "best"]


def _csv(columns: list[str], rows: list[dict]) -> str:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


@dataclass
class Written:
    files: list[Path]
    figures: list[Drawn | Chart]


def write_collected(collected: Collected, out: Path | None = None, log_y: bool = False, smooth: int = 0) -> Written:
    """The CSV and PNG of the training runs (collect.csv, loss_curves.png) and of the eval runs
    (scores.csv, scores.png), each written atomically (a failure leaves no half-written file)."""
    folder = Path(out) if out is not None else collected.folder
    if out is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"--out {folder}: cannot create it ({exc.strerror or exc})") from None
    written = Written([], [])
    if collected.rows:
        title = collected.header() + ("" if collected.panels else "\n(no run has logged a metric yet)")
        if smooth > 1:
            title += f"\nlines: {smooth}-point trailing moving average (raw values faint)"
        lines = [Line(row["label"], row["series"], best=row["best"] == "*") for row in collected.rows]
        drawn = plot_runs(lines, collected.panels or [collected.metric], folder / SweepDir.LOSS_PNG, title,
                          mark=collected.metric, log_y=log_y, smooth=smooth)
        write_text(folder / SweepDir.COLLECT_CSV, _csv(table_columns(collected), collected.rows))
        written.files += [folder / SweepDir.COLLECT_CSV, drawn.path]
        written.figures.append(drawn)
    if collected.scores is not None:
        eval_names = sorted({shown_value(row.eval) for row in collected.scores.rows})
        chart = bar_chart(collected.scores, folder / SweepDir.SCORES_PNG, f"{collected.title}: {', '.join(eval_names)}")
        write_text(folder / SweepDir.SCORES_CSV, _csv(*csv_rows(collected.scores)))
        written.files += [folder / SweepDir.SCORES_CSV, chart.path]
        written.figures.append(chart)
    return written
