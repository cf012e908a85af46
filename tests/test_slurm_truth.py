"""Job truth after SLURM forgets: status reads the accounting database (sacct) minutes after a job ended.

MinJobAge is SLURM's default here (300 s): ``scontrol`` forgets a job five minutes after it ends.
This module waits for that, mostly asleep, in an xdist group of its own so the other tests run
meanwhile.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import cli, ok, read_json, run_dir_of
from test_slurm import QUICK_SFT, SLURM, cluster, job_id_of, wait  # noqa: F401 (cluster: its autouse check)

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm_truth")]


@pytest.fixture(scope="module")
def ended_long_ago(tmp_path_factory):
    """Jobs that end badly: a time limit without requeue, a cancel, a failed array task."""
    work = tmp_path_factory.mktemp("ended")
    long_run = ("hardware.nodes=1", "stage=adapt", "stage.max_steps=100000", "stage.sequence_len=64",
                "stage.micro_batch_size=1", "stage.save_steps=null")
    timeout = run_dir_of(ok(cli(*SLURM, *long_run, "launcher.requeue=false", "launcher.time=00:01:00",
                                "run.name=times-out", cwd=work)))
    cancelled = run_dir_of(ok(cli(*SLURM, *long_run, "run.name=cancelled", cwd=work)))
    sweep = run_dir_of(ok(cli("-m", "stage.learning_rate=1e-3,2e-3", *SLURM, "hardware.nodes=1", *QUICK_SFT, cwd=work)))
    # Both points read one prepared rows entry; task 1 fails in its own stage: its recipe is broken
    # after the checks and before the task (which waits on the rows job) starts.
    (sweep / "001" / "axolotl.yaml").write_text("{ not yaml\n")
    wait(job_id_of(cancelled), timeout=300, until={"RUNNING"})
    subprocess.run(["scancel", job_id_of(cancelled)], check=True)
    return {"timeout": timeout, "cancelled": cancelled, "sweep": sweep, "submitted": time.time()}


def test_status_shows_the_true_end_of_jobs_scontrol_has_forgotten(ended_long_ago):
    from llamantino.launchers.slurm import _scontrol_job

    runs = ended_long_ago
    timeout_job, cancelled_job = job_id_of(runs["timeout"]), job_id_of(runs["cancelled"])
    array = read_json(runs["sweep"] / "sweep.json")["job_id"]
    for job_id in (timeout_job, cancelled_job, f"{array}_0", f"{array}_1"):
        wait(job_id, timeout=600)
    # until scontrol forgets them (MinJobAge 300 s after the end; SLURM purges every few minutes)
    deadline = time.time() + 900
    while time.time() < deadline and any(_scontrol_job(j) for j in (timeout_job, cancelled_job, f"{array}_1")):
        time.sleep(10)
    assert not _scontrol_job(timeout_job) and not _scontrol_job(f"{array}_1")
    assert not (runs["timeout"] / "status.json").exists()  # killed at the limit: its last step never ran
    out = ok(cli(str(runs["timeout"]), verb="status", cwd=runs["timeout"])).stdout
    assert "TIMEOUT" in out and read_json(runs["timeout"] / "status.json")["state"] == "TIMEOUT"
    out = ok(cli(str(runs["cancelled"]), verb="status", cwd=runs["cancelled"])).stdout
    assert "CANCELLED" in out
    out = ok(cli(str(runs["sweep"]), verb="status", cwd=runs["sweep"])).stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line[:3].isdigit()}
    assert "COMPLETED" in rows["000"] and "FAILED" in rows["001"], out
