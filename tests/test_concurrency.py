"""One submission per run, whatever runs concurrently (issue 20): the same pipeline, an identical ``-m``
sweep and ``launch`` of one written run, each started twice at once as two real processes, five
tries each; and the directory lock itself (records/lock.py).

Policy checked here: the second command waits for the first one's lock, then finds its work done
and exits 0 with a line saying so (``not submitted again`` / ``not written or submitted again`` /
``not started again``); it never submits again and never removes what the first one wrote.

The races use a stand-in ``sbatch`` first on PATH that appends one line per submission to a log
under ``flock`` and prints a job id, as ``sbatch --parsable`` does (and a stand-in ``scontrol`` that
reports every such job PENDING, as SLURM would right after submission): it counts every
submission exactly, and fast enough to repeat each race. The real-SLURM path is exercised in
tests/test_slurm.py and, for one race, by the ``slurm``-marked test at the end of this file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from conftest import PYTHON, cli, ok, read_json, run_dir_of

TRIES = 5
# launcher.validate=false: Axolotl's validation (seconds per step) changes nothing about the race.
SLURM = ("hardware=local_slurm", "hardware.nodes=1", "launcher=slurm", "launcher.validate=false")
QUICK_SFT = ("data=it_ultrachat_sample", "stage.max_steps=2", "stage.saves_per_epoch=null")
PIPELINE_STEPS = ["adapt", "merge_adapt", "sft", "merge_sft", "dpo", "eval", "release"]


def stand_in_scheduler(folder: Path) -> Path:
    """``folder/bin`` with the stand-in ``sbatch`` and ``scontrol``; submissions go to ``folder/submitted.log``."""
    bin_dir, log = folder / "bin", folder / "submitted.log"
    bin_dir.mkdir(parents=True)
    log.touch()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f"exec 9>>'{log}'\n"
        "flock 9\n"
        f"n=$(( $(wc -l < '{log}') + 1000 ))\n"
        'printf "%s %s %s\\n" "$n" "$PWD" "$*" >&9\n'
        'echo "$n"\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "JobId=$4 JobState=PENDING Reason=None"\n')
    for name in ("sbatch", "scontrol"):
        (bin_dir / name).chmod(stat.S_IRWXU)
    return log


def submissions(log: Path) -> list[tuple[str, str]]:
    """(job id, folder sbatch ran in) of every submission the stand-in saw."""
    return [tuple(line.split(" ", 2)[:2]) for line in log.read_text().splitlines()]


def env_for(work: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1", "SLURM_ACCOUNT": "", "SBATCH_ACCOUNT": "", **extra}


def twice_at_once(args: list[str], *, cwd: Path, env: dict) -> list[subprocess.CompletedProcess]:
    """Start the same command twice, back to back, as two real processes; wait for both."""
    argv = [PYTHON, "-m", "llamantino", *args]
    procs = [subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done


def both_ok(procs) -> None:
    for proc in procs:
        ok(proc)


@pytest.mark.parametrize("attempt", range(TRIES))
def test_the_same_pipeline_twice_at_once_submits_each_step_once(tmp_path, attempt):
    log = stand_in_scheduler(tmp_path)
    procs = twice_at_once(["pipeline=tiny", *SLURM, f"run.output_root={tmp_path / 'out'}"], cwd=tmp_path,
                          env=env_for(tmp_path))
    both_ok(procs)
    pipeline = tmp_path / "out" / "pipelines" / "tiny-tiny_llama"
    assert {run_dir_of(proc) for proc in procs} == {pipeline}
    everything = submissions(log)
    submitted = [(job, folder) for job, folder in everything if Path(folder).parent == pipeline]
    assert Counter(Path(folder).name for _, folder in submitted) == Counter(PIPELINE_STEPS), everything
    # the SFT and DPO steps' rows: each entry's job submitted once (by whichever command came first)
    rows = Counter(folder for _, folder in everything if Path(folder).parent.name == "prepared")
    assert len(rows) == 2 and set(rows.values()) == {1}, everything
    for step in PIPELINE_STEPS:
        record = read_json(pipeline / step / "job.json")
        assert len(record["submissions"]) == 1, (step, record)
    # one process submitted every step; the other found them queued and said so, once per step
    first, second = sorted(procs, key=lambda proc: "submitted job" not in proc.stdout)
    assert first.stdout.count("submitted job") == len(PIPELINE_STEPS), first.stdout
    assert "submitted job" not in second.stdout, second.stdout
    assert second.stdout.count("not submitted again") == len(PIPELINE_STEPS), second.stdout
    assert not any(path.name.endswith(".lock") for path in (tmp_path / "out").rglob("*"))  # released, removed
    assert not list(pipeline.glob("*.attempt-*"))  # nothing of the first one's was retired


@pytest.mark.parametrize("attempt", range(TRIES))
def test_identical_sweeps_at_once_submit_one_job_array(tmp_path, attempt):
    log = stand_in_scheduler(tmp_path)
    sweeps = tmp_path / "out" / "sweeps"
    # hydra.sweep.dir named, so both commands get the same one (by default it is the second they start in)
    args = ["-m", "stage.learning_rate=1e-3,3e-3", *SLURM, *QUICK_SFT, f"run.output_root={tmp_path / 'out'}",
            f"hydra.sweep.dir={sweeps / 'same'}"]
    procs = twice_at_once(args, cwd=tmp_path, env=env_for(tmp_path))
    both_ok(procs)
    assert {run_dir_of(proc) for proc in procs} == {sweeps / "same"}
    everything = submissions(log)
    submitted = [(job, folder) for job, folder in everything if Path(folder).parent.name != "prepared"]
    assert len(submitted) == 1 and Path(submitted[0][1]) == sweeps / "same", everything
    assert len(everything) - len(submitted) <= 1  # the points' rows, once (unless an earlier test made them)
    assert sorted(p.name for p in sweeps.iterdir()) == ["same"]  # no second sweep, no lock file left
    record = read_json(sweeps / "same" / "sweep.json")
    assert record["job_id"] == submitted[0][0] and len(record["points"]) == 2
    first, second = sorted(procs, key=lambda proc: "submitted job array" not in proc.stdout)
    assert "submitted job array" in first.stdout and "submitted job array" not in second.stdout
    assert f"(job array {submitted[0][0]}); not written or submitted again" in second.stdout, second.stdout


def test_launch_of_one_run_twice_at_once_submits_it_once(tmp_path):
    log = stand_in_scheduler(tmp_path)
    env = env_for(tmp_path)
    for attempt in range(TRIES):
        run = run_dir_of(ok(cli(*SLURM, *QUICK_SFT, "launcher.submit=false", f"run.output_root={tmp_path / 'out'}",
                                cwd=tmp_path)))
        before = len(submissions(log))
        procs = twice_at_once(["launch", str(run)], cwd=tmp_path, env=env)
        both_ok(procs)
        submitted = [(job, folder) for job, folder in submissions(log)[before:] if Path(folder).parent.name != "prepared"]
        assert [Path(folder) for _, folder in submitted] == [run], (attempt, submitted)
        assert len(read_json(run / "job.json")["submissions"]) == 1
        first, second = sorted(procs, key=lambda proc: "submitted job" not in proc.stdout)
        assert "submitted job" in first.stdout and "submitted job" not in second.stdout
        lines = second.stdout.strip().splitlines()
        assert lines[-1] == (f"{run} was already submitted as job {submitted[0][0]} (PENDING); not started again: "
                             f"python -m llamantino status {run}"), second.stdout
        assert not second.stderr.strip()


def test_launch_of_a_submitted_run_later_submits_nothing(tmp_path):
    log = stand_in_scheduler(tmp_path)
    run = run_dir_of(ok(cli(*SLURM, *QUICK_SFT, f"run.output_root={tmp_path / 'out'}", cwd=tmp_path,
                            env=env_for(tmp_path))))
    assert len(submissions(log)) == 1
    proc = ok(cli("launch", str(run), cwd=tmp_path, env=env_for(tmp_path), subprocess=True))
    assert "not started again" in proc.stdout and len(submissions(log)) == 1


# --- the lock itself ---------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from llamantino.records.lock import directory_lock
with directory_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_lock(directory: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_held_by_a_killed_process_is_free_for_the_next_command(tmp_path):
    from llamantino.errors import RunDirError
    from llamantino.records.lock import directory_lock, lock_path

    target = tmp_path / "pipelines" / "p"
    holder = hold_lock(target)
    try:
        with pytest.raises(RunDirError) as refused:  # held: the next command waits, at most its limit
            with directory_lock(target, echo=lambda line: None, wait_s=0.3):
                pass
        assert f"pid {holder.pid}" in str(refused.value) and "\n" not in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(target).exists()  # the file stays after SIGKILL, but no one holds it
    with directory_lock(target, wait_s=0):
        pass
    assert not lock_path(target).exists() and not target.exists()  # and the next holder removed it


def test_the_lock_follows_no_symlink_and_leaves_nothing_behind(tmp_path):
    from llamantino.errors import RunDirError
    from llamantino.records.lock import directory_lock, lock_path

    elsewhere = tmp_path / "elsewhere"
    target = tmp_path / "out" / "run"
    target.parent.mkdir()
    lock_path(target).symlink_to(elsewhere)
    with pytest.raises(RunDirError, match="symbolic link"):
        with directory_lock(target, wait_s=0):
            pass
    assert not elsewhere.exists()

    deep = tmp_path / "new" / "deeper" / "run"  # a refused command: the folders made for its lock go again
    with pytest.raises(ValueError):
        with directory_lock(deep, wait_s=0):
            assert lock_path(deep).is_file()
            raise ValueError("refused")
    assert not (tmp_path / "new").exists()


DRY_PIPELINE = ("pipeline=tiny", "launcher=dry", "launcher.validate=false")


def test_a_planted_symlink_lock_is_refused_and_nothing_is_written(tmp_path):
    from hostile import assert_refused, hostile_folder

    work = hostile_folder(tmp_path / "work")
    (work / "out" / "pipelines").mkdir(parents=True)
    (work / "out" / "pipelines" / ".tiny-tiny_llama.lock").symlink_to(work / "elsewhere")
    assert_refused(work, "llamantino", [*DRY_PIPELINE, "run.output_root={w}/out"], "is a symbolic link")
    assert not (work / "elsewhere").exists()


def test_lock_files_left_by_killed_commands_are_no_runs_and_are_taken_over(tmp_path):
    args = (*DRY_PIPELINE, f"run.output_root={tmp_path / 'out'}")
    pipeline = run_dir_of(ok(cli(*args, cwd=tmp_path)))
    (pipeline.parent / f".{pipeline.name}.lock").write_text("999999\n")  # what a SIGKILLed holder leaves
    (pipeline / ".adapt.lock").write_text("")  # a killed `launch <step>`'s
    rows = json.loads(ok(cli(str(pipeline), "--json", verb="status", cwd=tmp_path)).stdout)
    assert [row["name"] for row in rows] == PIPELINE_STEPS
    ok(cli(*args, cwd=tmp_path))  # the leftover lock is free: taken at once, removed when done
    assert not (pipeline.parent / f".{pipeline.name}.lock").exists()


# --- against the real cluster ------------------------------------------------------------------------

@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")
def test_the_same_pipeline_twice_at_once_on_real_slurm_submits_each_step_once(tmp_path):
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.fail("no SLURM cluster answers: run `slurm/local-cluster.sh up` (as root) first")
    name = f"race{uuid.uuid4().hex[:8]}"
    # --hold: the jobs stay queued (counted by squeue, cancelled after), nothing runs
    args = ["pipeline=tiny", *SLURM, f"run.name={name}", "hardware.slurm.extra_directives=[--hold]",
            f"run.output_root={tmp_path / 'out'}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    names = ",".join(f"llamantino-{name}-{step}" for step in PIPELINE_STEPS)
    try:
        procs = twice_at_once(args, cwd=tmp_path, env=env)
        both_ok(procs)
        queued = subprocess.run(["squeue", "-h", "--name", names, "-o", "%i %j"], capture_output=True, text=True,
                                check=True).stdout.split("\n")
        jobs = dict(line.split() for line in queued if line.strip())
        pipeline = tmp_path / "out" / "pipelines" / name
        recorded = {read_json(pipeline / step / "job.json")["job_id"]: step for step in PIPELINE_STEPS}
        assert sorted(jobs.values()) == sorted(f"llamantino-{name}-{step}" for step in PIPELINE_STEPS), jobs
        assert set(jobs) == set(recorded)
        first, second = sorted(procs, key=lambda proc: "submitted job" not in proc.stdout)
        assert first.stdout.count("submitted job") == len(PIPELINE_STEPS)
        assert "submitted job" not in second.stdout
        assert second.stdout.count("not submitted again") == len(PIPELINE_STEPS)
    finally:  # whatever was submitted, by either process
        left = subprocess.run(["squeue", "-h", "--name", names, "-o", "%i"], capture_output=True, text=True).stdout
        if left.split():
            subprocess.run(["scancel", *left.split()], capture_output=True)
