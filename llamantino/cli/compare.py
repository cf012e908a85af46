"""``python -m llamantino compare <eval runs, or folders holding them>``: one table, one bar chart.

Collects ``results.json`` of every eval run found (a sweep or pipeline directory is searched),
prints a table of each task's score, the leaderboard average and the evaluation mode, and draws
them as grouped bars (``--png``, default ``compare.png`` in the current directory). Results from
different modes (``eval.mode``) are refused together unless ``--mixed-modes``.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino compare", description=__doc__)
    parser.add_argument("targets", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, default=Path("compare.png"))
    parser.add_argument("--mixed-modes", action="store_true",
                        help="show results of different evaluation modes side by side, each labelled")
    args = parser.parse_args(argv)
    from llamantino.reports.scores import bar_chart, comparison, find_results
    from llamantino.reports.status import format_table

    columns, rows = comparison(find_results(args.targets), mixed_modes=args.mixed_modes)
    print(format_table(rows, columns=("run", *columns)))
    print(f"wrote {bar_chart([c for c in columns if c != 'mode'], rows, args.png)}")
    return 0

