"""A run's latest job, whether it still runs, and how to end it: ``scancel`` by job id (SLURM), the
recorded process group (launcher=local).

Which launcher ran a run last is what the run recorded last: its job record (job.json, SLURM's) or
its local process (process.json), whichever is newer. process.json is untrusted: a process counts
as the run's only when it runs on this host, leads the recorded process group, works in the run's
directory and started when the record says; a pid reused by any other process is never signalled.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from llamantino.errors import LaunchError, RunDirError
from llamantino.records.jobstate import LocalProcess
from llamantino.records.rundir import RunDir

TERM_GRACE_S = 30  # SIGTERM, then SIGKILL for what of the group is left after this long
SCANCEL_TIMEOUT_S = 60
_START_SLACK_S = 120  # process.json is written right after the process starts (under load: seconds later)


def latest_process(run: RunDir) -> LocalProcess | None:
    """The local process that ran the run last; None when it never ran here or was submitted to SLURM
    after that (RunDirError when process.json or job.json is broken)."""
    process = run.local_process()
    if process is None:
        return None
    submissions = run.job_record().submissions
    if submissions and submissions[-1].submitted > process.started:  # both ISO times in UTC
        return None
    return process


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def _started_at(fields: list[str]) -> float:
    """When a process started (epoch seconds), from its /proc stat fields."""
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _alive(fields: list[str] | None) -> bool:
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has ended; its parent has not reaped it yet


def here() -> str:
    return socket.gethostname()


def is_running(run: RunDir, process: LocalProcess) -> bool:
    """Whether the recorded process still runs here and is the run's own (not a reused pid)."""
    if process.host != here() or process.pid <= 1 or process.pgid <= 1 or process.pid == os.getpid() \
            or process.pgid == os.getpgrp():
        return False
    fields = _proc_stat(process.pid)
    if not _alive(fields):
        return False
    try:
        if int(fields[2]) != process.pgid or os.readlink(f"/proc/{process.pid}/cwd") != str(run.path.resolve()):
            return False
        started = _dt.datetime.fromisoformat(process.started).timestamp()
        return started - _START_SLACK_S <= _started_at(fields) <= started + 2
    except (OSError, ValueError, IndexError):  # another user's process, or a malformed record: not ours
        return False


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies do not)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if _alive(fields) and fields[2] == str(pgid):
                return True
    return False


def cancel_local_process(run: RunDir, process: LocalProcess, grace_s: float = TERM_GRACE_S) -> str:
    """End the run's process group: SIGTERM, then SIGKILL after ``grace_s``. Refuses a process that is
    not the run's own (checked first). Returns how it ended."""
    if not is_running(run, process):
        raise LaunchError(f"process {process.pid} of {run.path} is not running here (host {here()}); nothing signalled")
    try:
        os.killpg(process.pgid, signal.SIGTERM)
    except ProcessLookupError:
        return "it had already ended"
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(process.pgid):
            return "ended on SIGTERM"
        time.sleep(0.2)
    try:
        os.killpg(process.pgid, signal.SIGKILL)
    except ProcessLookupError:
        return "ended on SIGTERM"
    return f"killed (SIGKILL) after {grace_s:g} s"


def cancel_slurm_job(job_id: str) -> None:
    """``scancel <job id>`` (never by name: another job of the same name is not touched). A job that
    ended meanwhile is not an error."""
    from llamantino.launchers.slurm import job_state

    if not job_id.replace("_", "").isdigit():
        raise RunDirError(f"job id {job_id!r} is not a SLURM job id (digits, or <array>_<task>); was job.json edited?")
    if shutil.which("scancel") is None:
        raise LaunchError(f"scancel is not on PATH: cancel job {job_id} where SLURM's commands are")
    try:
        proc = subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=SCANCEL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"scancel {job_id} did not answer in {SCANCEL_TIMEOUT_S} s; check with squeue -j {job_id}") \
            from None
    if proc.returncode != 0 and job_state(job_id).active:
        raise LaunchError(f"scancel {job_id} failed: {proc.stderr.strip() or proc.stdout.strip()}")


@dataclass(frozen=True)
class ActiveJob:
    """A run's latest job while it is queued or running: a SLURM job, or a local process."""

    run: RunDir
    job_id: str | None = None
    process: LocalProcess | None = None

    def describe(self) -> str:
        if self.process is not None:
            return f"process group {self.process.pgid} on {self.process.host}"
        return f"job {self.job_id}"

    def stop(self) -> str:
        """End it; returns how (one phrase)."""
        if self.process is not None:
            return cancel_local_process(self.run, self.process)
        cancel_slurm_job(self.job_id)
        return "scancel sent"


def active_job(run: RunDir) -> ActiveJob | None:
    """The run's latest job if it is still queued or running, else None."""
    from llamantino.launchers.slurm import job_state

    process = latest_process(run)
    if process is not None:
        return ActiveJob(run, process=process) if is_running(run, process) else None
    job_id = run.job_record().job_id
    return ActiveJob(run, job_id=job_id) if job_id and job_state(job_id).active else None
