"""``python -m llamantino status <run, pipeline or sweep dir>``: where every job stands.

One line per job: first the jobs making what the runs read (a download, each step preparing a
corpus), then each run, step or point: SLURM job id, state (from ``scontrol``; from ``sacct`` or
``status.json`` once SLURM has forgotten the job, or for local runs), elapsed time, and the last
logged loss. Under the table, each failed job's reason: the last ``error:`` line of its log (for a
run cancelled because a job it waited on failed: that job).
"""

from __future__ import annotations

import json
from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino status", description=__doc__)
    parser.add_argument("target", type=Path, help="a run, pipeline or sweep directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from llamantino.reports.status import format_table, status_rows

    rows = status_rows(args.target)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0

