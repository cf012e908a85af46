"""``python -m llamantino launch <run, pipeline or sweep dir> [--launcher NAME] [--again] [--dry-run]``: start what was written earlier.

For runs, pipelines and sweeps written with ``launcher.submit=false``, runs rendered with
``launcher=dry``, imported recipes, and runs prepared for an offline cluster (``python -m llamantino
data prepare``). A directory written by ``launcher=slurm`` holds its job graph (graph.json: every
job script, and what each waits on): a pipeline or sweep directory submits all of it, a run directory
the part it needs (itself, and the downloads, corpus preparation and earlier steps it waits on), in
order, with the same pre-submit checks as ``launcher=slurm``. Otherwise ``--launcher slurm`` submits
the run's job.sbatch and ``--launcher local`` runs the stage here; without it the run's own launcher
decides. Two launches at once submit once (the second waits for the first: llamantino/records/lock.py).

Relaunching is safe: a COMPLETED run is never started again (exit 2; ``--again`` writes a new run
directory from it, its provenance naming the old one); a run queued or running is not submitted
twice (one line, exit 0); a FAILED, TIMEOUT, CANCELLED, NODE_FAIL or PREEMPTED run resumes from its
last complete checkpoint. A pipeline's done steps are skipped (their outputs reused) and the rest
submitted as one afterok chain; a sweep's points that failed or never ran are submitted again as one
job array. A run whose input (an earlier step's output) is neither complete nor made by a job it
waits on is refused before anything is submitted. ``--dry-run`` checks everything and prints what
would be submitted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    from llamantino.launchers import LAUNCHERS

    parser = ArgumentParser(prog="python -m llamantino launch", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, metavar="dir", help="a run, pipeline or sweep directory")
    parser.add_argument("--launcher", choices=[str(name) for name in LAUNCHERS],
                        help="the launcher that starts it (default: the one it was rendered with)")
    parser.add_argument("--again", action="store_true",
                        help="write a new run directory from this run (a COMPLETED run is otherwise refused) and start it")
    parser.add_argument("--dry-run", action="store_true", help="check and print what would be started; start nothing")
    args = parser.parse_args(argv)
    from llamantino.orchestrate.runs import start_written

    start_written(args.target, args.launcher, again=args.again, dry_run=args.dry_run)
    return 0
