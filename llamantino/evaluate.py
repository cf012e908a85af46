"""``python -m llamantino.evaluate <eval run dir>``: the eval stage's command (see llamantino/evaluation.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from llamantino.errors import entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.evaluate", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="an eval run directory (written by stage=eval)")
    args = parser.parse_args(argv)
    from llamantino.evaluation import run_evaluation

    run_evaluation(args.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
