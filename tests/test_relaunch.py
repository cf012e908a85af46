"""Relaunching is safe (issue 22): a COMPLETED run is never started again (exit 2, not a byte
changed; ``--again`` writes a new run from it); a killed or cancelled run resumes from its last
complete checkpoint on either launcher; a pipeline relaunched as one submits only its unfinished
steps as one afterok chain; a sweep's failed or never-run points go again as one job array; a step
whose input is neither complete nor made by a job it waits on is refused before anything starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TESTS, cli, ok, read_json, run_dir_of, until

PY = sys.executable
QUICK_LONG_SFT = ("stage=sft", "data=it_ultrachat_sample", "stage.max_steps=20", "stage.save_steps=3",
                  "stage.saves_per_epoch=null", "stage.micro_batch_size=2")


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file and link under ``folder``, with its content's (or target's) hash."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = "link:" + os.readlink(path)
        elif path.is_file():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def complete_checkpoint(run: Path) -> int | None:
    steps = [int(p.parent.name.split("-")[1]) for p in (run / "output").glob("checkpoint-*/llamantino_complete.json")]
    return max(steps) if steps else None


def first_step_after(log: str, marker: str) -> int:
    """The first step the progress lines report after ``marker`` in a log."""
    rest = log[log.index(marker):]
    return int(re.search(r"llamantino: step (\d+)/", rest).group(1))


def test_a_killed_local_run_resumes_and_a_completed_one_is_never_started_again(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([PY, "-m", "llamantino", "launcher=local", "hardware=cpu", *QUICK_LONG_SFT,
                              f"run.output_root={out}"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        run = until(lambda: next(iter(out.glob("*/*/process.json")), None), 300, "the run starting").parent
        saved = until(lambda: complete_checkpoint(run), 300, "a complete checkpoint")
        os.killpg(read_json(run / "process.json")["pgid"], signal.SIGTERM)  # what a lost terminal does
        first.wait(120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0
    assert read_json(run / "status.json")["state"] == "FAILED"

    resumed = ok(cli(str(run), verb="launch", cwd=tmp_path, subprocess=True))
    marker = "llamantino: attempt 2: resuming from output/checkpoint-"
    assert marker in resumed.stdout, resumed.stdout
    log = (run / "logs" / "train.log").read_text()
    from_step = int(re.search(r"resuming from output/checkpoint-(\d+)", log).group(1))
    assert from_step >= saved and first_step_after(log, marker) > from_step > 1
    assert read_json(run / "status.json")["state"] == "COMPLETED"
    assert read_json(run / "logs" / "status.attempt-1.json")["state"] == "FAILED"  # the first attempt's outcome, kept

    # finished: launch refuses it, and changes no byte of it
    before = tree_digest(run)
    refused = cli(str(run), verb="launch", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "is COMPLETED" in refused.stderr and "--again" in refused.stderr
    assert tree_digest(run) == before

    # --again: a new run directory written from it, its provenance naming the old one
    dry = ok(cli(str(run), "--again", "--dry-run", verb="launch", cwd=tmp_path))
    assert dry.stdout.startswith("would write a new run directory") and len(list(run.parent.iterdir())) == 1
    ok(cli(str(run), "--again", verb="launch", cwd=tmp_path, subprocess=True))
    (new,) = [p for p in run.parent.iterdir() if p != run]
    assert read_json(new / "provenance.json")["derived_from"] == str(run)
    assert read_json(new / "status.json")["state"] == "COMPLETED" and tree_digest(run) == before


def test_a_step_whose_input_is_missing_is_refused_and_a_pipeline_starts_in_order(tmp_path):
    pipeline = run_dir_of(ok(cli("pipeline=tiny", "launcher=dry", "hardware=cpu", f"run.output_root={tmp_path}",
                                 cwd=tmp_path)))
    refused = cli(str(pipeline / "merge_adapt"), "--launcher", "local", verb="launch", cwd=tmp_path)
    assert refused.returncode == 2
    assert f"reads the output of {pipeline / 'adapt'}, which is WRITTEN" in refused.stderr
    assert f"launch {pipeline}" in refused.stderr and not (pipeline / "merge_adapt" / "logs" / "train.log").exists()
    # the whole pipeline: every step in order, each reading the one before it (a dry run starts nothing)
    dry = ok(cli(str(pipeline), "--launcher", "local", "--dry-run", verb="launch", cwd=tmp_path))
    steps = ["adapt", "merge_adapt", "sft", "merge_sft", "dpo", "eval", "release"]
    assert re.findall(r"would start \S+/(\w+) with launcher=local", dry.stdout) == steps
    assert not any((pipeline / step / "status.json").exists() for step in steps)


# --- on the local SLURM cluster -------------------------------------------------------------------------

SLURM = ("hardware=local_slurm", "launcher=slurm", "hardware.nodes=1")


def job_state(job_id: str) -> str:
    from llamantino.launchers.slurm import job_state as state

    return str(state(job_id))


def submissions(run: Path) -> int:
    return len(read_json(run / "job.json")["submissions"]) if (run / "job.json").exists() else 0


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_a_cancelled_pipeline_relaunches_as_one_chain_and_resumes_mid_training(tmp_path):
    written = ok(cli(f"hydra.searchpath=[file://{TESTS / 'conf'}]", "pipeline=tiny_resume", *SLURM,
                     "launcher.submit=false", f"run.output_root={tmp_path / 'out'}", cwd=tmp_path))
    pipeline = run_dir_of(written)
    steps = ["adapt", "merge", "sft"]
    assert not any((pipeline / step / "job.json").exists() for step in steps)
    started = ok(cli(str(pipeline), verb="launch", cwd=tmp_path))
    assert [submissions(pipeline / step) for step in steps] == [1, 1, 1], started.stdout
    sft = pipeline / "sft"
    try:
        saved = until(lambda: complete_checkpoint(sft), 600, "a complete SFT checkpoint", interval=0.5)
        cancelled = ok(cli(str(pipeline), verb="cancel", cwd=tmp_path))
        assert read_json(sft / "status.json")["state"] == "CANCELLED", cancelled.stdout
        first_job = read_json(sft / "job.json")["job_id"]
        until(lambda: job_state(first_job) == "CANCELLED", 60, "the SFT job cancelled")
        assert not (sft / "output" / "adapter_model.safetensors").exists()  # cancelled mid-training

        dry = ok(cli(str(pipeline), "--dry-run", verb="launch", cwd=tmp_path))
        assert re.findall(r"^would submit (\w+)", dry.stdout, re.M) == ["sft"]
        assert [submissions(pipeline / step) for step in steps] == [1, 1, 1]

        again = ok(cli(str(pipeline), verb="launch", cwd=tmp_path))
        assert "adapt: COMPLETED; skipped" in again.stdout and "merge: COMPLETED; skipped" in again.stdout
        assert [submissions(pipeline / step) for step in steps] == [1, 1, 2]
        second_job = read_json(sft / "job.json")["job_id"]
        until(lambda: job_state(second_job) in ("COMPLETED", "FAILED"), 600, "the resumed SFT job ending", 2)
        log = (sft / "logs" / "train.log").read_text()
        assert job_state(second_job) == "COMPLETED", log[-3000:]
        marker = "Using auto-resume functionality to resume from checkpoint at output/checkpoint-"
        from_step = int(log[log.index(marker) + len(marker):].split()[0])
        assert from_step >= saved and first_step_after(log, marker) > from_step > 1
        assert read_json(sft / "status.json")["state"] == "COMPLETED"

        # a COMPLETED step launched by itself: exit 2, not a byte changed
        before = tree_digest(pipeline / "merge")
        refused = cli(str(pipeline / "merge"), verb="launch", cwd=tmp_path)
        assert refused.returncode == 2 and "is COMPLETED" in refused.stderr
        assert tree_digest(pipeline / "merge") == before and submissions(pipeline / "merge") == 1
        # the pipeline, done: nothing submitted
        done = ok(cli(str(pipeline), verb="launch", cwd=tmp_path))
        assert "submitted job" not in done.stdout and [submissions(pipeline / s) for s in steps] == [1, 1, 2]
    finally:
        jobs = [read_json(pipeline / s / "job.json")["job_id"] for s in steps if (pipeline / s / "job.json").exists()]
        subprocess.run(["scancel", *jobs], capture_output=True)


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_a_sweep_relaunch_submits_only_its_points_that_did_not_run_as_one_array(tmp_path):
    written = ok(cli("-m", "stage.learning_rate=1e-3,2e-3,3e-3", *SLURM, "data=it_ultrachat_sample",
                     "stage.max_steps=2", "stage.micro_batch_size=4", "stage.saves_per_epoch=null",
                     "launcher.array_parallelism=1", "launcher.submit=false", f"run.output_root={tmp_path / 'out'}",
                     cwd=tmp_path))
    sweep = run_dir_of(written)
    ok(cli(str(sweep), verb="launch", cwd=tmp_path))
    array = read_json(sweep / "sweep.json")["job_id"]
    try:
        # one at a time: point 2 still waits when point 1's task is cancelled
        subprocess.run(["scancel", f"{array}_1", f"{array}_2"], check=True)
        until(lambda: job_state(f"{array}_0") in ("COMPLETED", "FAILED"), 600, "point 0 ending", 2)
        points = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "provenance.json").exists())
        dry = ok(cli(str(sweep), "--dry-run", verb="launch", cwd=tmp_path))
        assert "would submit job array over points [1, 2]" in dry.stdout, dry.stdout
        again = ok(cli(str(sweep), verb="launch", cwd=tmp_path))
        assert "(points 1, 2 of 3" in again.stdout, again.stdout
        second = read_json(sweep / "sweep.json")["job_id"]
        assert second != array and [submissions(p) for p in points] == [1, 2, 2]
        for index in (1, 2):
            until(lambda: job_state(f"{second}_{index}") in ("COMPLETED", "FAILED"), 600, f"point {index} ending", 2)
        rows = json.loads(ok(cli(str(sweep), "--json", verb="status", cwd=tmp_path)).stdout)
        points_rows = [row for row in rows if not row["name"].startswith("prepare-")]  # the rows job is listed too
        assert [row["state"] for row in points_rows] == ["COMPLETED"] * 3, rows
        done = ok(cli(str(sweep), verb="launch", cwd=tmp_path))
        assert "nothing submitted again" in done.stdout and read_json(sweep / "sweep.json")["job_id"] == second
    finally:
        subprocess.run(["scancel", array, read_json(sweep / "sweep.json")["job_id"]], capture_output=True)
