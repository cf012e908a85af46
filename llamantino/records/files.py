"""The files of run, pipeline and sweep directories as llamantino reads them back and writes them.

Reading: anything read back from disk is untrusted data (a job cut short, an edit, a planted file).
Every JSON or YAML file goes through :func:`load_json` / :func:`load_yaml`: a regular file (not a
link, a device or a FIFO), at most its kind's byte limit, nested at most ``MAX_DEPTH`` deep, YAML
without anchors or aliases; :func:`load_record` then checks every field against a typed record. Any
breach is one RunDirError naming the file (and the field).

Writing: :func:`write_bytes` creates its temporary file beside the target with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and renames it over the target: a link planted at the target is
replaced, never followed, so a write never leaves the directory it names.

Leftovers: temporary files and staging directories are named ``.<target>.<random>.<pid>@<host>.tmp``
(``.partial`` for directories). The process that makes one removes it on any failure, SIGINT and
SIGTERM included; one left by a process killed outright is removed by the next write in the same
folder once that process is gone (checked on the same host; after ``STALE_PARTIAL_S`` for another
host, whose processes cannot be seen from here).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import threading
import time
from pathlib import Path

from llamantino.errors import ConfigError, RunDirError

# Byte limits by kind. Records llamantino writes (status, job, sweep, pipeline, provenance, results,
# eval plans, config.yaml, cache requests) hold kilobytes; 8 MiB leaves room for sweeps of thousands
# of points. The trainer's own state and lm-eval's result files grow with steps and tasks.
MAX_RECORD_BYTES = 8 * 2**20
MAX_STATE_BYTES = 256 * 2**20  # trainer_state.json (log_history), lm-eval's results_*.json
MAX_LOG_BYTES = 256 * 2**20  # the tail of a log read for its losses
MAX_DEPTH = 32  # nesting of a record: llamantino's own are at most 6 deep
STALE_PARTIAL_S = 3600  # a leftover of another host's process: removed after this long

_LEFTOVER = re.compile(r"\.(\d+)@([^@/]+)\.(tmp|partial)$")
_LEGACY_LEFTOVER = re.compile(r"^\..+\.(partial|\d+\.tmp)$")  # names before the pid@host mark


# --- reading ----------------------------------------------------------------------------------------


def read_bytes(path: Path, limit: int = MAX_RECORD_BYTES, *, tail: bool = False) -> bytes:
    """The bytes of a regular file, at most ``limit`` (``tail``: its last ``limit`` bytes instead of
    refusing a longer file). FileNotFoundError when it is absent; RunDirError for anything else."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link; llamantino reads only the regular files it wrote "
                              "there: remove the link") from None
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunDirError(f"{path} is not a regular file; llamantino reads only the files it wrote there")
        if info.st_size > limit:
            if not tail:
                raise RunDirError(f"{path} is {info.st_size} bytes, over the {limit} llamantino reads from a file "
                                  "of its kind; was it replaced?")
            os.lseek(fd, info.st_size - limit, os.SEEK_SET)
        chunks, size = [], 0
        while size <= limit:  # the file may grow while it is read: never past limit + 1
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit and not tail:
            raise RunDirError(f"{path} grew past {limit} bytes while it was read")
        return b"".join(chunks)[:limit]
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def check_depth(value, path: Path, limit: int = MAX_DEPTH) -> None:
    """Refuse data nested deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise RunDirError(f"{path} is nested more than {limit} levels deep; llamantino never writes that")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def _text(path: Path, limit: int) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path} is not UTF-8 text (byte {exc.start}); was it edited or cut short?") from None


def load_json(path: Path, limit: int = MAX_RECORD_BYTES):
    """Parsed JSON of a file read back (bounded; see the module docstring)."""
    text = _text(path, limit)
    try:
        data = json.loads(text)
    except RecursionError:
        raise RunDirError(f"{path} is nested too deeply; llamantino never writes that") from None
    except ValueError as exc:
        raise RunDirError(f"{path} is not readable JSON ({exc}); was it edited or cut short?") from None
    check_depth(data, path)
    return data


def check_plain_yaml(text: str, where, error=RunDirError, limit: int = MAX_DEPTH, what: str = "YAML file") -> None:
    """Refuse what plain data never needs, from the parser's events and before anything is built:
    anchors and aliases (a billion-laughs file expands to gigabytes from kilobytes), merge keys (they
    hide keys from a reader), explicit tags, and nesting deeper than ``limit``. Costs one parse pass
    and constant memory; ``error`` names the file and line."""
    import yaml

    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise error(f"{where}:{line}: YAML anchors and aliases are refused (plain data only)")
            if getattr(event, "tag", None):  # only explicit tags reach the events
                raise error(f"{where}:{line}: YAML tag {event.tag} is refused (plain data only)")
            if isinstance(event, yaml.ScalarEvent) and event.style is None and event.value == "<<":
                raise error(f"{where}:{line}: YAML merge keys (<<) are refused (plain data only)")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > limit:
                    raise error(f"{where}:{line}: nested deeper than {limit} levels; llamantino never writes that")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        raise error(f"{where}: not a readable {what} (truncated, edited or not YAML): {' '.join(str(exc).split())}") \
            from None


def load_yaml(path: Path, limit: int = MAX_RECORD_BYTES):
    """Parsed YAML of a file read back: bounded, plain data only (see :func:`check_plain_yaml`)."""
    import yaml

    text = _text(path, limit)
    check_plain_yaml(text, path)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise RunDirError(f"{path}: not a readable YAML file: {' '.join(str(exc).split())}") from None
    return data


def load_object(path: Path, what: str = "", limit: int = MAX_RECORD_BYTES) -> dict:
    """A JSON object read back; an absent file names what the folder is not (``what``)."""
    try:
        data = load_json(path, limit)
    except FileNotFoundError:
        raise RunDirError(f"{path} not found" + (f": {what}" if what else "")) from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def typed(cls, data, path: Path, key: str):
    """``cls`` from plain data read from ``path``: every field's type checked, the field named."""
    from llamantino.config.schema import from_plain

    try:
        return from_plain(cls, data, key)
    except ConfigError as exc:
        raise RunDirError(f"{path}: {exc}") from None


def load_record(cls, path: Path, key: str, what: str = "", limit: int = MAX_RECORD_BYTES):
    """A JSON record read back as ``cls`` (a dataclass of llamantino/records)."""
    return typed(cls, load_object(path, what, limit), path, key)


def plain_name(value: str, path: Path, key: str) -> str:
    """A name that is one entry of its folder (no separator, no ``..``): what a record may point at."""
    if not value or "/" in value or "\\" in value or value in (".", "..") or "\x00" in value:
        raise RunDirError(f"{path}: {key}={value!r} must name an entry of the folder itself")
    return value


def relative_inside(relative: str) -> bool:
    """Whether ``relative``, as written, names a path under its folder (not empty, not absolute, no ``..``)."""
    return bool(relative) and not Path(relative).is_absolute() and ".." not in Path(relative).parts


def inside(base: Path, relative: str, path: Path, key: str) -> Path:
    """``base / relative``, refused unless it stays inside ``base`` (links resolved)."""
    if not relative_inside(relative):
        raise RunDirError(f"{path}: {key}={relative!r} must be a path inside {base}")
    target = Path(base) / relative
    if not target.resolve().is_relative_to(Path(base).resolve()):
        raise RunDirError(f"{path}: {key}={relative!r} leads outside {base} (through a link)")
    return target


# --- leftovers ---------------------------------------------------------------------------------------


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def leftover_suffix(kind: str) -> str:
    """``.<pid>@<host>.<kind>``: what tells the next writer whose leftover a file is."""
    return f".{os.getpid()}@{_host()}.{kind}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:
        return False
    return True


def _abandoned(entry: os.DirEntry) -> bool:
    """A temporary file or staging directory whose process is gone."""
    marked = _LEFTOVER.search(entry.name)
    if marked is None and not _LEGACY_LEFTOVER.match(entry.name):
        return False
    try:
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return False
    if marked is not None and marked.group(2) == _host():
        return not _alive(int(marked.group(1)))
    return age > STALE_PARTIAL_S  # another host's, or unmarked: only age tells


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_leftovers(parent: Path) -> list[Path]:
    """Remove the temporary files and staging directories of gone processes in ``parent``."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith((".tmp", ".partial")) and _abandoned(entry):
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


class Terminated(BaseException):
    """SIGTERM arrived while a file was half written (re-delivered once the file is removed)."""


@contextlib.contextmanager
def removed_unless_finished(path: Path):
    """Remove ``path`` (a temporary file or staging directory) unless the block finishes: on any
    exception, KeyboardInterrupt, and SIGTERM (then re-delivered to this process's own handling)."""
    def terminate(signum, frame):
        raise Terminated()

    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, terminate)  # a handler someone else set is left to them
    try:
        yield
    except Terminated:
        _remove(Path(path))
        signal.signal(signal.SIGTERM, previous)
        previous = None
        os.kill(os.getpid(), signal.SIGTERM)  # dies as it would have, with nothing half-written left
        raise
    except BaseException:
        _remove(Path(path))
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --- writing -----------------------------------------------------------------------------------------


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``; a link at ``path`` is replaced, never followed."""
    path = Path(path)
    remove_leftovers(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}{leftover_suffix('tmp')}")
    try:
        with removed_unless_finished(tmp):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
    except OSError as exc:  # a full or read-only disk, a folder where the file goes: named
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
