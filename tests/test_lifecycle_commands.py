"""The lifecycle commands on real runs of the tiny model: ``runs``, ``logs [-f]``, ``cancel``,
``status --watch``, on both launchers (launcher=local here, launcher=slurm on the local cluster)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, cli, ok, read_json, run_dir_of, until

SLURM = ("hardware=local_slurm", "launcher=slurm", "hardware.nodes=1")
QUICK = ("stage.max_steps=2", "stage.saves_per_epoch=null")
QUICK_SLURM = ("data=it_ultrachat_sample", "stage.max_steps=2", "stage.micro_batch_size=4", "stage.saves_per_epoch=null")
LONG = ("stage.max_steps=300", "stage.saves_per_epoch=null", "stage.sequence_len=64")
LONG_SFT = ("stage.max_steps=300", "stage.saves_per_epoch=null", "stage.sequence_len=256")  # every sample row fits


def background(*args: str, cwd: Path, out: Path) -> subprocess.Popen:
    """``python -m llamantino <args>`` in the background, its stdout and stderr into ``out``.*."""
    return subprocess.Popen([PYTHON, "-m", "llamantino", *args], cwd=cwd,
                            stdout=open(out.with_suffix(".out"), "w"), stderr=open(out.with_suffix(".err"), "w"),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def output(out: Path) -> tuple[str, str]:
    return out.with_suffix(".out").read_text(errors="replace"), out.with_suffix(".err").read_text(errors="replace")


def status_of(run: Path, cwd: Path) -> dict:
    return json.loads(ok(cli(str(run), "--json", verb="status", cwd=cwd)).stdout)[-1]


def runs_listed(root: Path, *args: str) -> dict[str, dict]:
    return {Path(row["path"]): row for row in json.loads(ok(cli(str(root), "--json", *args, verb="runs",
                                                                 cwd=root.parent)).stdout)}


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


# --- launcher=local ----------------------------------------------------------------------------------


def test_a_running_local_run_is_listed_followed_and_cancelled(tmp_path, tiny_model):
    launch = background(*LONG_SFT, "run.name=long", cwd=tmp_path, out=tmp_path / "launch")

    def written():
        assert launch.poll() is None, output(tmp_path / "launch")  # ended before its stage started
        return next((tmp_path / "runs" / "long").glob("*/process.json"), None)

    try:
        process_json = until(written, 180, "process.json written")
        run = process_json.parent
        pid = read_json(process_json)["pid"]
        row = until(lambda: (r := status_of(run, tmp_path))["state"] == "RUNNING" and r, 60, "status says RUNNING")
        assert row["job"] == f"pid {pid}" and row["elapsed"] != "-" and row["gpu_hours"] == 0.0  # hardware=cpu
        assert list(runs_listed(tmp_path / "runs", "--state", "running")) == [run]
        assert runs_listed(tmp_path / "runs", "--state", "COMPLETED") == {}

        follow = background("logs", str(run), "-f", cwd=tmp_path, out=tmp_path / "follow")
        until(lambda: (run / "logs" / "train.log").is_file() and (run / "logs" / "train.log").stat().st_size, 120,
              "the stage writes its log")
        time.sleep(1)  # logs -f is under way before the run ends
        assert follow.poll() is None, output(tmp_path / "follow")

        dry = ok(cli(str(run), "--dry-run", verb="cancel", cwd=tmp_path))
        assert f"would cancel {run.name}: process group {pid}" in dry.stdout and alive(pid)
        proc = ok(cli(str(run), verb="cancel", cwd=tmp_path))
        assert f"cancelled {run.name}: process group {pid}" in proc.stdout, proc.stdout
        assert not alive(pid)
        assert launch.wait(timeout=120) != 0
        stdout, stderr = output(tmp_path / "launch")
        assert "was cancelled" in stderr, stderr[-3000:]
        status = read_json(run / "status.json")
        assert status["state"] == "CANCELLED" and status["exit_code"] == -signal.SIGTERM, status
        assert status_of(run, tmp_path)["state"] == "CANCELLED"

        assert follow.wait(timeout=30) == 0  # logs -f ends with the run
        followed, _ = output(tmp_path / "follow")
        assert followed == (run / "logs" / "train.log").read_text(errors="replace") and followed.strip()
        assert ok(cli(str(run), verb="logs", cwd=tmp_path)).stdout.strip()
        again = ok(cli(str(run), verb="cancel", cwd=tmp_path))
        assert again.stdout.strip() == f"nothing to cancel: no job of {run} is queued or running"
    finally:
        for process in (launch, locals().get("follow")):
            if process is not None and process.poll() is None:
                process.kill()


def test_cancel_never_signals_a_process_that_is_not_the_runs(tmp_path):
    """process.json is untrusted: a pid that is not the run's stage (init, this test, a stranger, a
    process in the run's folder that started later than recorded: a reused pid) is never signalled."""
    import socket

    run = run_dir_of(ok(cli("launcher=dry", *QUICK, cwd=tmp_path)))
    stranger = subprocess.Popen(["sleep", "60"], cwd=tmp_path, start_new_session=True)
    squatter = subprocess.Popen(["sleep", "60"], cwd=run, start_new_session=True)  # in the run's folder
    try:
        now = time.time()
        cases = [(1, 1, now), (os.getpid(), os.getpgrp(), now), (stranger.pid, stranger.pid, now),
                 (squatter.pid, squatter.pid, now - 3600)]
        for pid, pgid, started in cases:
            (run / "process.json").write_text(json.dumps({
                "pid": pid, "pgid": pgid, "host": socket.gethostname(), "attempt": 1,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(started))}))
            proc = ok(cli(str(run), verb="cancel", cwd=tmp_path))
            assert proc.stdout.startswith("nothing to cancel"), (pid, proc.stdout)
            row = status_of(run, tmp_path)
            assert row["state"] == "UNKNOWN" and "ended without a status" in row["note"], (pid, row)
        assert stranger.poll() is None and squatter.poll() is None
        assert not (run / "status.json").exists()
        # The same squatter recorded with its true start: it is taken as the run's process (what the check rests on).
        (run / "process.json").write_text(json.dumps({
            "pid": squatter.pid, "pgid": squatter.pid, "host": socket.gethostname(), "attempt": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}))
        assert status_of(run, tmp_path)["state"] == "RUNNING"
        assert "would cancel" in ok(cli(str(run), "--dry-run", verb="cancel", cwd=tmp_path)).stdout
        assert squatter.poll() is None
        # the user's own log, printed as it is: bad UTF-8 replaced, never an error
        (run / "logs" / "train.log").write_bytes(b"step 1 \xff\xfe\x1b[31m red\n")
        assert ok(cli(str(run), verb="logs", cwd=tmp_path)).stdout == "step 1 \ufffd\ufffd\x1b[31m red\n"
    finally:
        stranger.kill()
        squatter.kill()


def test_runs_lists_every_run_newest_first_and_shows_broken_ones(tmp_path):
    first = run_dir_of(ok(cli("launcher=dry", *QUICK, "run.name=first", cwd=tmp_path)))
    second = run_dir_of(ok(cli("launcher=dry", *QUICK, "run.name=second", cwd=tmp_path)))
    broken = tmp_path / "runs" / "broken" / "20200101-000000-beef"
    shutil.copytree(first, broken, symlinks=True)
    (broken / "provenance.json").write_text("{not json")
    os.utime(broken, (1.6e9, 1.6e9))  # no readable record: the folder's time places it
    (tmp_path / "runs" / "notes").mkdir()  # no run in it: skipped
    (tmp_path / "runs" / "elsewhere").symlink_to(first.parent)  # links are not followed
    proc = ok(cli(verb="runs", cwd=tmp_path))  # ./runs by default
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "STAGE", "STATE", "STEP"]
    assert [line.split()[0] for line in lines[1:4]] == [
        f"second/{second.name}", f"first/{first.name}", f"broken/{broken.name}"]
    assert lines[1].split()[1:3] == ["sft", "WRITTEN"]
    assert lines[3].split()[2] == "UNKNOWN" and any("provenance.json is not readable JSON" in line for line in lines)
    assert len(lines) == 5  # the table, and the broken run's note
    assert set(runs_listed(tmp_path / "runs", "--state", "written")) == {first, second}
    # status of the output root lists it as runs does
    assert ok(cli(str(tmp_path / "runs"), verb="status", cwd=tmp_path)).stdout == ok(
        cli(str(tmp_path / "runs"), verb="runs", cwd=tmp_path)).stdout
    bad = cli(str(tmp_path / "runs"), "--state", "DONE", verb="runs", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--state 'DONE' is not a job state" in bad.stderr
    assert "RUNNING" in bad.stderr
    missing = cli(verb="runs", cwd=tmp_path / "runs")
    assert missing.returncode == 2 and "no ROOT given" in missing.stderr


# --- launcher=slurm ------------------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_slurm_runs_are_listed_followed_watched_and_cancelled(tmp_path, tiny_model):
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.fail("no SLURM cluster answers: run `slurm/local-cluster.sh up` (as root) first")
    short = run_dir_of(ok(cli(*SLURM, *QUICK_SLURM, "run.name=short", cwd=tmp_path)))
    long = run_dir_of(ok(cli(*SLURM, "stage=adapt", *LONG, "stage.micro_batch_size=1", "run.name=long", cwd=tmp_path)))
    short_job, long_job = read_json(short / "job.json")["job_id"], read_json(long / "job.json")["job_id"]
    watch = background("status", str(short), "--watch", "1", cwd=tmp_path, out=tmp_path / "watch")
    follow = background("logs", str(short), "-f", cwd=tmp_path, out=tmp_path / "follow")
    try:
        # a local run in the same output root, meanwhile
        local = run_dir_of(ok(cli(*QUICK, "run.name=local", cwd=tmp_path)))

        # queued behind the short run's rows and training jobs and the other workers' SLURM tests (4 CPUs in all)
        until(lambda: status_of(long, tmp_path)["state"] == "RUNNING", 900, f"job {long_job} runs")
        until(lambda: (long / "logs" / "train.log").is_file(), 120, "the stage of the long job starts")
        dry = ok(cli(str(long), "--dry-run", verb="cancel", cwd=tmp_path))
        assert dry.stdout.strip() == f"would cancel {long.name}: job {long_job}"
        assert status_of(long, tmp_path)["state"] == "RUNNING"
        proc = ok(cli(str(long), verb="cancel", cwd=tmp_path))
        assert f"cancelled {long.name}: job {long_job}" in proc.stdout
        until(lambda: not subprocess.run(["squeue", "-h", "-j", long_job], capture_output=True,
                                         text=True).stdout.strip(), 60, f"squeue forgets job {long_job}")
        assert status_of(long, tmp_path)["state"].startswith("CANCELLED")
        assert read_json(long / "status.json")["state"] == "CANCELLED"

        assert watch.wait(timeout=420) == 0, output(tmp_path / "watch")
        frames = output(tmp_path / "watch")[0].split("\n\n")
        last = frames[-1].splitlines()
        assert last[0].split() == ["NAME", "JOB", "STATE", "STEP", "ETA", "ELAPSED", "GPU_H", "MAX_RSS", "RESTARTS",
                                   "LAST_LOSS"]
        cells = next(line for line in last[1:] if not line.startswith("prepare-")).split()  # its rows job: a row too
        assert cells[1:3] == [short_job, "COMPLETED"] and cells[5] != "-" and cells[6] == "0.00", last
        assert "every job has ended" in last[-1]
        assert len(frames) >= 2  # it watched the job while it was queued or running
        assert follow.wait(timeout=60) == 0
        followed = output(tmp_path / "follow")[0]
        assert f"llamantino: job {short_job} on" in followed  # the job's batch output
        assert "==> " in followed and "train.log <==" in followed and "{'loss'" in followed, followed[-3000:]

        listed = runs_listed(tmp_path / "runs")
        assert {path: row["state"] for path, row in listed.items()} == {
            short: "COMPLETED", long: "CANCELLED", local: "COMPLETED"}
        assert list(listed)[0] == local  # newest first
        assert set(runs_listed(tmp_path / "runs", "--state", "COMPLETED")) == {short, local}
        assert set(runs_listed(tmp_path / "runs", "--state", "cancelled")) == {long}
        assert listed[short]["gpu_hours"] == 0.0 and listed[short]["elapsed"] != "-"
    finally:
        for process in (watch, follow):
            if process.poll() is None:
                process.kill()
        subprocess.run(["scancel", short_job, long_job], capture_output=True)
