"""``python -m llamantino.job.finish <run_dir> --rc N``: close a run, its outcome in status.json.

On success it also writes the model card. A stage ended by a signal after ``llamantino cancel``
recorded CANCELLED for this job stays CANCELLED (not FAILED).

Both launchers call it after the stage command: the local launcher in-process, SLURM jobs as
``python -m llamantino.job.finish <run_dir> --rc <exit code>`` on the batch host.

The run's own record (provenance.json, written before the job) must be sound: a broken or hostile
one is refused. What the job left (checkpoints, event files, logs, the data report, the output)
may be cut short by the very failure being recorded: whatever of it cannot be read is skipped and
named in status.json's ``notes``, and the outcome is recorded all the same.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from llamantino.argparsing import ArgumentParser
from llamantino.errors import RunDirError, entry
from llamantino.records.curves import loss_curve, plot_curves
from llamantino.records.files import load_object
from llamantino.records.jobstate import JobState, RunStatus
from llamantino.records.provenance import now_iso
from llamantino.records.rundir import RunDir


def cancelled(run: RunDir, rc: int, job_id: str | None) -> bool:
    """Whether the stage ended by a signal ``cancel`` sent: cancel records CANCELLED (for this job)
    before it signals, and that outcome stands over a FAILED."""
    if not (rc < 0 or rc >= 128):
        return False
    try:
        previous = run.read_status()
    except RunDirError:  # a broken record says nothing of a cancel
        return False
    return previous is not None and previous.state == JobState.CANCELLED and previous.job_id == job_id


def job_gpus() -> int:
    """The GPUs this job holds: SLURM's allocation on every node, else the devices this process sees."""
    import os

    if os.environ.get("SLURM_JOB_ID"):
        per_node = os.environ.get("SLURM_GPUS_ON_NODE", "0")
        nodes = os.environ.get("SLURM_JOB_NUM_NODES", "1")
        return int(per_node) * int(nodes) if per_node.isdigit() and nodes.isdigit() else 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def finish_run(run: RunDir, rc: int, job_id: str | None = None, started: float | None = None) -> RunStatus:
    """Write status.json (and the model card when ``rc == 0``); return the status. ``started``: the
    attempt's start (epoch seconds), for its elapsed time and GPU hours."""
    run = RunDir(run.path.resolve())
    provenance = run.provenance()
    out = run.output_path(provenance) if rc == 0 else None
    notes: list[str] = []
    curve = loss_curve(run, notes)
    losses = [loss for _, loss in curve]
    elapsed = round(max(time.time() - started, 0.0), 1) if started is not None else None
    status = RunStatus(
        state=JobState.COMPLETED if rc == 0 else JobState.CANCELLED if cancelled(run, rc, job_id) else JobState.FAILED,
        exit_code=rc,
        finished=now_iso(),
        job_id=job_id,
        losses={"first": losses[0], "last": losses[-1], "best": min(losses), "count": len(losses)} if losses else None,
        output=str(out) if out is not None else None,
        elapsed_s=elapsed,
        gpu_hours=round(elapsed * job_gpus() / 3600, 4) if elapsed is not None else None,
    )
    if out is not None:
        if run.existing(RunDir.DATA_REPORT) is not None:
            try:
                provenance.data_report = load_object(run / RunDir.DATA_REPORT)
                run.write_provenance(provenance)
            except RunDirError as exc:
                notes.append(str(exc))
        if out.is_dir() and not out.is_symlink() and provenance.output.trained:
            from llamantino.job.card import write_model_card
            from llamantino.job.generation import seal_generation

            try:  # a chat model stops where its template's turn ends, whoever loads it
                seal_generation(out, provenance.output.template, provenance.output.system_prompt)
            except (OSError, ValueError) as exc:
                notes.append(f"generation settings not written: {exc}")

            try:
                write_model_card(run, out, provenance, status)
            except RunDirError as exc:
                notes.append(f"no model card: {exc}")
    _tensorboard_hparams(run, provenance.overrides, status.losses, notes)
    if len(losses) > 1:
        plot_curves({run.name: curve}, run / RunDir.LOSS_PNG, f"{run.name}: training loss")
    for note in notes:
        print(f"llamantino finish: {note}", file=sys.stderr)
    status = dataclasses.replace(status, notes=notes or None)
    run.write_status(status)
    return status


def _tensorboard_hparams(run: RunDir, overrides: list[str], losses: dict | None, notes: list[str]) -> None:
    """A run trained with tracking=tensorboard: its HParams session, so a sweep tabulates in TensorBoard."""
    from llamantino.config.schema import Tracker
    from llamantino.job.hparams import write_hparams

    try:
        cfg = run.config()
        if cfg.tracking.name == Tracker.tensorboard:
            write_hparams(run, cfg.stage, overrides, losses)
    except (OSError, ValueError, ImportError, RunDirError) as exc:
        notes.append(f"no TensorBoard HParams: {exc}")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.finish", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rc", type=int, required=True, help="exit code of the stage command")
    parser.add_argument("--job-id", default=None)
    parser.add_argument("--started", type=float, default=None, help="the attempt's start, in epoch seconds")
    args = parser.parse_args(argv)
    finish_run(RunDir(args.run_dir), args.rc, args.job_id, args.started)
    return args.rc


if __name__ == "__main__":
    raise SystemExit(entry(main))
