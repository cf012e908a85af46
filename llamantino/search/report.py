"""``llamantino search --report <study>``: the best trial, every trial, Optuna's own plots, the best
point as a shareable recipe.

Written into ``<study>/report/`` (replaced each time): ``trials.csv``; Optuna's matplotlib plots as
PNG (``optimization_history.png``, ``param_importances.png``, ``slice.png``, and
``intermediate_values.png`` when trials reported evaluations); ``best.txt``, the one command that
trains the best point again; and ``best.llamantino.yaml``, the best point as a recipe others import
(``llamantino recipe import``), exported from ``best-run/``, a run directory rendered from the shared
overrides and the best values (not a trial: it reports to no study) and ready to ``launch``.

The journal and the trials' values are read back from files: values reach overrides only through
:func:`llamantino.search.space.trial_overrides`, which accepts the study's own keys and ranges only.
"""

from __future__ import annotations

import csv
import io
import os
import shlex
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from llamantino.errors import ConfigError, LlamantinoError
from llamantino.records.files import leftover_suffix, removed_unless_finished, write_text
from llamantino.records.rundir import StudyDir
from llamantino.search.space import trial_overrides

PLOTS = {"optimization_history": "plot_optimization_history", "param_importances": "plot_param_importances",
         "slice": "plot_slice", "intermediate_values": "plot_intermediate_values"}
TRIALS_CSV = "trials.csv"
BEST_TXT = "best.txt"
BEST_RECIPE = "best.llamantino.yaml"
BEST_RUN = "best-run"
NEVER_RAN = "never ran"


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    overrides: list[str]
    run_dir: str
    note: str = ""


@dataclass
class StudyReport:
    study: StudyDir
    objective: str
    direction: str
    budget: int
    rows: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Trials by Optuna state (complete, pruned, fail, running); those that never ran left out."""
        from optuna.trial import TrialState

        counted = [row for row in self.rows if row.note != NEVER_RAN]
        return {state.name.lower(): sum(row.state == state.name for row in counted)
                for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}


def read_report(study: StudyDir) -> StudyReport:
    """Every trial of the journal with its values (checked against the space) and run directory."""
    from optuna.trial import TrialState

    from llamantino.search.study import open_study, trial_runs

    record = study.record()
    optuna_study = open_study(study, record, len(record.batches))
    runs = trial_runs(study, record)
    report = StudyReport(study=study, objective=record.objective, direction=record.direction, budget=record.trials)
    for trial in optuna_study.get_trials(deepcopy=False):
        try:
            overrides = trial_overrides(record.space, trial.params, f"{study.journal()}: trial {trial.number}")
        except ConfigError as exc:
            if trial.params:  # values outside the space: the journal was edited; the trial is shown without them
                report.notes.append(str(exc))
            overrides = []
        run = runs.get(trial.number)
        value = trial.value if trial.state == TrialState.COMPLETE else None
        note = NEVER_RAN if trial.user_attrs.get("never_ran") else printable(trial.user_attrs.get("error", ""))
        report.rows.append(TrialRow(number=trial.number, state=trial.state.name, value=value, overrides=overrides,
                                    run_dir=str(run.path.relative_to(study.path)) if run else "", note=note))
    complete = [row for row in report.rows if row.value is not None and row.overrides]
    if complete:
        pick = min if record.direction == "minimize" else max
        report.best = pick(complete, key=lambda row: (row.value, row.number) if pick is min else (row.value, -row.number))
    return report


def printable(value, limit: int = 300) -> str:
    """Text from the journal (a file read back) as one line without control characters."""
    return "".join(ch if ch.isprintable() else " " for ch in str(value))[:limit]


def summary(study: StudyDir) -> str:
    report = read_report(study)
    counts = report.counts()
    done = f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed, " \
           f"{counts['running']} asked and not told yet, of {report.budget}"
    if report.best is None:
        return f"{done}; no trial completed yet"
    best = report.best
    return (f"{done}; best: trial {best.number}, {report.objective}={best.value:.6g} ({' '.join(best.overrides)}) "
            f"in {study.path / best.run_dir}")


def _plot(optuna_study, name: str, path: Path, notes: list[str]) -> Path | None:
    import optuna

    from llamantino.records.curves import pyplot, save_figure

    pyplot()  # the file-drawing backend, before Optuna's matplotlib module loads pyplot
    from optuna.visualization import matplotlib as plots

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = getattr(plots, PLOTS[name])(optuna_study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few trials for it (importances need two)
        notes.append(f"{path.name}: not drawn ({exc})")
        return None
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    figure.set_size_inches(max(figure.get_size_inches()[0], 7.0), max(figure.get_size_inches()[1], 4.5))
    saved = save_figure(figure, path)
    pyplot().close(figure)
    return saved


def write_report(study: StudyDir, echo=print) -> StudyReport:
    """Write ``<study>/report/`` afresh and return what it holds."""
    from llamantino.search.study import open_study

    report = read_report(study)
    record = study.record()
    optuna_study = open_study(study, record, len(record.batches))
    final = study.path / StudyDir.REPORT
    if final.is_symlink():
        raise ConfigError(f"{final} is a symbolic link; remove it (the report is written inside the study)")
    # Written aside, then swapped into place: a report read (or written by a step job) meanwhile is whole.
    folder = Path(tempfile.mkdtemp(prefix=f".{StudyDir.REPORT}.", suffix=leftover_suffix("partial"), dir=study.path))
    with removed_unless_finished(folder):
        _write_tables_and_plots(report, record, optuna_study, folder)
        old = final.with_name(f".{StudyDir.REPORT}.{os.getpid()}.old") if final.exists() else None
        if old is not None:
            os.rename(final, old)
        os.rename(folder, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    report.files = [final / path.relative_to(folder) for path in report.files]
    if report.best is not None:  # rendered where it stays: a run directory records where it is
        report.files += _best_files(study, record, report.best, final, echo, report.notes)
    return report


def _write_tables_and_plots(report: StudyReport, record, optuna_study, folder: Path) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    keys = [dimension.key for dimension in record.space]
    writer.writerow(["trial", "state", record.objective, *keys, "run_dir", "note"])
    for row in report.rows:
        values = dict(override.split("=", 1) for override in row.overrides)
        writer.writerow([row.number, row.state, "" if row.value is None else repr(row.value),
                         *(values.get(key, "") for key in keys), row.run_dir, row.note])
    write_text(folder / TRIALS_CSV, text.getvalue())
    report.files.append(folder / TRIALS_CSV)
    intermediate = any(trial.intermediate_values for trial in optuna_study.get_trials(deepcopy=False))
    for name in PLOTS:
        if name == "intermediate_values" and not intermediate:
            continue
        drawn = _plot(optuna_study, name, folder / f"{name}.png", report.notes)
        if drawn is not None:
            report.files.append(drawn)


def _best_files(study: StudyDir, record, best: TrialRow, folder: Path, echo, notes: list[str]) -> list[Path]:
    """best.txt (the command) and the best point as a run directory and a shareable recipe."""
    from llamantino.config.compose import compose_with_choices
    from llamantino.launchers import launcher_for
    from llamantino.orchestrate.runs import build
    from llamantino.orchestrate.sharing import export_to
    from llamantino.orchestrate.sweep import GROUPS

    overrides = [*record.overrides, *best.overrides]
    command = "python -m llamantino " + " ".join(shlex.quote(override) for override in overrides)
    write_text(folder / BEST_TXT, f"# trial {best.number} of {study.path.name}: {record.objective}={best.value!r}\n"
                                  f"{command}\n")
    files = [folder / BEST_TXT]
    try:
        cfg, choices = compose_with_choices(overrides)
        run = build(cfg, folder / BEST_RUN, overrides=overrides,
                    choices={group: value for group, value in choices.items() if group in GROUPS and value is not None})
        launcher_for(cfg, echo).prepare(run)  # its job script, as a written run has it
        run.write()
        files.append(export_to(folder / BEST_RUN, folder / BEST_RECIPE))
    except LlamantinoError as exc:  # the best point renders no more (other code or data now): said, not fatal
        notes.append(f"{BEST_RECIPE}: not written ({exc})")
    return files


def format_report(report: StudyReport) -> str:
    counts = report.counts()
    lines = [f"study {report.study.path.name}: {report.objective} ({report.direction}), "
             f"{sum(counts[s] for s in ('complete', 'pruned', 'fail'))} of {report.budget} trials finished "
             f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed, "
             f"{counts['running']} running)"]
    if report.best is not None:
        best = report.best
        lines.append(f"best: trial {best.number}, {report.objective}={best.value:.6g}: {' '.join(best.overrides)} "
                     f"({report.study.path / best.run_dir})")
    else:
        lines.append("best: none yet (no trial completed)")
    width = max([len(str(row.number)) for row in report.rows] + [5])
    lines.append(f"{'TRIAL'.ljust(width)}  {'STATE'.ljust(8)}  {report.objective.upper()[:24].ljust(12)}  VALUES")
    for row in report.rows:
        value = f"{row.value:.6g}" if row.value is not None else "-"
        lines.append(f"{str(row.number).ljust(width)}  {row.state.ljust(8)}  {value.ljust(12)}  "
                     f"{' '.join(row.overrides)}" + (f"  ({row.note})" if row.note else ""))
    lines += [f"wrote {path}" for path in report.files]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
