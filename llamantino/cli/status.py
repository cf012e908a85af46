"""``python -m llamantino status <run, pipeline or sweep dir> [--json] [--watch [SECONDS]]``: where every job stands.

One line per job: first the jobs making what the runs read (a download, each step preparing a
corpus), then each run, step or point: SLURM job id (``pid N`` for a local run), state (from
``scontrol``; from ``sacct`` or ``status.json`` once SLURM has forgotten the job; for local runs
from status.json, or RUNNING while the recorded process lives), training step and ETA, elapsed
time, GPU hours (elapsed x GPUs), peak memory (MaxRSS, SLURM's accounting), restarts and the last
logged loss. Under the table, each failed job's reason: the last ``error:`` line of its log (for a
run cancelled because a job it waited on failed: that job), and notes on what cannot be known.

``--watch`` redraws the table every SECONDS (default 10) until every job has ended. A folder that
holds runs but is none itself (an output root) is listed as ``llamantino runs`` lists it.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamantino.argparsing import ArgumentParser

WATCH_S = 10.0
WATCH_MAX_S = 3600.0


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino status", description=__doc__)
    parser.add_argument("target", type=Path, help="a run, pipeline, sweep or study directory (or a folder of them)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--watch", type=float, nargs="?", const=WATCH_S, default=None, metavar="SECONDS",
                        help=f"redraw every SECONDS (default {WATCH_S:g}) until every job has ended")
    args = parser.parse_args(argv)
    if args.watch is not None and not 0 < args.watch <= WATCH_MAX_S:
        parser.error(f"--watch {args.watch:g}: the interval must be more than 0 and at most {WATCH_MAX_S:g} seconds")
    from llamantino.reports.runs import status_view, watch

    rows, table = status_view(args.target)
    render = (lambda rows: json.dumps(rows, indent=2, default=str)) if args.json else table
    if args.watch is None:
        print(render(rows))
        return 0
    watch(lambda: status_view(args.target)[0], render, args.watch)
    return 0
