"""``python -m llamantino collect <sweep dir>``: one table of every point's final and best loss.

Prints the table, writes ``collect.csv`` and draws every point's loss curve on one PNG
(``loss_curves.png``) in the sweep directory.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino collect", description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    from llamantino.reports.status import format_table
    from llamantino.reports.sweeps import collect, write_collected

    rows = collect(args.sweep_dir)
    print(format_table(rows, columns=("point", "state", "final_loss", "best_loss", "steps_logged", "overrides")))
    csv_path, png_path = write_collected(args.sweep_dir, rows)
    print(f"wrote {csv_path} and {png_path}")
    return 0

