"""``python -m llamantino runs [ROOT] [--state STATE] [--json]``: every run, pipeline and sweep under ROOT.

ROOT is the output root of your runs (``run.output_root``; ``runs`` in the current folder by
default). Newest first, one row each: name (its folder under ROOT), stage, state, step of total,
last loss, elapsed time, GPU hours and path. A pipeline or sweep is one row: the worst state of
its jobs, its runs completed of all as its step (``3/6 steps``), its runs' time added up.
``--state`` keeps the rows in one state (RUNNING, FAILED, COMPLETED, ...). Folders that hold no
run are skipped; a run whose records cannot be read is a row in state UNKNOWN with a note.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamantino.argparsing import ArgumentParser

DEFAULT_ROOT = Path("runs")  # run.output_root's default (hardware.storage.runs)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino runs", description=__doc__)
    parser.add_argument("root", type=Path, nargs="?", help="the output root of your runs (default: ./runs)")
    parser.add_argument("--state", help="only the rows in this state (e.g. RUNNING, FAILED)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.root is None and not DEFAULT_ROOT.is_dir():
        parser.error(f"no ROOT given and there is no {DEFAULT_ROOT}/ folder here (the default run.output_root): "
                     "give the folder your runs are written to")
    from llamantino.reports.runs import format_runs, runs_rows, state_named

    root = args.root or DEFAULT_ROOT
    state = state_named(args.state) if args.state is not None else None
    rows = runs_rows(root, state)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(format_runs(rows) if rows else f"no runs under {root}" + (f" in state {state}" if state else ""))
    return 0
