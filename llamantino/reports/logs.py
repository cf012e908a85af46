"""``llamantino logs``: the logs of a run's current job, printed, and followed while the job runs.

A SLURM run: the batch output of its latest job (``logs/<job name>-<job id>.out``, as the sbatch
template's ``--output`` names it; a requeued job keeps its id and appends to the same file), then
``logs/train.log``, where the stage writes. A local run: ``logs/train.log``.

The logs are the user's own, printed as they are (bad UTF-8 replaced, never an error); reads are
bounded: at most TAIL_BYTES of each file at first, then what it grows by.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
import sys
import time
from pathlib import Path
from typing import TextIO

from llamantino.errors import RunDirError
from llamantino.launchers.stop import active_job, latest_process
from llamantino.records.rundir import RunDir, runs_under

TAIL_BYTES = 1 << 20  # of each log, at first
CHUNK_BYTES = 1 << 20  # read per file per poll while following
POLL_S = 0.5
QUIET_S = 1.0  # after the job ended, the logs are followed until they were still this long


def the_run(target: Path) -> RunDir:
    """The one run ``target`` is; a pipeline or sweep is refused naming its runs."""
    members = runs_under(Path(target))
    if len(members) != 1 or members[0][1].path != Path(target):
        names = ", ".join(str(run.path) for _, run in members[:8]) + (" ..." if len(members) > 8 else "")
        raise RunDirError(f"{target} is a pipeline or sweep: logs takes one of its runs ({names})")
    return members[0][1]


def current_job(run: RunDir) -> str | None:
    """The SLURM job id of the run's latest submission; None for a local run or one never submitted."""
    return None if latest_process(run) is not None else run.job_record().job_id


def log_paths(run: RunDir, job_id: str | None) -> list[Path]:
    """The logs to show, in order (some may not exist yet)."""
    paths = []
    if job_id:
        folder = run / RunDir.LOGS
        suffix = f"-{job_id}.out"
        names = sorted(name for name in os.listdir(folder) if name.endswith(suffix)) if folder.is_dir() else []
        paths.append(folder / (names[-1] if names else f"*{suffix}"))
    paths.append(run / RunDir.TRAIN_LOG)
    return paths


class _Tail:
    """One log file read from where it was left: bounded, through no link, decoded leniently."""

    def __init__(self, path: Path, from_start: bool):
        self.path = path
        # A log there from the first look: its last TAIL_BYTES; one that appears later: from its start.
        self.offset: int | None = 0 if from_start else None
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunDirError(f"{self.path} is a symbolic link; logs reads only the files the job wrote") from None
            raise RunDirError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise RunDirError(f"{self.path} is not a regular file; logs reads only the files the job wrote")
            if self.offset is None:
                self.offset = max(info.st_size - TAIL_BYTES, 0)
            elif info.st_size < self.offset:  # truncated or replaced: from its start again
                self.offset = 0
            os.lseek(fd, self.offset, os.SEEK_SET)
            data = os.read(fd, CHUNK_BYTES if self.offset else max(CHUNK_BYTES, TAIL_BYTES))
        finally:
            os.close(fd)
        self.offset += len(data)
        return self.decoder.decode(data)


def _write(out: TextIO, text: str) -> None:
    """Print text whatever the output's encoding (characters it cannot hold are replaced)."""
    encoding = getattr(out, "encoding", None) or "utf-8"
    out.write(text.encode(encoding, errors="replace").decode(encoding))
    out.flush()


def show_logs(target: Path, follow: bool = False, out: TextIO | None = None) -> bool:
    """Print the run's logs (``follow``: and what they grow by until its job ends); False when it has none."""
    out = out or sys.stdout
    run = the_run(target)
    job_id = current_job(run)
    tails: dict[Path, _Tail] = {}
    shown: list[Path | None] = [None]
    looked: list[bool] = [False]  # after the first look, a log that appears is read from its start

    def drain() -> bool:
        """Print what the logs hold past what was printed; whether there was any."""
        paths, printed = log_paths(run, job_id), False
        for path in paths:
            if path not in tails:
                tails[path] = _Tail(path, from_start=looked[0])
            tail = tails[path]
            text = tail.read()
            if not text:
                continue
            if len(paths) > 1 and shown[0] != path:
                _write(out, ("" if shown[0] is None else "\n") + f"==> {path} <==\n")
            shown[0], printed = path, True
            _write(out, text)
        looked[0] = True
        return printed

    drain()
    quiet_since = None
    while follow:
        ended = active_job(run) is None  # a SLURM job no longer queued or running; a local process gone
        grew = False
        while drain():  # everything written so far (more than one read's worth when it came fast)
            grew = True
        if ended:
            # What the job printed last may reach the log just after it ends (a local launcher copies
            # the stage's output into train.log): done once the logs have been still for a moment.
            quiet_since = None if grew else (quiet_since or time.monotonic())
            if quiet_since is not None and time.monotonic() - quiet_since >= QUIET_S:
                break
        time.sleep(POLL_S)
    return shown[0] is not None
