"""``python -m llamantino collect <sweep, pipeline or run dir>``: the runs side by side.

Training runs: a table of each run's final and best value of a metric (default: the eval loss where
logged, else the training loss; the best run starred), ``collect.csv`` and ``loss_curves.png`` with a
panel per metric logged (training loss, eval loss, learning rate, gradient norm). Lines and columns
are labelled by the override keys that vary across the runs; the keys they share are said once.
Eval runs (an eval sweep, a pipeline's eval step): the scores per task with their standard errors,
``scores.csv`` and ``scores.png``. Files go into the directory collected unless ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino collect", description=__doc__)
    parser.add_argument("target", type=Path, help="a sweep (-m), study (search), pipeline or run directory")
    parser.add_argument("--metric", help="the metric of the table's final/best value and the one panel drawn, "
                                         "e.g. eval_loss, loss, grad_norm (lowest is best)")
    parser.add_argument("--log-y", action="store_true", help="loss axes on a log scale")
    parser.add_argument("--smooth", type=int, default=0, metavar="N",
                        help="draw an N-point trailing moving average of each curve (raw values faint behind it)")
    parser.add_argument("--out", type=Path, help="write the CSV and PNG files here (default: the directory collected)")
    args = parser.parse_args(argv)
    if args.smooth < 0:
        parser.error(f"--smooth {args.smooth}: give a number of logged points, 0 or 1 for none")
    from llamantino.reports.status import format_table
    from llamantino.reports.scores import SIGNIFICANCE_RULE, table_rows
    from llamantino.reports.sweeps import table_columns, write_collected, collect

    collected = collect(args.target, metric=args.metric)
    print(collected.header())
    if collected.rows:
        print(format_table(collected.rows, columns=table_columns(collected)))
        if collected.ranked:
            print(f"* best run: lowest {collected.metric}")
    if collected.scores is not None:
        print(format_table(table_rows(collected.scores)[1], columns=table_rows(collected.scores)[0]))
        print(SIGNIFICANCE_RULE)
    for note in collected.notes:
        print(f"note: {note}")
    print("wrote " + ", ".join(map(str, write_collected(collected, args.out, args.log_y, args.smooth).files)))
    return 0
