"""``llamantino runs [ROOT]``: every run, pipeline and sweep under an output root, newest first.

A pipeline or a sweep is one row: its state is the worst of its jobs' (the jobs making what it
reads included: records/jobstate.py ``worst``), STEP counts its runs completed (``3/6 steps``,
``1/4 points``), ELAPSED and GPU_H add up its runs' job time. A run's row is the one ``status``
shows (llamantino/reports/status.py ``run_row``), its STEP the training step of its total.

The folders under ROOT are untrusted: links are not followed, hidden folders (a write in progress)
and folders that hold no run record are skipped, the walk stops MAX_DEPTH levels down, and a run
whose records cannot be read is a row in state UNKNOWN whose note says why (never a traceback).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from llamantino.errors import ConfigError, LlamantinoError, RunDirError
from llamantino.records.jobstate import JobState, worst
from llamantino.records.rundir import PipelineDir, RunDir, StudyDir, SweepDir, runs_under
from llamantino.reports.status import format_seconds, format_table, run_row, status_rows, with_gpu_hours

MAX_DEPTH = 6  # <root>/<run name>/<time> is 2; pipelines/<name>/<step> and sweeps/<time>/<point> too
MAX_FOLDERS = 100_000  # folders looked at, at most: a root is not a whole file system
COLUMNS = ("name", "stage", "state", "step", "last_loss", "elapsed", "gpu_h", "path")


def kind_of(path: Path) -> str | None:
    """``pipeline``, ``sweep``, ``study`` or ``run`` for a folder holding that record, else None."""
    if StudyDir(path).is_study():
        return "study"
    if PipelineDir(path).is_pipeline():
        return "pipeline"
    if SweepDir(path).is_sweep():
        return "sweep"
    return "run" if RunDir(path).is_run() else None


def found_under(root: Path) -> list[tuple[str, Path]]:
    """(kind, folder) of every run, pipeline and sweep under ``root`` (a pipeline's steps and a sweep's
    points are part of it, not found on their own)."""
    root = Path(root)
    kind = kind_of(root)
    if kind is not None:
        return [(kind, root)]
    found, stack, seen = [], [(root, 0)], 0
    while stack and seen < MAX_FOLDERS:
        folder, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:  # unreadable: nothing found there
            continue
        for entry in entries:
            seen += 1
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            kind = kind_of(Path(entry.path))
            if kind is not None:
                found.append((kind, Path(entry.path)))
            elif depth + 1 < MAX_DEPTH:
                stack.append((Path(entry.path), depth + 1))
    return found


def _created(path: Path, kind: str) -> tuple[float, int]:
    """When a run (a pipeline's or sweep's first run) was written: its record's time (seconds), then
    its config's write time (nanoseconds: runs written within one second keep their order); the
    folder's time when unreadable."""
    try:
        run = RunDir(path) if kind == "run" else runs_under(path)[0][1]
        written = (run / RunDir.CONFIG).lstat().st_mtime_ns
        return _dt.datetime.fromisoformat(run.provenance().created).timestamp(), written
    except (LlamantinoError, OSError, ValueError, IndexError):
        try:
            return path.lstat().st_mtime, 0
        except OSError:
            return 0.0, 0


def _stage(run: RunDir) -> str:
    provenance = run.provenance()
    return provenance.choices.get("stage") or provenance.stage_type


def _group_row(kind: str, path: Path) -> dict:
    """One row for a pipeline or sweep: the worst state of its jobs, its runs completed of all."""
    names = {name for name, _ in runs_under(path)}
    rows = status_rows(path)
    runs = [row for row in rows if row["name"] in names]
    done = sum(JobState.parse(row["state"]).done for row in runs)
    losses = [row["last_loss"] for row in runs if row["last_loss"] != "-"]
    seconds = [row["elapsed_s"] for row in runs if row.get("elapsed_s") is not None]
    hours = [row["gpu_hours"] for row in runs if row.get("gpu_hours") is not None]
    notes = [f"{row['name']}: {row[key]}" for row in rows for key in ("error", "note") if row.get(key)]
    return {"kind": kind, "stage": kind, "state": worst(row["state"] for row in rows) or JobState.WRITTEN,
            "active": any(JobState.parse(row["state"]).active for row in rows),
            "step": f"{done}/{len(runs)} {({'pipeline': 'steps', 'study': 'trials'}).get(kind, 'points')}",
            "last_loss": losses[-1] if losses else "-", "elapsed_s": sum(seconds) if seconds else None,
            "gpu_hours": round(sum(hours), 4) if hours else None, "note": "; ".join(notes)}


def _run_listing_row(path: Path) -> dict:
    run = RunDir(path)
    row = run_row(path.name, run)
    return {"kind": "run", "stage": _stage(run), "state": row["state"],
            "active": JobState.parse(row["state"]).active, "step": row["step"], "last_loss": row["last_loss"],
            "elapsed_s": row["elapsed_s"], "gpu_hours": row["gpu_hours"], "note": row["note"] or row["error"]}


def listing_row(root: Path, kind: str, path: Path) -> dict:
    """The row of one run, pipeline or sweep; a broken record is a row in state UNKNOWN saying why."""
    try:
        row = _run_listing_row(path) if kind == "run" else _group_row(kind, path)
    except (LlamantinoError, OSError) as exc:
        reason = str(exc) if isinstance(exc, LlamantinoError) else f"{exc.filename}: {exc.strerror or exc}"
        row = {"kind": kind, "stage": "-", "state": JobState.UNKNOWN, "active": False, "step": "-", "last_loss": "-",
               "elapsed_s": None, "gpu_hours": None, "note": f"cannot be read: {reason}"}
    relative = path.relative_to(root).as_posix() if path != root else path.name
    row = {"name": relative, **row, "elapsed": format_seconds(row["elapsed_s"]), "path": str(path.absolute())}
    row["state"] = str(row["state"])
    return row


def state_named(text: str) -> JobState:
    """A state given on the command line (any case); a ConfigError listing the states otherwise."""
    state = JobState.__members__.get(text.strip().upper())
    if state is None:
        raise ConfigError(f"--state {text!r} is not a job state; use one of: {', '.join(JobState.__members__)}")
    return state


def runs_rows(root: Path, state: JobState | None = None) -> list[dict]:
    """Rows of everything under ``root``, newest first; only those in ``state`` when given."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a folder: give the output root of your runs (run.output_root, "
                          "`runs` by default) or a run, pipeline or sweep directory")
    found = sorted(found_under(root), key=lambda item: _created(item[1], item[0]), reverse=True)
    rows = [listing_row(root, kind, path) for kind, path in found]
    return [row for row in rows if state is None or JobState.parse(row["state"]) == state]


def format_runs(rows: list[dict]) -> str:
    """The table, then each row's note."""
    table = format_table(with_gpu_hours(rows), columns=COLUMNS)
    return "\n".join([table, *(f"{row['name']}: {row['note']}" for row in rows if row["note"])])


def status_view(target: Path) -> tuple[list[dict], Callable[[list[dict]], str]]:
    """``status``'s rows and table of a run, pipeline or sweep; of a folder that holds some (an output
    root), the runs listing (``status`` of a folder works as ``runs``)."""
    from llamantino.reports.status import status_table

    target = Path(target)
    if kind_of(target) is None and target.is_dir() and found_under(target):
        return runs_rows(target), format_runs
    if StudyDir(target).is_study():
        from llamantino.search.report import summary

        return status_rows(target), lambda rows: f"study {target.name}: {summary(StudyDir(target))}\n" + status_table(rows)
    return status_rows(target), status_table


def still_active(rows: list[dict]) -> bool:
    return any(row.get("active") or JobState.parse(row["state"]).active for row in rows)


def watch(rows_of: Callable[[], list[dict]], render: Callable[[list[dict]], str], interval: float,
          out: TextIO | None = None) -> None:
    """Print a frame of ``rows_of()`` every ``interval`` seconds until no job is queued or running.
    In a terminal each frame replaces the last; otherwise frames are separated by a blank line."""
    out = out or sys.stdout
    terminal = out.isatty()
    first = True
    while True:
        rows = rows_of()
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        if terminal:
            out.write("\x1b[H\x1b[2J")
        elif not first:
            out.write("\n")
        active = still_active(rows)
        out.write(f"{render(rows)}\n[{stamp}] " + (f"refreshed every {interval:g} s (Ctrl-C stops watching)\n" if active
                                                   else "every job has ended\n"))
        out.flush()
        if not active:
            return
        first = False
        time.sleep(interval)
