"""``python -m llamantino.finish <run_dir> --rc N``: a SLURM job's last step (see llamantino/outcome.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from llamantino.errors import entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.finish", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rc", type=int, required=True, help="exit code of the stage command")
    parser.add_argument("--job-id", default=None)
    args = parser.parse_args(argv)
    from llamantino.outcome import finish_run
    from llamantino.rundir import RunDir

    finish_run(RunDir(args.run_dir), args.rc, args.job_id)
    return args.rc


if __name__ == "__main__":
    raise SystemExit(entry(main))
