"""``python -m llamantino.compare <eval runs, or folders holding them>``: one table, one bar chart.

Collects ``results.json`` of every eval run found (a sweep or pipeline directory is searched),
prints a table of each task's score and the leaderboard average, and draws them as grouped bars
(``--png``, default ``compare.png`` in the current directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llamantino.status import format_table


def find_results(targets: list[Path]) -> list[Path]:
    found = []
    for target in targets:
        target = Path(target)
        if (target / "results.json").is_file():
            found.append(target)
        elif target.is_dir():
            found += sorted(p.parent for p in target.rglob("results.json"))
        else:
            raise SystemExit(f"error: {target} is neither an eval run nor a folder")
    if not found:
        raise SystemExit("error: no results.json found (evaluate runs with stage=eval first)")
    return found


def comparison(run_dirs: list[Path]) -> tuple[list[str], list[dict]]:
    rows, tasks = [], []
    for run_dir in run_dirs:
        result = json.loads((run_dir / "results.json").read_text())
        for task in result["scores"]:
            if task not in tasks:
                tasks.append(task)
        row = {"run": run_dir.name if run_dir.parent.name in ("", ".") else f"{run_dir.parent.name}/{run_dir.name}",
               **{t: f"{v:.4f}" for t, v in result["scores"].items()}}
        if "average" in result:
            row["average"] = f"{result['average']:.4f}"
        rows.append(row)
    columns = tasks + (["average"] if any("average" in r for r in rows) else [])
    for row in rows:
        for column in columns:
            row.setdefault(column, "-")
    return columns, rows


def bar_chart(columns: list[str], rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(6, 1.8 * len(columns) * max(len(rows), 1) / 2), 4.5))
    width = 0.8 / max(len(rows), 1)
    for index, row in enumerate(rows):
        values = [float(row[c]) if row[c] != "-" else 0.0 for c in columns]
        positions = [i + index * width for i in range(len(columns))]
        axis.bar(positions, values, width=width, label=row["run"][:50])
    axis.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(columns))])
    axis.set_xticklabels(columns)
    axis.set_ylabel("score")
    axis.set_ylim(0, 1)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.compare", description=__doc__)
    parser.add_argument("targets", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, default=Path("compare.png"))
    args = parser.parse_args(argv)
    columns, rows = comparison(find_results(args.targets))
    print(format_table(rows, columns=("run", *columns)))
    print(f"wrote {bar_chart(columns, rows, args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
