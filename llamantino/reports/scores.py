"""Evaluation results side by side: one table, one bar chart (``llamantino compare``)."""

from __future__ import annotations

from pathlib import Path

from llamantino.errors import ConfigError, RunDirError
from llamantino.records.curves import pyplot, save_figure
from llamantino.records.provenance import OutputKind
from llamantino.records.rundir import RunDir


def evaluated(run: RunDir) -> bool:
    """An eval run that wrote its results."""
    return run.is_run() and run.provenance().output.kind == OutputKind.eval_results and \
        run.existing(RunDir.RESULTS_JSON) is not None


def find_results(targets: list[Path]) -> list[RunDir]:
    """Eval runs among ``targets``, or inside the folders given."""
    found = []
    for target in map(Path, targets):
        if evaluated(RunDir(target)):
            found.append(RunDir(target))
        elif target.is_dir():
            found += [run for run in (RunDir(p.parent) for p in sorted(target.rglob(RunDir.PROVENANCE))) if evaluated(run)]
        else:
            raise RunDirError(f"{target} is neither an eval run nor a folder")
    if not found:
        raise RunDirError("no results.json found (evaluate runs with stage=eval first)")
    return found


def comparison(runs: list[RunDir], mixed_modes: bool = False) -> tuple[list[str], list[dict]]:
    """(task columns, one row per eval run with each task's score and the average).

    Scores from different evaluation modes (``eval.mode``: leaderboard, current) are not comparable;
    they are refused side by side unless ``mixed_modes``, and then each row names its mode.
    """
    rows, tasks, modes = [], [], {}
    for run in runs:
        result = run.results()
        for task in result.scores:
            if task not in tasks:
                tasks.append(task)
        parent = run.path.parent.name
        row = {"run": run.name if parent in ("", ".") else f"{parent}/{run.name}",
               **{t: f"{v:.4f}" for t, v in result.scores.items()}}
        if result.average is not None:
            row["average"] = f"{result.average:.4f}"
        row["mode"] = result.mode
        modes.setdefault(row["mode"], row["run"])
        rows.append(row)
    if len(modes) > 1 and not mixed_modes:
        raise ConfigError("these results come from different evaluation modes ("
                          + ", ".join(f"{mode}: {run}" for mode, run in modes.items())
                          + "); their scores are not comparable. Re-evaluate with one eval.mode, or pass "
                          "--mixed-modes to show them side by side, each row labelled with its mode")
    columns = tasks + (["average"] if any("average" in r for r in rows) else []) + ["mode"]
    for row in rows:
        for column in columns:
            row.setdefault(column, "-")
    return columns, rows


def bar_chart(columns: list[str], rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 1.8 * len(columns) * max(len(rows), 1) / 2), 4.5))
    width = 0.8 / max(len(rows), 1)
    for index, row in enumerate(rows):
        values = [float(row[c]) if row[c] != "-" else 0.0 for c in columns]
        positions = [i + index * width for i in range(len(columns))]
        axis.bar(positions, values, width=width, label=row["run"][:50])
    axis.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(columns))])
    axis.set_xticklabels(columns)
    axis.set_ylabel("score")
    axis.set_ylim(0, 1)
    axis.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path)
