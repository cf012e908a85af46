"""The shared cache (``<hardware.storage.cache>/prepared/<key>`` and ``.../downloads/<key>``): what each
entry holds on disk, when it was last used, which runs name it, and removing the ones no run names.

What the cache and the runs hold is read back as untrusted data: records through the bounded
readers (records/files.py), never through a link; sizes are counted without following links, and a
removal renames the entry out of sight and deletes it with :func:`shutil.rmtree`, which unlinks a
link and never deletes what it points at. An entry itself a link is listed and left alone.

A run names an entry by the corpus key its provenance and its recipe record (``llamantino_prepared``),
or by waiting for the entry's jobs (its job record's ``afterok`` dependencies: how a run names the
download job it waited for). An entry no run names is still kept while its jobs are queued or
running, while another llamantino command holds its lock (a prepare submitting it), and when it
was used or written in the last ``RECENT_S`` seconds (a run elsewhere may be reading it, a local
prepare may be writing it).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llamantino.errors import RunDirError
from llamantino.records.files import leftover_suffix, load_object, load_yaml
from llamantino.records.lock import directory_lock
from llamantino.records.rundir import DownloadDir, PreparedDir, RunDir, SharedEntry

RECENT_S = 3600  # an entry used or written this recently is kept: something may be reading or writing it
RUN_DEPTH = 4  # <runs>/<name>/<time>, <runs>/pipelines/<name>/<step>, <runs>/sweeps/<time>/<point>, one spare
KINDS: dict[str, type[SharedEntry]] = {"prepared": PreparedDir, "download": DownloadDir}
_KEY = re.compile(r"[0-9a-f]{32}\Z")
_JOB_ID = re.compile(r"\d+")


@dataclass
class CacheEntry:
    kind: str  # prepared or download
    key: str
    path: str
    state: str  # complete, incomplete, unreadable (its marker cannot be read back), link (not llamantino's)
    bytes: int  # on disk (allocated blocks), the entry's own files and folders, links not followed
    last_use: float | None  # epoch seconds: last_used, else the marker's mtime, else the newest write
    last_use_from: str
    modified: float  # the newest mtime inside the entry
    jobs: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)  # the runs that name it
    problem: str = ""  # why the entry or its jobs could not be read

    @property
    def last_activity(self) -> float:
        return max(self.modified, self.last_use or 0.0)


@dataclass
class RunNames:
    """What the runs under the scanned roots name: corpus keys and job ids, each with its runs."""

    keys: dict[str, list[str]] = field(default_factory=dict)
    jobs: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # runs whose records could not be read
    runs: int = 0


def human(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def _usage(path: Path) -> tuple[int, float]:
    """(bytes allocated, newest mtime) of a folder and everything in it, no link followed."""
    total, newest, stack = 0, 0.0, [path]
    while stack:
        folder = stack.pop()
        try:
            info = os.lstat(folder)
            children = list(os.scandir(folder)) if stat.S_ISDIR(info.st_mode) else []
        except OSError:
            continue
        total, newest = total + info.st_blocks * 512, max(newest, info.st_mtime)
        for child in children:
            try:
                child_info = child.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(child_info.st_mode):
                stack.append(Path(child.path))
            else:
                total, newest = total + child_info.st_blocks * 512, max(newest, child_info.st_mtime)
    return total, newest


def _mtime(path: Path) -> float | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_mtime if stat.S_ISREG(info.st_mode) else None


def read_entry(kind: str, path: Path) -> CacheEntry:
    """One entry as it is on disk now."""
    if path.is_symlink():
        return CacheEntry(kind, path.name, str(path), "link", 0, None, "", 0.0,
                          problem="a symbolic link, not an entry llamantino made: left alone (remove the link yourself)")
    entry = KINDS[kind](path)
    size, modified = _usage(path)
    state, problem = "incomplete", ""
    if os.path.lexists(path / entry.MARKER):
        try:
            load_object(path / entry.MARKER)
            state = "complete"
        except RunDirError as exc:
            state, problem = "unreadable", str(exc)
    jobs: dict[str, str] = {}
    try:
        jobs = entry.jobs()
    except RunDirError as exc:
        problem = problem or str(exc)
    last_use, source = None, ""
    if isinstance(entry, PreparedDir):  # the training plugin touches it whenever a run reads the entry
        last_use, source = _mtime(path / PreparedDir.LAST_USED), PreparedDir.LAST_USED
    if last_use is None:
        last_use, source = _mtime(path / entry.MARKER), entry.MARKER
    if last_use is None:
        last_use, source = (modified or None), "modified"
    return CacheEntry(kind, path.name, str(path), state, size, last_use, source, modified, jobs, problem=problem)


def cache_entries(cache: Path) -> tuple[list[CacheEntry], list[str]]:
    """Every entry of the cache, and the names found there that are not entries (left alone)."""
    entries, strays = [], []
    for kind, cls in KINDS.items():
        root = Path(cache) / cls.ROOT
        try:
            children = sorted(os.scandir(root), key=lambda child: child.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for child in children:
            if child.name.startswith("."):  # locks and the leftovers of a write: records/files.py's
                continue
            if _KEY.match(child.name) and (child.is_symlink() or child.is_dir(follow_symlinks=False)):
                entries.append(read_entry(kind, Path(child.path)))
            else:
                strays.append(child.path)
    return entries, strays


def _run_dirs(root: Path):
    """Run directories under ``root`` (at most RUN_DEPTH deep, no link followed, not inside a run)."""
    stack = [(Path(root), 0)]
    while stack:
        folder, depth = stack.pop()
        if RunDir(folder).is_run():
            yield RunDir(folder)
            continue
        if depth >= RUN_DEPTH:
            continue
        try:
            children = sorted(os.scandir(folder), key=lambda child: child.name, reverse=True)
        except OSError:
            continue
        stack.extend((Path(child.path), depth + 1) for child in children
                     if not child.name.startswith(".") and child.is_dir(follow_symlinks=False))


def _keys_named(run: RunDir) -> tuple[set[str], list[str]]:
    """The prepared keys (corpus, rows) a run's provenance and recipe name, and what could not be read."""
    keys, problems = set(), []
    try:
        data = run.provenance().data
        prepared = data.prepared() if data is not None else None
        if prepared and isinstance(prepared[1].get("key"), str):
            keys.add(prepared[1]["key"])
    except RunDirError as exc:
        problems.append(str(exc))
    recipe_path = run.existing(RunDir.RECIPE)
    if recipe_path is not None:
        try:
            recipe = load_yaml(recipe_path)
            entry = recipe.get("llamantino_prepared") if isinstance(recipe, dict) else None
            if isinstance(entry, str):
                keys.add(entry.rstrip("/").rsplit("/", 1)[-1])
        except RunDirError as exc:
            problems.append(str(exc))
    return keys, problems


def run_names(roots: list[Path]) -> RunNames:
    """What every run under ``roots`` names (a folder that does not exist holds no runs)."""
    found = RunNames()
    seen: set[Path] = set()
    for root in roots:
        for run in _run_dirs(root):
            where = run.path.resolve()
            if where in seen:
                continue
            seen.add(where)
            found.runs += 1
            keys, problems = _keys_named(run)
            for key in keys:
                found.keys.setdefault(key, []).append(str(run.path))
            try:
                waits = [s.dependency for s in run.job_record().submissions if s.dependency]
            except RunDirError as exc:
                problems.append(str(exc))
                waits = []
            for job in {job for dependency in waits for job in _JOB_ID.findall(dependency)}:
                found.jobs.setdefault(job, []).append(str(run.path))
            found.problems += [f"{run.path}: {problem}" for problem in problems]
    return found


def storage_roots(overrides: list[str], cache: Path | None, runs: list[Path]) -> tuple[Path, list[Path]]:
    """The cache folder and the folders of runs to read: ``cache``/``runs`` as given, else the composed
    config's ``hardware.storage.cache`` and ``run.output_root`` (``$VAR`` and ``~`` expanded), and ./runs."""
    if cache is None or not runs or overrides:
        from llamantino.config.compose import compose_config
        from llamantino.inputs.corpus import expand

        cfg = compose_config(list(overrides))
        cache = cache or Path(expand(cfg.hardware.storage.cache, "hardware.storage.cache"))
        runs = runs or [Path(expand(cfg.run.output_root, "run.output_root")), Path("runs")]
    unique: dict[Path, None] = {}
    for root in runs:
        unique.setdefault(Path(os.path.abspath(root)))
    return Path(os.path.abspath(cache)), list(unique)


def survey(cache: Path, roots: list[Path]) -> dict:
    """The cache's entries, each with the runs that name it, and what could not be read."""
    entries, strays = cache_entries(cache)
    names = run_names(roots)
    for entry in entries:
        runs = set(names.keys.get(entry.key, []))
        for job in entry.jobs.values():
            runs.update(names.jobs.get(job, []))
        entry.runs = sorted(runs)
    return {"cache": str(cache), "roots": [str(root) for root in roots], "runs_scanned": names.runs,
            "entries": entries, "strays": strays, "problems": names.problems}


def _active_jobs(entry: CacheEntry) -> list[str]:
    """The entry's jobs still queued or running (SLURM's answer; none where there is no SLURM)."""
    if entry.state == "complete" or not entry.jobs:
        return []
    from llamantino.launchers.slurm import job_state

    found = []
    for step, job in entry.jobs.items():
        state = job_state(job)
        if state.active:
            found.append(f"{step} job {job} {state}")
    return found


def _why_kept(entry: CacheEntry, now: float) -> str:
    """Why an entry no run names stays (empty: it goes)."""
    if entry.state == "link":
        return entry.problem
    active = _active_jobs(entry)
    if active:
        return "being prepared (" + ", ".join(active) + ")"
    age = now - entry.last_activity
    if age < RECENT_S:
        return (f"used or written {age / 60:.0f} min ago (entries active in the last {RECENT_S // 60} min are kept: "
                "a run elsewhere may read it, a prepare may be writing it)")
    return ""


def _remove(entry: CacheEntry, since: float) -> str:
    """Remove one entry under its lock; why it stayed instead (empty when removed)."""
    path = Path(entry.path)
    try:
        with directory_lock(path, echo=lambda line: None, wait_s=0):
            current = read_entry(entry.kind, path) if os.path.lexists(path) else None
            if current is None:
                return "gone already"
            if current.state == "link" or current.last_activity > since:
                return "used or written while the cache was read"
            staging = path.parent / f".{path.name}.{secrets.token_hex(3)}{leftover_suffix('partial')}"
            os.rename(path, staging)  # out of sight at once: a prepare starting now makes a new entry
    except RunDirError as exc:  # another command holds it (a prepare submitting it), or its lock file is not one
        return str(exc)
    except OSError as exc:
        return f"cannot move it aside: {exc.strerror or exc}"
    try:
        shutil.rmtree(staging)  # unlinks the links inside, never what they point at
    except OSError as exc:  # moved aside already: the next write in its folder removes what is left
        return f"partly removed ({exc.strerror or exc}); the rest goes with the next write in {path.parent}"
    return ""


def clean(report: dict, dry_run: bool) -> dict:
    """Remove (or, ``dry_run``, only list) the entries no run names; adds what went and what stayed."""
    now, removed, kept = time.time(), [], []
    for entry in report["entries"]:
        if entry.runs:
            continue
        why = _why_kept(entry, now)
        if not why and not dry_run:
            why = _remove(entry, report["read_at"])
        (kept if why else removed).append({"kind": entry.kind, "key": entry.key, "bytes": entry.bytes,
                                           "path": entry.path, **({"kept": why} if why else {})})
    return {**report, "dry_run": dry_run, "removed": removed, "kept": kept,
            "freed": sum(item["bytes"] for item in removed)}


def cache_report(cache: Path, roots: list[Path], remove: bool = False, dry_run: bool = False) -> dict:
    """What ``data cache`` prints: the survey, and with ``remove`` what went (or would go) and what stayed."""
    read_at = time.time()
    report = {**survey(cache, roots), "read_at": read_at}
    return clean(report, dry_run) if remove else report


def as_plain(report: dict) -> dict:
    """The report as JSON data."""
    return {**report, "entries": [asdict(entry) for entry in report["entries"]]}


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch)) if epoch else "-"


def format_report(report: dict) -> str:
    entries = report["entries"]
    where = report["cache"] + ("" if os.path.isdir(report["cache"]) else " (no such folder yet)")
    lines = [(f"cache {where}: {len(entries)} entries, {human(sum(e.bytes for e in entries))}; "
              f"{report['runs_scanned']} run(s) read under {', '.join(report['roots']) or '-'}")]
    if entries:
        lines.append(f"  {'kind':9} {'key':13} {'state':11} {'size':>10} {'bytes':>14}  {'last use':16}  runs")
    for e in entries:
        runs = f"{len(e.runs)}: {e.runs[0]}" + (f" (+{len(e.runs) - 1} more)" if len(e.runs) > 1 else "") \
            if e.runs else "none"
        lines.append(f"  {e.kind:9} {e.key[:12]:13} {e.state:11} {human(e.bytes):>10} {e.bytes:>14}  "
                     f"{_when(e.last_use):16}  {runs}")
        if e.problem:
            lines.append(f"    ({e.problem})")
    lines += [f"note: {path} is not an entry of the cache (left alone)" for path in report["strays"]]
    lines += [f"note: {problem}; the entries that run names are not known" for problem in report["problems"]]
    if "removed" not in report:
        unnamed = [e for e in entries if not e.runs]
        lines.append(f"{len(unnamed)} named by no run ({human(sum(e.bytes for e in unnamed))}): "
                     "python -m llamantino data cache --remove --dry-run lists what would go")
        return "\n".join(lines)
    verb = "would remove" if report["dry_run"] else "removed"
    lines += [f"{verb} {item['kind']} {item['key']} ({human(item['bytes'])})" for item in report["removed"]]
    lines += [f"kept {item['kind']} {item['key']}: {item['kept']}" for item in report["kept"]]
    total = f"{len(report['removed'])} entries, {human(report['freed'])}"
    lines.append(f"would remove {total}; nothing was removed (--dry-run)" if report["dry_run"] else f"removed {total}")
    return "\n".join(lines)
