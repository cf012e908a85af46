"""``python -m llamantino.launch <run dir> [--local | --slurm]``: start a run directory written earlier.

For runs rendered with ``launcher=dry`` or ``launcher.submit=false``, imported recipes, and runs
prepared for an offline cluster (``python -m llamantino.data prepare``). ``--slurm`` submits the
run's job.sbatch after the same pre-submit checks as ``launcher=slurm``; ``--local`` runs the stage
here. Without a flag the run's own launcher decides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llamantino.errors import entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.launch", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--local", dest="mode", action="store_const", const="local")
    mode.add_argument("--slurm", dest="mode", action="store_const", const="slurm")
    args = parser.parse_args(argv)
    from llamantino.rundir import RunDir
    from llamantino.runs import start_written

    start_written(RunDir(args.run_dir), args.mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
