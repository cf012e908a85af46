"""Where every job of a run, pipeline or sweep stands (``llamantino status``)."""

from __future__ import annotations

from pathlib import Path

from llamantino.launchers.slurm import slurm_job
from llamantino.records.curves import loss_curve
from llamantino.records.jobstate import JobState, RunStatus
from llamantino.records.rundir import RunDir, SweepDir, runs_under


def run_row(name: str, run: RunDir, curve: list[tuple[int, float]] | None = None) -> dict:
    """Status of one run directory: SLURM's view while it knows the job, else the run's own."""
    status = run.read_status()
    job_id = run.job_id()
    job = slurm_job(job_id) if job_id else None
    if status is None and job is not None and job.state.failed:
        # Killed before its own last step (time limit, memory, cancel, node failure): the record says so.
        status = RunStatus(state=job.state, exit_code=job.exit_code, job_id=job_id, finished=job.end, source=job.source)
        run.write_status(status)
    if job is not None:
        state = job.state
    elif status is not None:
        state = status.state
    else:
        state = JobState.WRITTEN if run.path.exists() else JobState.MISSING
    if status is not None and status.state == JobState.FAILED and state.done:
        state = JobState.FAILED  # the batch script exited 0 after the stage failed: trust the stage
    reason = job.reason if job is not None else ""
    losses = [loss for _, loss in (loss_curve(run) if curve is None else curve)]
    return {
        "name": name,
        "job": job_id or "-",
        "state": state + (f" ({reason})" if reason and reason not in ("None", "(null)") else ""),
        "elapsed": job.elapsed if job is not None else "-",
        "restarts": job.restarts if job is not None else "0",
        "last_loss": f"{losses[-1]:.4f}" if losses else "-",
        "run_dir": str(run.path),
    }


def status_rows(target: Path) -> list[dict]:
    """Rows for a run, pipeline or sweep directory."""
    rows = [run_row(name, run) for name, run in runs_under(target)]
    sweep = SweepDir(Path(target))
    array = sweep.record().job_id if sweep.is_sweep() else None
    for row in rows:
        if array and row["job"] == "-":  # a point whose task has not started has no job record of its own
            job_id = f"{array}_{int(row['name'])}"
            job = slurm_job(job_id)
            row.update(job=job_id, state=job.state if job else JobState.UNKNOWN, elapsed=job.elapsed if job else "-")
    return rows


def format_table(rows: list[dict], columns=("name", "job", "state", "elapsed", "restarts", "last_loss")) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
