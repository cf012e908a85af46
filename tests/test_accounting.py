"""llamantino.launchers.accounting against the real cluster's accounting (slurmdbd + MariaDB, slurm/local-cluster.sh up).

All jobs are submitted at once (module fixture) and run side by side; each test then waits for
its own. The longest is the time-limit job (one minute, then SLURM's next limit check and
KillWait), so the module takes about two minutes.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from llamantino.launchers.accounting import job_states, sacct_available, true_state
from llamantino.records.jobstate import FAILED, JobState

# One xdist worker takes every SLURM test, in order: they share the two-node cluster.
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm_b")]
DONE = FAILED | {JobState.COMPLETED}
# Holds ~500 MB, resident (bytes are written, not just reserved), past two 5 s samples of jobacct_gather.
HOG = f"{sys.executable} -c 'import time; b = b\"x\" * (500 << 20); time.sleep(12)'"


def sbatch(cwd, *args: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", "--job-name=acct-test", "--output=slurm-%j.out", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def wait(job_id: str, timeout: float = 170, until=DONE, rows_expected: int = 1) -> list[dict]:
    """The job's rows once all are there (each array task) and in ``until``; sacct may lag SLURM."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = job_states(job_id)
        # an array's tasks reach the database one by one: a task that ended may be listed alone
        if len(rows) >= rows_expected and all(row["State"] in until for row in rows):
            return rows
        time.sleep(2)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout}s: {job_states(job_id)}")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    if not sacct_available():
        pytest.fail("sacct does not answer: run `slurm/local-cluster.sh up` (as root) first")
    cwd = tmp_path_factory.mktemp("accounting")
    ids = {  # the slowest first, so that it starts first
        "timeout": sbatch(cwd, "--time=1", "--wrap=sleep 120"),
        "completed": sbatch(cwd, "--wrap=sleep 1"),
        "cancelled": sbatch(cwd, "--wrap=sleep 300"),
        "array": sbatch(cwd, "--array=0-1", "--wrap=exit $SLURM_ARRAY_TASK_ID"),
        "memory": sbatch(cwd, "--mem=50M", f"--wrap={HOG}"),
    }
    yield ids
    # a deselected or failed test leaves its job behind on the shared cluster otherwise
    subprocess.run(["scancel", *ids.values()], capture_output=True, timeout=30)


def test_completed(jobs):
    [row] = wait(jobs["completed"])
    assert row["State"] == "COMPLETED" and row["ExitCode"] == "0:0"
    # not JobName: slurmdbd may record a quick job's end before its start, and then calls it
    # "allocation" until the start record arrives (seen here)
    assert row["JobID"] == jobs["completed"] and row["NodeList"] in ("n1", "n2")
    assert true_state(jobs["completed"]) == "COMPLETED"


def test_cancelled(jobs):
    wait(jobs["cancelled"], until={"RUNNING"})
    subprocess.run(["scancel", jobs["cancelled"]], check=True, timeout=30)
    [row] = wait(jobs["cancelled"])
    assert row["State"] == "CANCELLED"  # sacct says "CANCELLED by 0"
    assert true_state(jobs["cancelled"]) == "CANCELLED" and JobState.CANCELLED.failed


def test_array_task_failure_fails_the_array(jobs):
    array = jobs["array"]
    rows = {row["JobID"]: row for row in wait(array, rows_expected=2)}
    assert rows[f"{array}_0"]["State"] == "COMPLETED"
    assert rows[f"{array}_1"]["State"] == "FAILED" and rows[f"{array}_1"]["ExitCode"] == "1:0"
    assert sorted(rows) == [f"{array}_0", f"{array}_1"]
    assert true_state(array) == "FAILED"
    assert true_state(f"{array}_0") == "COMPLETED" and true_state(f"{array}_1") == "FAILED"


def test_over_memory_is_measured_not_enforced(jobs):
    # What this cluster really reports: COMPLETED. SLURM says OUT_OF_MEMORY when task/cgroup sees
    # the kernel's OOM killer; here there are no cgroups (TaskPlugin=task/none) and memory is no
    # consumable resource (CR_Core), so SLURM 22.05 gives the step no memory limit at all. Even
    # JobAcctGatherParams=OverMemoryKill killed nothing when tried (and its kill is a plain step
    # cancel, not an OOM). jobacct_gather/linux still samples the step: MaxRSS shows the overrun.
    [row] = wait(jobs["memory"])
    assert row["State"] == "COMPLETED", row
    assert row["ReqMem"] == "50M"
    assert row["MaxRSS"].endswith(("K", "M", "G")), row
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[row["MaxRSS"][-1]]
    assert float(row["MaxRSS"][:-1]) * scale > 400 << 20, row  # far above the 50M it asked for


def test_time_limit(jobs):
    [row] = wait(jobs["timeout"])
    assert row["State"] == "TIMEOUT" and row["Timelimit"] == "00:01:00", row
    assert true_state(jobs["timeout"]) == "TIMEOUT"


def test_unknown_job_and_state_names():
    assert job_states("999999999") == [] and true_state("999999999") is None
    assert JobState.parse("CANCELLED by 0") == "CANCELLED" and JobState.parse("RUNNING") == "RUNNING"
    assert JobState.parse("CANCELLED+") == "CANCELLED" and JobState.parse("SOMETHING_NEW") == JobState.UNKNOWN


def test_qos_limits_are_read_live_from_sacctmgr(tmp_path):
    from conftest import cli

    qos = "llamantino_test_qos"
    subprocess.run(["sacctmgr", "-i", "add", "qos", qos, "MaxWall=00:10:00", "MaxTRESPerJob=node=1"],
                   capture_output=True, timeout=30)
    try:
        from llamantino.launchers.cluster import qos_limits

        limits = qos_limits()[qos]
        assert (limits.max_nodes, limits.max_time) == (1, "00:10:00")
        # the YAML knows nothing of this QoS: the refusal comes from the database's limits
        proc = cli("hardware=local_slurm", "hardware.nodes=1", "launcher=slurm", f"hardware.slurm.qos={qos}",
                   "launcher.time=01:00:00",
                   cwd=tmp_path)
        assert proc.returncode == 2 and f"exceeds QoS {qos}'s 00:10:00" in proc.stderr, proc.stderr
        proc = cli("hardware=local_slurm", "launcher=slurm", f"hardware.slurm.qos={qos}", cwd=tmp_path)
        assert proc.returncode == 2 and "allows 1-1 nodes" in proc.stderr, proc.stderr
        assert not (tmp_path / "runs").exists()
    finally:
        subprocess.run(["sacctmgr", "-i", "delete", "qos", qos], capture_output=True, timeout=30)
