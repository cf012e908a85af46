"""``llamantino cancel``: end exactly the jobs of a run, a pipeline (every step), a sweep or a study.

Each run's latest job, if it is still queued or running: a SLURM job by its id (a job array's
tasks together, by the array's id), a local run's recorded process group (only when it is
verifiably the run's own: llamantino/launchers/stop.py). Each run is marked CANCELLED in its
status.json before its job is signalled, so the job's own last step (llamantino/job/finish.py)
keeps that outcome instead of recording a failure.

A study is marked cancelled first (so no step asks another batch), then its tell-and-ask job is
cancelled, then its trials; then, holding the study's lock (which a step job cut short releases),
anything a step job submitted meanwhile is cancelled too. ``search --resume`` continues it.

No lock is taken otherwise: a local launch holds its directory's lock for as long as the stage runs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from llamantino.launchers.stop import ActiveJob, active_job, cancel_slurm_job
from llamantino.records.files import write_text
from llamantino.records.jobstate import JobState, RunStatus
from llamantino.records.provenance import now_iso
from llamantino.records.rundir import StudyDir, runs_under


def _mark_cancelled(job: ActiveJob) -> None:
    job.run.write_status(RunStatus(state=JobState.CANCELLED, job_id=job.job_id, finished=now_iso(), source="cancel"))


def _array_of(job: ActiveJob) -> str | None:
    """The array id of a SLURM job array task (``123_4``), else None."""
    if job.job_id and "_" in job.job_id and job.job_id.replace("_", "").isdigit():
        return job.job_id.split("_", 1)[0]
    return None


def cancel_runs(target: Path, dry_run: bool = False, echo=print, done: set[str] | None = None) -> int:
    """Cancel what of ``target``'s runs is queued or running; returns how many jobs. ``done``: the job
    ids cancelled already (skipped; those cancelled now are added)."""
    done = set() if done is None else done
    active = [(name, job) for name, run in reversed(runs_under(Path(target)))
              if (job := active_job(run)) is not None and (job.job_id or name) not in done]
    done.update(job.job_id or name for name, job in active)
    verb = "would cancel" if dry_run else "cancelled"
    arrays: dict[str, list[tuple[str, ActiveJob]]] = {}
    for name, job in active:
        if _array_of(job):
            arrays.setdefault(_array_of(job), []).append((name, job))
    for array, tasks in arrays.items():  # the tasks still queued or running end together: one scancel of the array
        if not dry_run:
            for _, job in tasks:
                _mark_cancelled(job)
            cancel_slurm_job(array)
        echo(f"{verb} job array {array} ({', '.join(sorted(name for name, _ in tasks))})")
    for name, job in active:
        if _array_of(job):
            continue
        if dry_run:
            echo(f"{verb} {name}: {job.describe()}")
            continue
        _mark_cancelled(job)
        echo(f"{verb} {name}: {job.describe()}, {job.stop()}")
    return len(active)


def _step_jobs(study: StudyDir, dry_run: bool, echo, done: set[str]) -> int:
    from llamantino.launchers.slurm import job_state

    count = 0
    for batch in study.record().batches:
        if batch.step_job and batch.step_job not in done and job_state(batch.step_job).active:
            done.add(batch.step_job)
            if not dry_run:
                cancel_slurm_job(batch.step_job)
            echo(f"{'would cancel' if dry_run else 'cancelled'} the tell-and-ask job {batch.step_job} ({batch.name})")
            count += 1
    return count


def cancel_study(study: StudyDir, dry_run: bool = False, echo=print) -> int:
    from llamantino.records.lock import directory_lock

    if not dry_run:
        write_text(study.path / StudyDir.CANCELLED, f"cancelled {now_iso()}\n")
    done: set[str] = set()
    count = _step_jobs(study, dry_run, echo, done) + cancel_runs(study.path, dry_run, echo, done)
    if dry_run:
        return count
    with directory_lock(study.path, echo):  # a step job cut short mid-submission recorded what it submitted
        count += _step_jobs(study, dry_run, echo, done) + cancel_runs(study.path, dry_run, echo, done)
    echo(f"{study.path} is cancelled; continue it with python -m llamantino search --resume {shlex.quote(str(study.path))}")
    return count


def cancel(target: Path, dry_run: bool = False, echo=print) -> int:
    """Cancel what of ``target`` is queued or running; returns how many jobs (0: nothing to cancel)."""
    target = Path(target)
    count = cancel_study(StudyDir(target), dry_run, echo) if StudyDir(target).is_study() else \
        cancel_runs(target, dry_run, echo)
    if not count:
        echo(f"nothing to cancel: no job of {target} is queued or running")
    return count
