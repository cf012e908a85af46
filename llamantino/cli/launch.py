"""``python -m llamantino launch <run, pipeline or sweep dir> [--launcher NAME]``: start what was written earlier.

For runs, pipelines and sweeps written with ``launcher.submit=false``, runs rendered with
``launcher=dry``, imported recipes, and runs prepared for an offline cluster (``python -m llamantino
data prepare``). A directory written by ``launcher=slurm`` holds its job graph (graph.json: every
job script, and what each waits on): a pipeline or sweep directory submits all of it, a run directory
the part it needs (itself, and the downloads, corpus preparation and earlier steps it waits on), in
order, with the same pre-submit checks as ``launcher=slurm``. Otherwise ``--launcher slurm`` submits
the run's job.sbatch and ``--launcher local`` runs the stage here; without it the run's own launcher
decides. What is already submitted or run (and not failed) is not started again: one line says so,
exit 0. Two launches at once submit once (the second waits for the first: llamantino/records/lock.py).
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
    args = parser.parse_args(argv)
    from llamantino.orchestrate.runs import start_written

    start_written(args.target, args.launcher)
    return 0
