"""Where a run or job stands: one enum for llamantino's own states and SLURM's, with the sets every
reader uses (status, accounting, launchers, pipelines). No other module spells a state."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Optional


class JobState(StrEnum):
    # llamantino's own: a run directory before any job ran it, or one no record explains
    NEW = "NEW"  # not written yet
    WRITTEN = "WRITTEN"  # written, never started (launcher=dry, launcher.submit=false)
    MISSING = "MISSING"  # the directory is gone
    UNKNOWN = "UNKNOWN"  # a job id no scheduler record knows (any more)
    # SLURM's (squeue/scontrol/sacct), and the outcome a job's last step writes to status.json
    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    PREEMPTED = "PREEMPTED"
    CANCELLED = "CANCELLED"

    @classmethod
    def parse(cls, text: str | None) -> "JobState":
        """A state as SLURM or a status file writes it: ``CANCELLED by 0`` and ``CANCELLED+`` are
        CANCELLED; a state this version does not know is UNKNOWN."""
        name = (text or "").split(" ", 1)[0].rstrip("+")
        return cls.__members__.get(name, cls.UNKNOWN)

    @property
    def active(self) -> bool:
        """Still holds or waits for resources: do not submit the run again."""
        return self in ACTIVE

    @property
    def failed(self) -> bool:
        """Ended without succeeding."""
        return self in FAILED

    @property
    def done(self) -> bool:
        return self == JobState.COMPLETED


ACTIVE = frozenset({JobState.PENDING, JobState.CONFIGURING, JobState.RUNNING, JobState.COMPLETING,
                    JobState.REQUEUED, JobState.RESIZING, JobState.SUSPENDED})
# Worst first: an array job's summary is its worst task.
FAILURES_WORST_FIRST = (JobState.FAILED, JobState.OUT_OF_MEMORY, JobState.TIMEOUT, JobState.NODE_FAIL,
                        JobState.BOOT_FAIL, JobState.DEADLINE, JobState.PREEMPTED, JobState.CANCELLED)
FAILED = frozenset(FAILURES_WORST_FIRST)
# Below every failure, above COMPLETED: a task still running or waiting leaves the array unfinished.
_ACTIVE_WORST_FIRST = (JobState.RUNNING, JobState.REQUEUED, JobState.RESIZING, JobState.SUSPENDED,
                       JobState.COMPLETING, JobState.CONFIGURING, JobState.PENDING)
_ORDER = (*FAILURES_WORST_FIRST, *_ACTIVE_WORST_FIRST, JobState.COMPLETED)


def worst(states) -> JobState | None:
    """The worst of several states: any failure > still running or pending > COMPLETED. A state
    outside that order (UNKNOWN) ranks as unfinished."""
    present = [JobState.parse(s) if not isinstance(s, JobState) else s for s in states if s]
    rank = {state: index for index, state in enumerate(_ORDER)}
    return min(present, key=lambda s: rank.get(s, rank[JobState.PENDING]), default=None)


@dataclass(frozen=True)
class RunStatus:
    """A run's outcome, written to status.json by its job's last step (or by status, for a job SLURM
    killed before that step ran)."""

    state: JobState
    exit_code: Optional[Any] = None  # the stage command's exit code; SLURM's "rc:signal" for killed jobs
    finished: Optional[str] = None
    job_id: Optional[str] = None
    losses: Optional[dict[str, Any]] = None  # first, last, best, count
    output: Optional[str] = None  # where the output is
    source: Optional[str] = None  # who wrote it when the job could not: scontrol or sacct
    notes: Optional[list[str]] = None  # what the job left that could not be read (a checkpoint cut short)
    elapsed_s: Optional[float] = None  # this attempt's wall time, stage command included
    gpu_hours: Optional[float] = None  # elapsed time x the GPUs the job held (0 on CPUs)


@dataclass(frozen=True)
class JobRecord:
    """The scheduler's view of one job (``scontrol`` while it knows the job, then ``sacct``)."""

    job_id: str
    state: JobState
    reason: str = ""
    restarts: str = "0"
    elapsed: str = "-"
    exit_code: Optional[str] = None
    end: Optional[str] = None
    nodes: Optional[str] = None
    max_rss: Optional[str] = None
    array_job_id: Optional[str] = None  # a task of a job array: the array's id
    dependency: Optional[str] = None  # what it waits on (afterok:...), while scontrol knows it
    source: str = "scontrol"


@dataclass(frozen=True)
class LocalProcess:
    """process.json: the process a local launcher runs a run's stage in (``cancel`` ends its group;
    ``status`` reports it RUNNING while it lives, and its elapsed time)."""

    pid: int
    pgid: int
    host: str
    started: str  # ISO time the stage started
    attempt: int = 1  # 1 for the first start, 2 for the first relaunch (a resume), ...
