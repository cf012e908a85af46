"""``python -m llamantino compare <eval runs, or folders holding them>``: one table, one bar chart.

Collects ``results.json`` of every eval run found (a sweep or pipeline directory is searched),
prints each task's score ± its standard error, labelled by the model evaluated (its run's name and
the override keys telling the models apart), marks the scores not significantly different from the
task's best (the rule is printed), and draws them as grouped bars with error bars (``--png``,
default ``compare.png`` in the current directory). Results from different modes (``eval.mode``) are
refused together unless ``--mixed-modes``.
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
    from llamantino.reports.scores import SIGNIFICANCE_RULE, bar_chart, comparison, find_results, table_rows
    from llamantino.reports.status import format_table

    result = comparison(find_results(args.targets), mixed_modes=args.mixed_modes)
    if result.header():
        print(result.header())
    columns, rows = table_rows(result)
    print(format_table(rows, columns=columns))
    print(SIGNIFICANCE_RULE)
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {bar_chart(result, args.png).path}")
    return 0
