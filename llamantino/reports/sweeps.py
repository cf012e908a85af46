"""A sweep's losses side by side: one table, one plot (``llamantino collect``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from llamantino.records.curves import loss_curve, plot_curves
from llamantino.records.rundir import SweepDir, runs_under, write_text
from llamantino.reports.status import run_row


def collect(sweep_dir: Path) -> list[dict]:
    """One row per sweep point: its overrides, state, final and best loss, every loss."""
    rows = []
    record = SweepDir(Path(sweep_dir)).record()
    for (name, run), point in zip(runs_under(sweep_dir), record.points):
        curve = loss_curve(run)
        losses = [loss for _, loss in curve]
        rows.append({
            "point": name,
            "overrides": " ".join(point.overrides),
            "state": run_row(name, run, curve)["state"],
            "final_loss": f"{losses[-1]:.4f}" if losses else "",
            "best_loss": f"{min(losses):.4f}" if losses else "",
            "steps_logged": len(losses),
            "losses": losses,
            "curve": curve,
        })
    return rows


def write_collected(sweep_dir: Path, rows: list[dict]) -> tuple[Path, Path]:
    """The sweep's CSV and one PNG with every point's loss curve, each written atomically (a failure
    leaves no empty or half-written file)."""
    sweep = SweepDir(Path(sweep_dir))
    columns = ["point", "overrides", "state", "final_loss", "best_loss", "steps_logged"]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    png_path = plot_curves({f"{row['point']}: {row['overrides']}": row["curve"] for row in rows},
                           sweep.path / SweepDir.LOSS_PNG, f"sweep {sweep.path.name}")
    csv_path = sweep.path / SweepDir.COLLECT_CSV
    write_text(csv_path, table.getvalue())
    return csv_path, png_path
