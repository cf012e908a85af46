"""Close a run: record its outcome in status.json and, on success, write the model card.

Both launchers call it after the stage command: the local launcher in-process, SLURM jobs as
``python -m llamantino.finish <run_dir> --rc <exit code>`` on the batch host.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from llamantino.logs import run_losses
from llamantino.provenance import now_iso

STATUS_FILE = "status.json"


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict:
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def finish(run_dir: Path, rc: int, job_id: str | None = None) -> dict:
    """Write status.json (and the model card when ``rc == 0``); return the status."""
    run_dir = Path(run_dir).resolve()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    losses = run_losses(run_dir)
    status = {
        "state": "COMPLETED" if rc == 0 else "FAILED",
        "exit_code": rc,
        "finished": now_iso(),
        "job_id": job_id,
        "losses": {"first": losses[0], "last": losses[-1], "best": min(losses), "count": len(losses)} if losses else None,
    }
    output = provenance.get("output") or {}
    if rc == 0 and output.get("path"):
        out = run_dir / output["path"]
        status["output"] = str(out)
        report = run_dir / "output" / "llamantino_data_report.json"
        if report.is_file():
            provenance["data_report"] = json.loads(report.read_text())
            write_json(run_dir / "provenance.json", provenance)
        if out.is_dir():
            from llamantino.card import write_model_card

            write_model_card(run_dir, out, provenance, status)
    write_json(run_dir / STATUS_FILE, status)
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.finish", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rc", type=int, required=True, help="exit code of the stage command")
    parser.add_argument("--job-id", default=None)
    args = parser.parse_args(argv)
    finish(args.run_dir, args.rc, args.job_id)
    return args.rc


if __name__ == "__main__":
    raise SystemExit(main())
