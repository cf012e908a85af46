"""``python -m llamantino launch <run dir> [--launcher NAME]``: start a run directory written earlier.

For runs rendered with ``launcher=dry`` or ``launcher.submit=false``, imported recipes, and runs
prepared for an offline cluster (``python -m llamantino data prepare``). ``--launcher slurm``
submits the run's job.sbatch after the same pre-submit checks as ``launcher=slurm``; ``--launcher
local`` runs the stage here. Without it the run's own launcher decides. A run already submitted or
run (and not failed) is not started again: one line says so, exit 0. Two launches of one run at once
submit it once (the second waits for the first: llamantino/records/lock.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    from llamantino.launchers import LAUNCHERS

    parser = ArgumentParser(prog="python -m llamantino launch", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--launcher", choices=[str(name) for name in LAUNCHERS],
                        help="the launcher that starts it (default: the one it was rendered with)")
    args = parser.parse_args(argv)
    from llamantino.orchestrate.runs import start_written
    from llamantino.records.rundir import RunDir

    start_written(RunDir(args.run_dir), args.launcher)
    return 0
