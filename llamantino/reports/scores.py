"""Evaluation results side by side, with their uncertainty: one table, one bar chart (``llamantino
compare``, and ``collect`` on an eval sweep).

Each row is one eval run, labelled by the model it evaluated (that run's name, plus the override keys
that tell the models apart when they come from a sweep). Scores carry lm-eval's standard error; a
score within two combined standard errors of the task's best is marked as not significantly
different from it (:data:`SIGNIFICANCE_RULE`). ``results.json`` is read as untrusted: a value that is
not a finite number (a score, a negative or non-numeric standard error) is left out with a note.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from llamantino.errors import ConfigError, RunDirError
from llamantino.records.curves import legend_columns, pyplot, save_figure, wrapped
from llamantino.records.provenance import ModelSource, OutputKind, SourceKind
from llamantino.records.rundir import RunDir
from llamantino.reports.varied import Varied, shown_value, varied

BEST, NOT_SIGNIFICANT = "*", "~"
SIGNIFICANCE_RULE = (f"{BEST} the task's best (highest) score; {NOT_SIGNIFICANT} not significantly different from it: "
                     "|best - score| < 2·sqrt(se_best² + se²), se being lm-eval's standard error (about 95% "
                     "confidence, the two evaluations taken as independent samples); ± and error bars: one "
                     "standard error; a score without a standard error is not compared")
AVERAGE = "average"
# Keys that say where a model or result was written, not how it was made: never a label.
PLACES = ("run.output_root",)
# The eval runs' keys that the model label already stands for (and the eval run's own name, its column).
EVAL_LABELLED = ("run.input_model", "run.input_adapter", "run.name", *PLACES)
NAME_CHARS = 120  # a legend label longer than this is cut (each value is cut at 40 already)


def is_eval_run(run: RunDir) -> bool:
    """A run of the eval stage, finished or not."""
    return run.is_run() and run.provenance().output.kind == OutputKind.eval_results


def evaluated(run: RunDir) -> bool:
    """An eval run that wrote its results."""
    return is_eval_run(run) and run.existing(RunDir.RESULTS_JSON) is not None


def find_results(targets: list[Path]) -> list[RunDir]:
    """Eval runs among ``targets``, or inside the folders given."""
    found: list[RunDir] = []
    for target in map(Path, targets):
        if evaluated(RunDir(target)):
            found.append(RunDir(target))
        elif target.is_dir():
            found += [run for run in (RunDir(p.parent) for p in sorted(target.rglob(RunDir.PROVENANCE))) if evaluated(run)]
        else:
            raise RunDirError(f"{target} is neither an eval run nor a folder")
    found = list({run.path.resolve(): run for run in found}.values())  # a run named twice is compared once
    if not found:
        raise RunDirError("no results.json found (evaluate runs with stage=eval first)")
    return found


def not_significant(score: float, se: float, best: float, se_best: float) -> bool:
    """Whether ``score`` lies within two combined standard errors of ``best`` (:data:`SIGNIFICANCE_RULE`)."""
    return abs(best - score) < 2 * math.sqrt(se ** 2 + se_best ** 2)


@dataclass
class Scored:
    """One eval run's results as compared: finite scores and standard errors only."""

    run: RunDir
    name: str  # the eval run, as "<parent>/<folder>"
    eval: str  # the eval option it ran (eval.name)
    model: str  # the evaluated model's label
    scores: dict[str, float]
    stderr: dict[str, float]
    mode: str
    marks: dict[str, str]  # task -> BEST, NOT_SIGNIFICANT or ""


@dataclass
class Comparison:
    tasks: list[str]  # the task columns, the average last where every row has one
    rows: list[Scored]
    models: Varied  # the override keys telling the evaluated models apart
    evals: Varied  # ... and the eval runs
    notes: list[str]

    def header(self) -> str:
        """What every row shares: the keys said once instead of on each label (paths left out)."""
        shared = " ".join(part for part in (self.evals.constant_line(), self.models.constant_line()) if part)
        return f"shared: {shared}" if shared else ""


def _model_run(source: ModelSource) -> RunDir | None:
    """The run whose output was evaluated, where the record names one."""
    folder = source.run_dir if source.kind == SourceKind.run else source.adapter_run if source.kind == SourceKind.merge \
        else None
    return RunDir(folder) if folder else None


def run_name(run: RunDir) -> str:
    """A run's name (run.name of its config), its folder's when the config cannot be read."""
    try:
        return run.config().run.name or run.name
    except (RunDirError, ConfigError, OSError):
        return shown_value(str(run.path))


def model_name(source: ModelSource | None) -> str:
    """The evaluated model, as a reader knows it: the run that made it, or its hub id or folder."""
    if source is None:
        return "unrecorded model"
    run = _model_run(source)
    if run is not None:
        return run_name(run) + (" (merged)" if source.kind == SourceKind.merge else "")
    if source.kind == SourceKind.hub and source.hub_id:
        return source.hub_id + (f"@{source.revision[:12]}" if source.revision else "")
    if source.kind == SourceKind.built:
        return f"{source.builder} (base)"
    return shown_value(source.path or str(source.kind))


def _model_source(model: dict, where: Path, notes: list[str]) -> ModelSource | None:
    from llamantino.config.schema import from_plain

    try:
        return from_plain(ModelSource, model, "results.model")
    except (ConfigError, TypeError) as exc:
        notes.append(f"{where}: {str(exc)[:200]}; the model is shown as unrecorded")
        return None


def overrides_of(run: RunDir | None) -> list[str]:
    """The command-line overrides a run was made with (none when its record cannot be read)."""
    try:
        return list(run.provenance().overrides) if run is not None else []
    except (RunDirError, OSError):
        return []


def _finite(values: dict[str, float], where: str, notes: list[str], low: float = -math.inf) -> dict[str, float]:
    kept = {}
    for task, value in values.items():
        if math.isfinite(value) and value >= low:
            kept[task] = value
        else:
            notes.append(f"{where}.{shown_value(task)}={value!r} is not a finite number"
                         + (" at least 0" if low == 0 else "") + ": left out")
    return kept


def _mark(rows: list[Scored], tasks: list[str]) -> None:
    """Each task's best row, and the rows not significantly different from it."""
    for task in tasks:
        scored = [row for row in rows if task in row.scores]
        if not scored:
            continue
        best = max(scored, key=lambda row: row.scores[task])
        for row in scored:
            if row is best:
                row.marks[task] = BEST
            elif task in row.stderr and task in best.stderr and not_significant(
                    row.scores[task], row.stderr[task], best.scores[task], best.stderr[task]):
                row.marks[task] = NOT_SIGNIFICANT


def comparison(runs: list[RunDir], mixed_modes: bool = False) -> Comparison:
    """Every eval run's scores, labelled by the model it evaluated, each task's best and the scores
    not significantly different from it marked.

    Scores from different evaluation modes (``eval.mode``: leaderboard, current) are not comparable;
    they are refused side by side unless ``mixed_modes``, and then each row names its mode.
    """
    rows, tasks, notes, sources = [], [], [], []
    for run in runs:
        result = run.results()
        where = str(run / RunDir.RESULTS_JSON)
        scores = _finite(result.scores, f"{where}: results.scores", notes)
        stderr = {task: se for task, se in _finite(result.stderr or {}, f"{where}: results.stderr", notes, 0).items()
                  if task in scores}
        if result.average is not None and len(scores) == len(result.scores) and math.isfinite(result.average):
            scores[AVERAGE] = result.average
            if len(stderr) == len(result.scores):  # the mean of independent tasks: se = sqrt(sum se²) / n
                stderr[AVERAGE] = math.sqrt(sum(se ** 2 for se in stderr.values())) / len(stderr)
        tasks += [task for task in scores if task not in tasks]
        parent = run.path.parent.name
        source = _model_source(result.model, run / RunDir.RESULTS_JSON, notes)
        sources.append(source)
        rows.append(Scored(run=run, name=run.name if parent in ("", ".") else f"{parent}/{run.name}", eval=result.eval,
                           model=model_name(source), scores=scores, stderr=stderr, mode=shown_value(result.mode), marks={}))
    modes = {}
    for row in rows:
        modes.setdefault(row.mode, row.name)
    if len(modes) > 1 and not mixed_modes:
        raise ConfigError("these results come from different evaluation modes ("
                          + ", ".join(f"{mode}: {run}" for mode, run in modes.items())
                          + "); their scores are not comparable. Re-evaluate with one eval.mode, or pass "
                          "--mixed-modes to show them side by side, each row labelled with its mode")
    tasks = [name for name in tasks if name != AVERAGE] + ([AVERAGE] if AVERAGE in tasks else [])
    # The models that are runs (a sweep's points) told apart by their overrides; a hub or base model
    # has none, and its name says all.
    model_runs = {index: run for index, run in enumerate(_model_run(source) if source is not None else None
                                                          for source in sources) if run is not None}
    models = varied([overrides_of(run) for run in model_runs.values()], ignore=PLACES)
    if len(model_runs) < len(rows):  # what the runs share, a hub or base model does not: not said as shared
        models = dataclasses.replace(models, constant={})
    model_keys = {index: models.label(number) for number, index in enumerate(model_runs)}
    evals = varied([overrides_of(row.run) for row in rows], ignore=EVAL_LABELLED)
    for index, row in enumerate(rows):
        row.model = " ".join(part for part in (row.model, model_keys.get(index, ""), evals.label(index)) if part)
    seen: dict[str, int] = {}
    for row in rows:
        seen[row.model] = seen.get(row.model, 0) + 1
    for row in rows:  # the same model evaluated alike twice: the eval run tells the bars apart
        if seen[row.model] > 1:
            row.model += f" [{row.name}]"
    _mark(rows, tasks)
    return Comparison(tasks=tasks, rows=rows, models=models, evals=evals, notes=notes)


def score_text(row: Scored, task: str) -> str:
    """``0.4375 ± 0.1281 ~``: the score, its standard error and its mark; ``-`` when there is none."""
    if task not in row.scores:
        return "-"
    text = f"{row.scores[task]:.4f}" + (f" ± {row.stderr[task]:.4f}" if task in row.stderr else "")
    return f"{text} {row.marks.get(task, '')}".rstrip()


def table_rows(result: Comparison) -> tuple[list[str], list[dict]]:
    """(columns, rows) for format_table: the model, each task's score ± stderr and mark, mode, eval run."""
    columns = ["model", *(shown_value(task) for task in result.tasks), "mode", "eval_run"]
    rows = [{"model": row.model, **{shown_value(task): score_text(row, task) for task in result.tasks},
             "mode": row.mode, "eval_run": row.name} for row in result.rows]
    return columns, rows


def csv_rows(result: Comparison) -> tuple[list[str], list[dict]]:
    """(columns, rows) as numbers for a CSV: each task's score, its standard error and its mark."""
    columns = ["eval_run", "model", *result.evals.keys]
    for task in result.tasks:
        columns += [task, f"{task}_stderr", f"{task}_mark"]
    columns += ["mode"]
    rows = []
    for index, row in enumerate(result.rows):
        values = {"eval_run": row.name, "model": row.model, "mode": row.mode, **result.evals.columns(index)}
        for task in result.tasks:
            values[task] = f"{row.scores[task]:.6f}" if task in row.scores else ""
            values[f"{task}_stderr"] = f"{row.stderr[task]:.6f}" if task in row.stderr else ""
            values[f"{task}_mark"] = row.marks.get(task, "")
        rows.append(values)
    return columns, rows


@dataclass(frozen=True)
class Chart:
    path: Path
    labels: list[str]  # the legend, as drawn
    title: str


def bar_chart(result: Comparison, path: Path, title: str = "") -> Chart:
    """Grouped bars, one group per task, one bar per eval run labelled by its model; error bars of one
    standard error; ``~`` over the bars not significantly different from the task's best."""
    plt = pyplot()
    tasks, rows = result.tasks, result.rows
    heading = title or "evaluation scores"
    header = result.header()
    figure, axis = plt.subplots(figsize=(max(6.4, 1.2 + 0.55 * len(tasks) * max(len(rows), 2)),
                                         4.6 + 0.28 * len(rows)), layout="constrained")
    width = min(0.8 / max(len(rows), 1), 0.3)
    top = 1.0
    for index, row in enumerate(rows):
        positions = [i + (index - (len(rows) - 1) / 2) * width for i in range(len(tasks))]
        values = [row.scores.get(task, math.nan) for task in tasks]  # no score: no bar (nan draws nothing)
        errors = [row.stderr.get(task, 0.0) if task in row.scores else math.nan for task in tasks]
        axis.bar(positions, values, width=width, yerr=errors, capsize=3, label=row.model[:NAME_CHARS],
                 error_kw={"elinewidth": 1})
        for position, value, error, task in zip(positions, values, errors, tasks):
            if task not in row.scores:
                continue
            if row.marks.get(task):
                axis.annotate(row.marks[task], (position, value + error), textcoords="offset points", xytext=(0, 2),
                              ha="center", fontsize="medium")
            top = max(top, value + error)
    axis.set_xticks(range(len(tasks)))
    axis.set_xticklabels([shown_value(task) for task in tasks], rotation=20 if len(tasks) > 4 else 0)
    axis.set_ylabel("score (task metric, ± 1 standard error)")
    axis.set_ylim(0, top * 1.1)
    axis.grid(axis="y", alpha=0.3)
    axis.set_title(wrapped(f"{heading}\n{header}", int(figure.get_figwidth() * 10)), fontsize="medium")
    axis.set_xlabel(f"task    ({BEST} the task's best; {NOT_SIGNIFICANT} within 2·√(se_best² + se²) of it: "
                    "not significant)", fontsize="small")
    legend = figure.legend(loc="outside lower center", fontsize="small", frameon=False,
                           ncols=legend_columns([row.model[:NAME_CHARS] for row in rows], figure.get_figwidth()))
    labels = [text.get_text() for text in legend.get_texts()]
    return Chart(save_figure(figure, path), labels, heading)
