"""A study on the real SLURM cluster: batches as job arrays chained by the tell-and-ask job, a cancel
mid-batch, two resumes at once, and the study finished with nothing left on the login node."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, cli, ok, read_json, until
from test_search import journal_trials
from test_slurm import cluster, job  # noqa: F401 - the cluster fixture checks SLURM answers

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm_search")]
SLURM = ("hardware=local_slurm", "launcher=slurm", "hardware.nodes=1")
QUICK = ("stage=sft", "data=it_ultrachat_sample", "stage.max_steps=2", "stage.val_set_size=0.2",
         "stage.micro_batch_size=4", "stage.saves_per_epoch=null")


def squeue_ids() -> list[str]:
    proc = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
    return proc.stdout.split()


def submissions(run: Path) -> int:
    return len(read_json(run / "job.json")["submissions"])


def test_a_study_runs_as_arrays_chained_by_its_tell_and_ask_job_and_resumes_after_a_cancel(tmp_path):
    proc = ok(cli(*SLURM, *QUICK, "launcher.array_parallelism=2", "stage.learning_rate=tag(log,interval(1e-4,1e-2))",
                  "stage.lora_r=choice(4,8)", "--trials", "6", "--batch", "3", verb="search", cwd=tmp_path))
    study = Path(proc.stdout.split("run_dir: ")[1].splitlines()[0])
    assert proc.stdout.count("submitted job array") == 1 and "tell-and-ask job" in proc.stdout
    record = read_json(study / "study.json")
    first = record["batches"][0]
    assert first["trials"] == [0, 1, 2] and first["step_job"]
    array = read_json(study / "batch-000" / "sweep.json")["job_id"]
    assert job(first["step_job"]).dependency and f"afterany:{array}" in job(first["step_job"]).dependency
    script = (study / "search-step.sbatch").read_text()
    assert "search --step" in script and "--cpus-per-task=1" in script

    # the step job submits batch 1 by itself; cancel the study while batch 1 runs
    def batch_one_running():
        folder = study / "batch-001"
        if not (folder / "sweep.json").is_file() or not read_json(folder / "sweep.json").get("job_id"):
            return None
        running = [j for j in squeue_ids() if j.startswith(read_json(folder / "sweep.json")["job_id"] + "_")]
        return any(job(task).state == "RUNNING" for task in running)  # pending tasks are listed too

    until(batch_one_running, 420, "batch 1's array running", interval=1)
    out = ok(cli(str(study), verb="cancel", cwd=tmp_path)).stdout
    assert "cancelled job array" in out and "cancelled the tell-and-ask job" in out
    assert (study / "cancelled").exists()
    ids = {read_json(study / "batch-001" / "sweep.json")["job_id"], read_json(study / "study.json")["batches"][1]["step_job"]}
    until(lambda: not any(j.split("_")[0] in ids for j in squeue_ids()), 120, "the study's jobs gone")
    trials = {t.number: t for t in journal_trials(study)}
    assert [trials[n].state.name for n in (0, 1, 2)] == ["COMPLETE"] * 3  # told by the first step job
    assert [trials[n].state.name for n in (3, 4, 5)] == ["RUNNING"] * 3  # interrupted: not an outcome

    # two resumes at once: one resubmits the interrupted trials, the other finds the study running
    commands = [subprocess.Popen([PYTHON, "-m", "llamantino", "search", "--resume", str(study)], cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [command.communicate(timeout=300)[0] for command in commands]
    assert [command.returncode for command in commands] == [0, 0], outputs
    assert sum("resuming trials 3, 4, 5 of batch-001" in text for text in outputs) == 1, outputs
    assert sum("is running: its tell-and-ask job" in text for text in outputs) == 1, outputs
    assert not (study / "cancelled").exists()

    # the study finishes on its own: the last step job tells batch 1 and writes the report
    def finished():
        step = read_json(study / "study.json")["batches"][-1]["step_job"]
        return step and job(step).state in ("COMPLETED", "FAILED") and job(step)

    step = until(finished, 600, "the last tell-and-ask job ended", interval=2)
    assert step.state == "COMPLETED", (study / "logs").iterdir()
    trials = journal_trials(study)
    assert len(trials) == 6 and [t.state.name for t in trials] == ["COMPLETE"] * 6
    for number in range(6):
        run = study / f"batch-00{number // 3}" / f"{number:03d}"
        # finished trials were never run again; the interrupted ones ran a second time
        assert submissions(run) == (1 if number < 3 else 2), number
        assert read_json(run / "status.json")["state"] == "COMPLETED"
    assert len(read_json(study / "study.json")["batches"]) == 2
    for name in ("optimization_history.png", "param_importances.png", "slice.png"):
        assert (study / "report" / name).stat().st_size > 10_000
    best = min(trials, key=lambda t: t.value)
    status = ok(cli(str(study), verb="status", cwd=tmp_path)).stdout
    assert status.startswith(f"study {study.name}: 6 complete, 0 pruned, 0 failed")
    assert f"best: trial {best.number}, eval_loss={best.value:.6g}" in status
    assert "tell batch-001" in status
    # nothing of the study is left queued or running
    assert not [j for j in squeue_ids() if j.split("_")[0] in {s["step_job"] for s in read_json(study / "study.json")["batches"]}]
