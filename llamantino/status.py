"""``python -m llamantino.status <run, pipeline or sweep dir>``: where every job stands.

One line per run: step or point, SLURM job id, state (from ``scontrol``; from ``status.json``
once SLURM has forgotten the job or for local runs), elapsed time, and the last logged loss.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from llamantino.finish import read_status
from llamantino.logs import run_losses


def slurm_job(job_id: str) -> dict:
    """``scontrol show job -o`` as a dict ({} when SLURM does not know the job)."""
    if shutil.which("scontrol") is None:
        return {}
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    record = {}
    for line in proc.stdout.strip().splitlines()[:1]:  # job arrays: the first task line
        for item in line.split():
            key, _, value = item.partition("=")
            record[key] = value
    return record


def run_row(name: str, run_dir: Path) -> dict:
    """Status of one run directory."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    job_file = run_dir / "job.json"
    job_id = json.loads(job_file.read_text())["job_id"] if job_file.is_file() else status.get("job_id")
    job = slurm_job(job_id) if job_id else {}
    state = job.get("JobState") or status.get("state") or ("WRITTEN" if run_dir.exists() else "MISSING")
    if status.get("state") == "FAILED" and state == "COMPLETED":
        state = "FAILED"  # the batch script exited 0 after the stage failed: trust the stage
    reason = job.get("Reason", "")
    losses = run_losses(run_dir)
    return {
        "name": name,
        "job": job_id or "-",
        "state": state + (f" ({reason})" if reason and reason not in ("None", "(null)") else ""),
        "elapsed": job.get("RunTime", "-"),
        "restarts": job.get("Restarts", "0"),
        "last_loss": f"{losses[-1]:.4f}" if losses else "-",
        "run_dir": str(run_dir),
    }


def rows_for(target: Path) -> list[dict]:
    """Rows for a run, pipeline (pipeline.json) or sweep (sweep.json) directory."""
    target = Path(target)
    if (target / "pipeline.json").is_file():
        manifest = json.loads((target / "pipeline.json").read_text())
        return [run_row(step["name"], Path(step["run_dir"])) for step in manifest["steps"]]
    if (target / "sweep.json").is_file():
        sweep = json.loads((target / "sweep.json").read_text())
        rows = []
        for point in sweep["points"]:
            row = run_row(f"{point['index']:03d}", target / point["run_dir"])
            if sweep.get("job_id") and row["job"] == "-":
                row.update(job_row(f"{sweep['job_id']}_{point['index']}"))
            rows.append(row)
        return rows
    if (target / "provenance.json").is_file():
        return [run_row(target.name, target)]
    raise SystemExit(f"error: {target} is not a llamantino run, pipeline or sweep directory")


def job_row(job_id: str) -> dict:
    job = slurm_job(job_id)
    return {"job": job_id, "state": job.get("JobState", "UNKNOWN"), "elapsed": job.get("RunTime", "-")}


def format_table(rows: list[dict], columns=("name", "job", "state", "elapsed", "restarts", "last_loss")) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.status", description=__doc__)
    parser.add_argument("target", type=Path, help="a run, pipeline or sweep directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = rows_for(args.target)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
