"""``llamantino cancel``: end exactly the jobs of a run, a pipeline (every step) or a sweep.

Each run's latest job, if it is still queued or running: a SLURM job by its id (a sweep's points
together, by the array's id from sweep.json), a local run's recorded process group (only when it is
verifiably the run's own: llamantino/launchers/stop.py). Each run is marked CANCELLED in its
status.json before its job is signalled, so the job's own last step (llamantino/job/finish.py)
keeps that outcome instead of recording a failure.

No lock is taken: a local launch holds its directory's lock for as long as the stage runs.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.launchers.stop import ActiveJob, active_job, cancel_slurm_job
from llamantino.records.jobstate import JobState, RunStatus
from llamantino.records.provenance import now_iso
from llamantino.records.rundir import SweepDir, runs_under


def _mark_cancelled(job: ActiveJob) -> None:
    job.run.write_status(RunStatus(state=JobState.CANCELLED, job_id=job.job_id, finished=now_iso(), source="cancel"))


def cancel(target: Path, dry_run: bool = False, echo=print) -> int:
    """Cancel what of ``target`` is queued or running; returns how many jobs (0: nothing to cancel)."""
    target = Path(target)
    members = runs_under(target)
    active = [(name, job) for name, run in reversed(members) if (job := active_job(run)) is not None]
    if not active:
        echo(f"nothing to cancel: no job of {target} is queued or running")
        return 0
    sweep = SweepDir(target)
    array = sweep.record().job_id if sweep.is_sweep() else None
    in_array = [(name, job) for name, job in active if array and job.job_id and job.job_id.startswith(f"{array}_")]
    verb = "would cancel" if dry_run else "cancelled"
    if in_array:  # the points still queued or running end together: one scancel of the array
        if not dry_run:
            for _, job in in_array:
                _mark_cancelled(job)
            cancel_slurm_job(array)
        echo(f"{verb} job array {array} ({', '.join(sorted(name for name, _ in in_array))})")
    for name, job in active:
        if (name, job) in in_array:
            continue
        if dry_run:
            echo(f"{verb} {name}: {job.describe()}")
            continue
        _mark_cancelled(job)
        echo(f"{verb} {name}: {job.describe()}, {job.stop()}")
    return len(active)
