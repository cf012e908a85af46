"""Close a run: record its outcome in status.json and, on success, write the model card.

Both launchers call it after the stage command: the local launcher in-process, SLURM jobs as
``python -m llamantino.finish <run_dir> --rc <exit code>`` on the batch host.
"""

from __future__ import annotations

from llamantino.curves import loss_curve, plot_curves
from llamantino.provenance import now_iso
from llamantino.rundir import RunDir, read_json


def finish_run(run: RunDir, rc: int, job_id: str | None = None) -> dict:
    """Write status.json (and the model card when ``rc == 0``); return the status."""
    run = RunDir(run.path.resolve())
    provenance = run.provenance()
    curve = loss_curve(run)
    losses = [loss for _, loss in curve]
    status = {
        "state": "COMPLETED" if rc == 0 else "FAILED",
        "exit_code": rc,
        "finished": now_iso(),
        "job_id": job_id,
        "losses": {"first": losses[0], "last": losses[-1], "best": min(losses), "count": len(losses)} if losses else None,
    }
    output = provenance.get("output") or {}
    if rc == 0 and output.get("path"):
        out = run / output["path"]
        status["output"] = str(out)
        report = run / RunDir.DATA_REPORT
        if report.is_file():
            provenance["data_report"] = read_json(report, "")
            run.write_provenance(provenance)
        if out.is_dir():
            from llamantino.card import write_model_card

            write_model_card(run, out, provenance, status)
    if len(losses) > 1:
        plot_curves({run.name: curve}, run / RunDir.LOSS_PNG, f"{run.name}: training loss")
    run.write_status(status)
    return status
