"""What a user reads back from runs: job status rows, a sweep's losses, evaluation comparisons.

Library code behind ``python -m llamantino.status``, ``.collect`` and ``.compare``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from llamantino.accounting import TERMINAL_FAILURES
from llamantino.errors import ConfigError, RunDirError
from llamantino.launchers.slurm import slurm_job
from llamantino.curves import loss_curve, plot_curves, pyplot
from llamantino.rundir import RunDir, SweepDir, read_json, runs_under


# --- status --------------------------------------------------------------------------------------


def run_row(name: str, run: RunDir, curve: list[tuple[int, float]] | None = None) -> dict:
    """Status of one run directory: SLURM's view while it knows the job, else the run's own."""
    status = run.read_status()
    job_id = run.job_id()
    job = slurm_job(job_id) if job_id else {}
    if not status and job.get("JobState") in TERMINAL_FAILURES:
        # Killed before its own last step (time limit, memory, cancel, node failure): the record says so.
        status = {"state": job["JobState"], "exit_code": job.get("ExitCode"), "job_id": job_id,
                  "finished": job.get("EndTime"), "source": job.get("Source", "scontrol")}
        run.write_status(status)
    state = job.get("JobState") or status.get("state") or ("WRITTEN" if run.path.exists() else "MISSING")
    if status.get("state") == "FAILED" and state == "COMPLETED":
        state = "FAILED"  # the batch script exited 0 after the stage failed: trust the stage
    reason = job.get("Reason", "")
    losses = [loss for _, loss in (loss_curve(run) if curve is None else curve)]
    return {
        "name": name,
        "job": job_id or "-",
        "state": state + (f" ({reason})" if reason and reason not in ("None", "(null)") else ""),
        "elapsed": job.get("RunTime", "-"),
        "restarts": job.get("Restarts", "0"),
        "last_loss": f"{losses[-1]:.4f}" if losses else "-",
        "run_dir": str(run.path),
    }


def status_rows(target: Path) -> list[dict]:
    """Rows for a run, pipeline or sweep directory."""
    rows = [run_row(name, run) for name, run in runs_under(target)]
    sweep = SweepDir(Path(target))
    array = sweep.record().get("job_id") if sweep.is_sweep() else None
    for row in rows:
        if array and row["job"] == "-":  # a point whose task has not started has no job record of its own
            job_id = f"{array}_{int(row['name'])}"
            job = slurm_job(job_id)
            row.update(job=job_id, state=job.get("JobState", "UNKNOWN"), elapsed=job.get("RunTime", "-"))
    return rows


def format_table(rows: list[dict], columns=("name", "job", "state", "elapsed", "restarts", "last_loss")) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


# --- collect -------------------------------------------------------------------------------------


def collect(sweep_dir: Path) -> list[dict]:
    """One row per sweep point: its overrides, state, final and best loss, every loss."""
    sweep = SweepDir(Path(sweep_dir))
    rows = []
    for point in sweep.record()["points"]:
        run = RunDir(sweep.path / point["run_dir"])
        curve = loss_curve(run)
        losses = [loss for _, loss in curve]
        rows.append({
            "point": SweepDir.point_name(point["index"]),
            "overrides": " ".join(point["overrides"]),
            "state": run_row(SweepDir.point_name(point["index"]), run, curve)["state"],
            "final_loss": f"{losses[-1]:.4f}" if losses else "",
            "best_loss": f"{min(losses):.4f}" if losses else "",
            "steps_logged": len(losses),
            "losses": losses,
            "curve": curve,
        })
    return rows


def write_collected(sweep_dir: Path, rows: list[dict]) -> tuple[Path, Path]:
    """The sweep's CSV and one PNG with every point's loss curve."""
    sweep = SweepDir(Path(sweep_dir))
    columns = ["point", "overrides", "state", "final_loss", "best_loss", "steps_logged"]
    csv_path = sweep.path / SweepDir.COLLECT_CSV
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    png_path = plot_curves({f"{row['point']}: {row['overrides']}": row["curve"] for row in rows},
                           sweep.path / SweepDir.LOSS_PNG, f"sweep {sweep.path.name}")
    return csv_path, png_path


# --- compare -------------------------------------------------------------------------------------


def find_results(targets: list[Path]) -> list[RunDir]:
    """Eval runs among ``targets``, or inside the folders given."""
    found = []
    for target in map(Path, targets):
        if (target / RunDir.RESULTS_JSON).is_file():
            found.append(RunDir(target))
        elif target.is_dir():
            found += [RunDir(p.parent) for p in sorted(target.rglob(RunDir.RESULTS_JSON))]
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
        result = read_json(run / RunDir.RESULTS_JSON, "not an eval run")
        for task in result["scores"]:
            if task not in tasks:
                tasks.append(task)
        parent = run.path.parent.name
        row = {"run": run.name if parent in ("", ".") else f"{parent}/{run.name}",
               **{t: f"{v:.4f}" for t, v in result["scores"].items()}}
        if "average" in result:
            row["average"] = f"{result['average']:.4f}"
        row["mode"] = str((result.get("harness") or {}).get("mode", "unrecorded"))
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
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
