"""``python -m llamantino.collect <sweep dir>``: one table of every point's final and best loss.

Prints the table, writes ``collect.csv`` and draws every point's loss curve on one PNG
(``loss_curves.png``) in the sweep directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from llamantino.logs import run_losses
from llamantino.status import format_table, run_row


def collect(sweep_dir: Path) -> list[dict]:
    sweep_dir = Path(sweep_dir)
    record_path = sweep_dir / "sweep.json"
    if not record_path.is_file():
        raise SystemExit(f"error: {sweep_dir} has no sweep.json: collect takes the directory of a -m sweep")
    record = json.loads(record_path.read_text())
    rows = []
    for point in record["points"]:
        run_dir = sweep_dir / point["run_dir"]
        losses = run_losses(run_dir)
        status = run_row(f"{point['index']:03d}", run_dir)
        rows.append({
            "point": f"{point['index']:03d}",
            "overrides": " ".join(point["overrides"]),
            "state": status["state"],
            "final_loss": f"{losses[-1]:.4f}" if losses else "",
            "best_loss": f"{min(losses):.4f}" if losses else "",
            "steps_logged": len(losses),
            "losses": losses,
        })
    return rows


def write_outputs(sweep_dir: Path, rows: list[dict]) -> tuple[Path, Path]:
    sweep_dir = Path(sweep_dir)
    columns = ["point", "overrides", "state", "final_loss", "best_loss", "steps_logged"]
    csv_path = sweep_dir / "collect.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    for row in rows:
        if row["losses"]:
            axis.plot(range(1, len(row["losses"]) + 1), row["losses"], marker=".", label=f"{row['point']}: {row['overrides']}"[:80])
    axis.set_xlabel("logged step")
    axis.set_ylabel("training loss")
    axis.set_title(f"sweep {sweep_dir.name}")
    if any(row["losses"] for row in rows):
        axis.legend(fontsize="small")
    figure.tight_layout()
    png_path = sweep_dir / "loss_curves.png"
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return csv_path, png_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.collect", description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    print(format_table(rows, columns=("point", "state", "final_loss", "best_loss", "steps_logged", "overrides")))
    csv_path, png_path = write_outputs(args.sweep_dir, rows)
    print(f"wrote {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
