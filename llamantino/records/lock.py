"""One command at a time per run, pipeline or sweep directory, from its first check to its last submission.

Two commands that would write or submit the same directory (the same pipeline started twice, an
identical ``-m`` sweep, ``launch`` of one run twice) are serialised here: the second waits for the
first to finish (at most ``LLAMANTINO_LOCK_WAIT_S`` seconds, 300 by default), then plans against what
the first left (a pipeline finds its steps queued, a sweep or a run finds itself submitted) and
submits nothing again.

The lock of directory ``D`` is an ``flock`` on ``D``'s sibling ``.<D.name>.lock``: beside ``D``, never
inside it, so it is the same file whether or not ``D`` exists yet, and hidden, so nothing takes it
for a run. The kernel drops an ``flock`` when its process ends, however it ends: a killed command
leaves no stale lock, at most the empty file, which the next holder removes. The file is opened
with ``O_NOFOLLOW`` and must be a regular file: a planted symlink or FIFO is refused, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import Iterator

from llamantino.errors import ConfigError, RunDirError

WAIT_ENV = "LLAMANTINO_LOCK_WAIT_S"
WAIT_S = 300.0  # longer than planning, writing and submitting the largest pipeline or sweep
_POLL_S = 0.1


def lock_path(directory: Path) -> Path:
    """The lock file of ``directory``: ``.<name>.lock`` beside it."""
    directory = Path(os.path.abspath(directory))
    return directory.parent / f".{directory.name}.lock"


def wait_limit() -> float:
    """How long a command waits for another one holding its directory."""
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return WAIT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f"{WAIT_ENV}={text!r} must be a number of seconds >= 0 (default {WAIT_S:g})")
    return seconds


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, innermost first (what a ``mkdir -p`` would make)."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, innermost first."""
    missing = missing_folders(folder)
    for path in reversed(missing):
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create {path}: {exc.strerror or exc}") from None
    return missing


def _open(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise RunDirError(f"{path} is a symbolic link, not llamantino's lock file: remove it") from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise RunDirError(f"cannot lock {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path} is not a regular file, not llamantino's lock file: remove it")
    return fd


def _holder(fd: int) -> str:
    """The process id the holder wrote, for messages (read back, so only digits are shown)."""
    try:
        text = os.pread(fd, 16, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file locked (a holder removes it before it lets go)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


@contextlib.contextmanager
def directory_lock(directory: Path, echo=print, wait_s: float | None = None) -> Iterator[Path]:
    """Hold the lock of ``directory`` (which may not exist yet); wait for another holder at most
    ``wait_s`` seconds (``LLAMANTINO_LOCK_WAIT_S``), then refuse with one line naming it."""
    directory = Path(os.path.abspath(directory))
    path = lock_path(directory)
    limit = wait_limit() if wait_s is None else wait_s
    deadline, told = time.monotonic() + limit, False
    created: set[Path] = set()
    while True:
        created.update(_make_parents(path.parent))
        try:
            fd = _open(path)
        except FileNotFoundError:  # its folder was removed meanwhile (left empty by another command): made again
            if time.monotonic() >= deadline + 1:
                raise RunDirError(f"cannot lock {path}: its folder keeps disappearing") from None
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise RunDirError(
                    f"{directory} is being written or submitted by another llamantino command{holder} for more than "
                    f"{limit:g} s: let it finish, then see python -m llamantino status {directory} "
                    f"(or set {WAIT_ENV} to wait longer)") from None
            if not told:
                echo(f"waiting for another llamantino command{holder} writing or submitting {directory} "
                     f"(at most {limit:g} s)")
                told = True
            time.sleep(_POLL_S)
            continue
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it after we opened it: lock the file that is there now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        # Removed while still held, so no other command can hold this file and find it replaced.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        # The folders made only to hold the lock, innermost first, while empty: a refused command leaves nothing.
        for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def directory_locks(directories, echo=print) -> Iterator[None]:
    """Hold the locks of several directories, taken in one order (by path) so no two commands wait on each other."""
    with contextlib.ExitStack() as stack:
        for directory in sorted({Path(os.path.abspath(d)) for d in directories}, key=str):
            stack.enter_context(directory_lock(directory, echo))
        yield
