"""On a real SLURM cluster (slurm/local-cluster.sh up: munge, slurmctld, slurmd n1 and n2).

Select with ``-m slurm``; CI brings the cluster up first. Without a cluster these tests fail
(they do not skip): a SLURM feature that was not exercised is not known to work.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TESTS, cli, ok, read_json, run_dir_of

# SLURM tests run in xdist groups that share the two-node cluster: "slurm" holds the tests that use
# both nodes, "slurm_b" single-node ones; test_slurm_truth.py waits minutes in a group of its own.
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
SLURM = ("hardware=local_slurm", "launcher=slurm")
QUICK_SFT = ("data=it_ultrachat_sample", "stage.max_steps=2", "stage.micro_batch_size=4", "stage.saves_per_epoch=null")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.fail("no SLURM cluster answers: run `slurm/local-cluster.sh up` (as root) first")


def job(job_id: str):
    """SLURM's record of a job (UNKNOWN while neither scontrol nor sacct knows it yet)."""
    from llamantino.launchers.slurm import slurm_job
    from llamantino.records.jobstate import JobRecord, JobState

    return slurm_job(job_id) or JobRecord(job_id=job_id, state=JobState.UNKNOWN)


def wait(job_id: str, timeout: float = 420, until=TERMINAL):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job(job_id)
        if info.state in until:
            return info
        time.sleep(2)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout}s: {job(job_id)}")


def yaml_key(recipe: Path, key: str = "llamantino_prepared"):
    import yaml

    return yaml.safe_load(recipe.read_text())[key]


def job_id_of(run_dir: Path) -> str:
    return read_json(run_dir / "job.json")["job_id"]


def test_two_nodes_train_data_parallel(tmp_path):
    proc = ok(cli(*SLURM, *QUICK_SFT, cwd=tmp_path))
    assert "submitted job" in proc.stdout
    run_dir = run_dir_of(proc)
    info = wait(job_id_of(run_dir))
    log = (run_dir / "logs" / "train.log").read_text(errors="replace")
    assert info.state == "COMPLETED", log[-3000:]
    assert info.nodes == "2"
    # c10d hands out ranks in joining order, so either node may be rank 0: both ranks, both nodes
    joined = dict(re.findall(r"llamantino: rank (\d)/2 joined on node (n\d)", log))
    assert sorted(joined) == ["0", "1"] and sorted(joined.values()) == ["n1", "n2"], joined
    assert (run_dir / "output" / "adapter_model.safetensors").is_file()
    assert read_json(run_dir / "status.json")["state"] == "COMPLETED"


def assert_release_folder(folder: Path, scores: dict, local_paths: list[Path]) -> None:
    """A release folder as the Hub reads it: card and model-index parsed by huggingface_hub, the
    scores equal to results.json, weights in safetensors, no path of this machine in any file."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    found = {result.dataset_name: result.metric_value for result in card.data.eval_results or []}
    assert found == scores
    assert card.data.language == ["it"]
    assert sorted(path.name for path in folder.glob("*.safetensors"))
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            text = path.read_text(errors="replace")
            for local in [*local_paths, Path.home()]:
                assert str(local) not in text, f"{path} names {local}"


def test_pipeline_is_a_chain_of_jobs_and_relaunch_submits_nothing_twice(tmp_path):
    args = ("pipeline=tiny", "hardware=local_slurm", "hardware.nodes=1", "launcher=slurm")
    proc = ok(cli(*args, cwd=tmp_path))
    pipeline_dir = run_dir_of(proc)
    steps = [step["name"] for step in read_json(pipeline_dir / "pipeline.json")["steps"]]
    assert steps == ["adapt", "merge_adapt", "sft", "merge_sft", "dpo", "eval", "release"]
    ids = [job_id_of(pipeline_dir / step) for step in steps]
    for previous, step in zip(ids, ids[1:]):
        assert f"afterok:{previous}" in job(step).dependency

    # relaunched while queued or running: nothing is submitted again
    again = ok(cli(*args, cwd=tmp_path))
    assert "submitted job" not in again.stdout and "not submitted again" in again.stdout
    for step in steps:
        assert len(read_json(pipeline_dir / step / "job.json")["submissions"]) == 1

    info = wait(ids[-1], timeout=600)
    assert info.state == "COMPLETED", (pipeline_dir / "eval" / "logs" / "train.log").read_text(errors="replace")[-3000:]
    for step in steps:
        assert read_json(pipeline_dir / step / "status.json")["state"] == "COMPLETED", step
    # each step consumed the previous step's output
    assert (pipeline_dir / "sft" / "inputs" / "base_model").resolve() == (pipeline_dir / "merge_adapt" / "output" / "merged").resolve()
    assert (pipeline_dir / "merge_sft" / "inputs" / "adapter").resolve() == (pipeline_dir / "sft" / "output").resolve()
    assert (pipeline_dir / "dpo" / "inputs" / "base_model").resolve() == (pipeline_dir / "merge_sft" / "output" / "merged").resolve()
    assert (pipeline_dir / "merge_sft" / "output" / "merged" / "model.safetensors").is_file()
    # the pipeline ends with an evaluation of the DPO adapter on its base
    assert "peft=inputs/adapter" in (pipeline_dir / "eval" / "eval.json").read_text()
    assert "llamantino_smoke_it" in read_json(pipeline_dir / "eval" / "results.json")["scores"]
    assert "## Evaluation" in (pipeline_dir / "dpo" / "output" / "README.md").read_text()

    done = ok(cli(*args, cwd=tmp_path))
    # and is released: the model the eval scored, its scores in the card's model-index, nothing machine-local
    released = pipeline_dir / "release" / "release"
    assert_release_folder(released, read_json(pipeline_dir / "eval" / "results.json")["scores"], [tmp_path, pipeline_dir])

    done = ok(cli(*args, cwd=tmp_path))
    assert done.stdout.count(" skip ") == 7 and "submitted job" not in done.stdout
    status = ok(cli(str(pipeline_dir), verb="status", cwd=tmp_path)).stdout
    assert status.count("COMPLETED") == 7


def test_a_failing_step_cancels_the_steps_after_it(tmp_path):
    args = (f"hydra.searchpath=[file://{TESTS / 'conf'}]", "pipeline=tiny_failing", "hardware=local_slurm",
            "hardware.nodes=1", "launcher=slurm")
    pipeline_dir = run_dir_of(ok(cli(*args, cwd=tmp_path)))
    ids = {step: job_id_of(pipeline_dir / step) for step in ("adapt", "merge_adapt", "sft", "merge_sft", "dpo")}
    assert wait(ids["sft"], timeout=600).state == "FAILED"
    for step in ("merge_sft", "dpo"):
        info = wait(ids[step], timeout=120)
        assert info.state == "CANCELLED", info
    assert read_json(pipeline_dir / "sft" / "status.json")["state"] == "FAILED"
    assert "no_such_proj" in (pipeline_dir / "sft" / "logs" / "train.log").read_text(errors="replace")
    rows = {row["name"]: row for row in json.loads(ok(cli(str(pipeline_dir), "--json", verb="status",
                                                          cwd=tmp_path)).stdout)}
    assert rows["adapt"]["state"] == "COMPLETED" and rows["sft"]["state"].startswith("FAILED")
    assert rows["dpo"]["state"].startswith("CANCELLED") and "Dependency" in rows["dpo"]["state"]


def test_sweep_is_one_job_array_and_collects(tmp_path):
    # a cache of its own: the rows entry is made by this sweep (other tests share the default one)
    proc = ok(cli("-m", "stage.learning_rate=1e-3,3e-3", *SLURM, "hardware.nodes=1", *QUICK_SFT,
                  f"hardware.storage.cache={tmp_path / 'cache'}", cwd=tmp_path))
    assert proc.stdout.count("submitted job array") == 1 and "submitted job " not in proc.stdout.replace("job array", "")
    sweep_dir = run_dir_of(proc)
    # the points' SFT rows: one entry, prepared by one CPU job the array waits on
    entries = {yaml_key(sweep_dir / f"{index:03d}" / "axolotl.yaml") for index in (0, 1)}
    assert len(entries) == 1
    entry = Path(entries.pop()).expanduser()
    assert f"rows {entry.name[:12]}: submitted rows" in proc.stdout
    record = read_json(sweep_dir / "sweep.json")
    array_id = record["job_id"]
    assert "--array=0-1%4" in (sweep_dir / "job-array.sbatch").read_text(errors="replace")
    for index in (0, 1):
        info = wait(f"{array_id}_{index}")
        assert info.state == "COMPLETED", (sweep_dir / f"{index:03d}" / "logs" / "train.log").read_text(errors="replace")[-2000:]
        assert info.array_job_id == array_id
        log = (sweep_dir / f"{index:03d}" / "logs" / "train.log").read_text(errors="replace")
        assert f"prepared rows from {entry}" in log and "tokenising" not in log  # the GPU job tokenised nothing
    assert read_json(entry / "manifest.json")["key"] == entry.name
    out = ok(cli(str(sweep_dir), verb="collect", cwd=tmp_path)).stdout
    assert "STAGE.LEARNING_RATE" in out and "stage.max_steps=2" in out.splitlines()[0]  # varied: a column; shared: once
    import csv

    rows = list(csv.DictReader((sweep_dir / "collect.csv").read_text(errors="replace").splitlines()))
    assert [row["stage.learning_rate"] for row in rows] == ["0.001", "0.003"]
    assert all(row["final_loss"] for row in rows)  # final losses present
    # the curves come from the trainer's TensorBoard event files, by global step
    from llamantino.records.curves import event_files, loss_curve
    from llamantino.records.rundir import RunDir

    for index, row in enumerate(rows):
        point = RunDir(sweep_dir / f"{index:03d}")
        assert event_files(point), f"no event files in {point.path}"
        assert float(row["final_loss"]) == pytest.approx(loss_curve(point)[-1][1], abs=1e-4)
        assert [step for step, _ in loss_curve(point)] == [1, 2]
    assert (sweep_dir / "loss_curves.png").stat().st_size > 10_000


def test_usr1_checkpoints_requeues_and_resumes_from_the_checkpoint(tmp_path):
    # SLURM sends the batch shell USR1 `signal_lead_s` before the time limit (--signal=B:USR1@...), or at
    # preemption. The test sends that same signal itself once training is under way, so the outcome does
    # not depend on how fast this machine is (a time-limit race made this test flaky under load).
    proc = ok(cli(*SLURM, "hardware.nodes=1", "stage=adapt", "stage.max_steps=1500", "stage.micro_batch_size=1",
                  "stage.sequence_len=64", "stage.save_steps=null", "launcher.time=00:20:00",
                  "launcher.signal_lead_s=30", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    job_id = job_id_of(run_dir)
    script = (run_dir / "job.sbatch").read_text(errors="replace")
    assert "#SBATCH --signal=B:USR1@30" in script and "#SBATCH --requeue" in script
    from llamantino.records.logs import parse_losses

    train_log = run_dir / "logs" / "train.log"
    deadline = time.time() + 300
    while time.time() < deadline and job(job_id).state not in TERMINAL:
        if train_log.exists() and len(parse_losses(train_log.read_text(errors="replace"))) >= 20:
            break
        time.sleep(1)
    assert job(job_id).state == "RUNNING", train_log.read_text(errors="replace")[-3000:]
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    # SLURM's own record says when the job was requeued: its restart count goes up.
    deadline = time.time() + 180
    while time.time() < deadline and job(job_id).restarts != "1":
        time.sleep(1)
    info = job(job_id)
    batch_log = "".join(log.read_text(errors="replace") for log in sorted((run_dir / "logs").glob("*.out")))
    assert info.restarts == "1", f"{info}\n{batch_log}"
    # a requeued job waits ~2 minutes before it is eligible again; the test does not
    wait(job_id, timeout=60, until={"PENDING"})
    # A save cut short by a kill: a newer checkpoint folder without the completion marker. The restart
    # must move it aside and resume from the last complete one.
    complete = sorted((run_dir / "output").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert (complete / "llamantino_complete.json").is_file()
    cut_short = run_dir / "output" / f"checkpoint-{int(complete.name.split('-')[1]) + 7}"
    shutil.copytree(complete, cut_short)
    (cut_short / "llamantino_complete.json").unlink()
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    info = wait(job_id, timeout=420)
    assert info.restarts == "1"
    batch_log = "".join(log.read_text(errors="replace") for log in sorted((run_dir / "logs").glob("*.out")))
    train_log = (run_dir / "logs" / "train.log").read_text(errors="replace")
    assert info.state == "COMPLETED", batch_log + train_log[-3000:]
    assert "USR1" in batch_log and "checkpoint output/checkpoint-" in batch_log and "requeued" in batch_log
    assert "(restart 1)" in batch_log
    assert f"{cut_short.relative_to(run_dir)} is incomplete" in batch_log
    assert not cut_short.exists() and (run_dir / "output" / f"incomplete-{cut_short.name}.job-{job_id}-restart-1").is_dir()
    saved = int(batch_log.split("checkpoint output/checkpoint-")[1].split()[0])
    assert 20 <= saved < 1500
    # the restarted run resumed from that checkpoint instead of starting over
    assert f"resume from checkpoint at output/checkpoint-{saved}" in train_log
    assert read_json(run_dir / "status.json")["state"] == "COMPLETED"
    # one curve across both attempts, by global step: the replayed steps appear once
    from llamantino.records.curves import event_files, loss_curve
    from llamantino.records.rundir import RunDir

    assert len(event_files(RunDir(run_dir))) == 2  # one event file per attempt
    steps = [step for step, _ in loss_curve(run_dir)]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 1500


@pytest.mark.xdist_group("slurm_b")  # a second worker: the cluster has room for both
def test_injection_strings_are_quoted_and_never_run(tmp_path):
    env_canary = tmp_path / "pwned_env"
    # Hydra's override grammar takes these as quoted strings; they reach llamantino as plain data.
    proc = ok(cli(*SLURM, "hardware.nodes=1", *QUICK_SFT, "run.name='x$(touch pwned_name);b'",
                  f"+hardware.slurm.env.LLAMANTINO_CANARY='`touch {env_canary}`'", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    assert "x$(touch" in str(run_dir)
    script = run_dir / "job.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert f"export LLAMANTINO_CANARY='`touch {env_canary}`'" in script.read_text(errors="replace")
    assert "--job-name=llamantino-x__touch_" in script.read_text(errors="replace")
    info = wait(job_id_of(run_dir))
    assert info.state == "COMPLETED", (run_dir / "logs" / "train.log").read_text(errors="replace")[-2000:]
    assert not env_canary.exists() and not list(tmp_path.rglob("pwned_name"))
    assert "x$(touch pwned_name);b" in (run_dir / "config.yaml").read_text()  # kept as data


def test_offline_pipeline_prepares_its_corpus_as_an_array_first_and_a_sweep_reuses_it(tmp_path):
    from hub_mirror import build_mirror

    mirror = build_mirror(tmp_path / "mirror")
    store = (f"hardware.storage.hub_mirror={mirror}", f"hardware.storage.cache={tmp_path / 'cache'}")
    ok(cli(f"hydra.searchpath=[file://{TESTS / 'conf'}]", "pipeline=tiny_corpus", *SLURM, *store, "run.name=corpus",
           cwd=tmp_path))
    kinds = {path: read_json(path / "request.json").get("kind", "corpus")
             for path in (tmp_path / "cache" / "prepared").iterdir()}
    assert sorted(kinds.values()) == ["corpus", "rows"]  # the adapt step's corpus, the SFT step's rows
    entry = next(path for path, kind in kinds.items() if kind == "corpus")
    jobs = read_json(entry / "jobs.json")
    assert list(jobs) == ["scan", "dedup", "task", "finish"]  # a mirror needs no download
    for step in ("scan", "dedup", "task"):
        assert "#SBATCH --array=0-1" in (entry / f"prepare-{step}.sbatch").read_text()
    pipeline = tmp_path / "runs" / "pipelines" / "corpus"
    adapt = read_json(pipeline / "adapt" / "job.json")
    assert adapt["submissions"][-1]["dependency"] == f"afterok:{jobs['finish']}"
    for step in ("adapt", "merge", "sft"):
        info = wait(read_json(pipeline / step / "job.json")["job_id"], timeout=600)
        log = pipeline / step / "logs" / "train.log"
        assert info.state == "COMPLETED", (log.read_text(errors="replace")[-3000:] if log.exists() else step)
    assert wait(f"{jobs['task']}_0").state == "COMPLETED" and wait(f"{jobs['task']}_1").state == "COMPLETED"
    assert job(read_json(pipeline / "adapt" / "job.json")["job_id"]).nodes == "2"
    manifest = read_json(entry / "manifest.json")
    assert manifest["units"] and all(n > 0 for n in (s["blocks"] for s in manifest["sources"].values()))
    report = read_json(pipeline / "adapt" / "output" / "llamantino_data_report.json")
    assert set(report) == {"clean_mc4_it", "wikipedia_it"}
    # A sweep over the same data and budget finds the corpus complete: no prepare job, no dependency.
    units = {path.name: path.stat().st_mtime_ns for path in (entry / "units").iterdir()}
    sweep = ok(cli("-m", "stage.learning_rate=1e-3,3e-3", *SLURM, *store, "stage=adapt", "data=it_web_mix",
                   "stage.max_steps=3", "stage.sequence_len=64", "stage.micro_batch_size=2", cwd=tmp_path))
    assert "already prepared" in sweep.stdout and "submitted task" not in sweep.stdout
    assert read_json(entry / "jobs.json") == jobs and read_json(entry / "manifest.json") == manifest
    assert {path.name: path.stat().st_mtime_ns for path in (entry / "units").iterdir()} == units
    assert [path for path in (tmp_path / "cache" / "prepared").iterdir() if kinds.get(path) != "rows"] == [entry]
    array_id = read_json(run_dir_of(sweep) / "sweep.json")["job_id"]
    assert wait(f"{array_id}_0", timeout=600).state == "COMPLETED"


@pytest.mark.xdist_group("slurm_b")  # a second worker: the cluster has room for both
def test_offline_hub_reads_get_a_download_job_first_and_its_failure_cancels_the_run(tmp_path):
    # This machine has no network: the download job fails for real, and SLURM cancels what waits on it.
    proc = ok(cli(*SLURM, "hardware.nodes=1", "stage=sft", "data=ultrachat_ita", "stage.max_steps=2",
                  "hardware.prepare.download_partition=debug", f"hardware.storage.cache={tmp_path / 'cache'}",
                  cwd=tmp_path))
    entry = next((tmp_path / "cache" / "downloads").iterdir())
    download = read_json(entry / "jobs.json")["download"]
    assert read_json(entry / "request.json")["reads"][0]["repo"] == "mii-community/ultrafeedback-translated-ita"
    assert "#SBATCH --partition=debug" in (entry / "download.sbatch").read_text()
    run_dir = run_dir_of(proc)
    record = read_json(run_dir / "job.json")
    # the SFT rows are prepared after the download (by a job on the CPU side), the run after both
    rows_entry = next(path for path in (tmp_path / "cache" / "prepared").iterdir())
    rows_job = read_json(rows_entry / "jobs.json")["rows"]
    assert job(rows_job).dependency.startswith(f"afterok:{download}")
    assert sorted(record["submissions"][-1]["dependency"].split(":")[1:]) == sorted([download, rows_job])
    assert wait(download).state == "FAILED"
    assert wait(rows_job, timeout=120).state == "CANCELLED"
    assert wait(record["job_id"], timeout=120).state == "CANCELLED"
    log = "".join(path.read_text(errors="replace") for path in (entry / "logs").iterdir())
    assert "error: could not download dataset mii-community/ultrafeedback-translated-ita" in log
    assert not (entry / "done.json").exists()


@pytest.mark.xdist_group("slurm_b")  # a second worker: the cluster has room for both
def test_a_site_hardware_option_written_by_site_init_runs_a_whole_pipeline(tmp_path, monkeypatch):
    site = tmp_path / "site"
    ok(cli("init", "--name", "thiscluster", "--out", str(site), verb="site", cwd=tmp_path))
    option = (site / "hardware" / "thiscluster.yaml").read_text()
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0].rstrip("*")
    assert f"partition: {partition}" in option and "accelerator: cpu" in option
    # one documented way for every composition: the pipeline's steps compose hardware=thiscluster too
    monkeypatch.setenv("LLAMANTINO_CONFIG_PATH", f"{site}:{TESTS / 'conf'}")
    proc = ok(cli("pipeline=sft_merge", "hardware=thiscluster", "launcher=slurm", "run.name=site", cwd=tmp_path))
    pipeline = run_dir_of(proc)
    for step in ("sft", "merge"):
        info = wait(read_json(pipeline / step / "job.json")["job_id"], timeout=420)
        log = pipeline / step / "logs" / "train.log"
        assert info.state == "COMPLETED", log.read_text(errors="replace")[-3000:] if log.exists() else step
        assert read_json(pipeline / step / "provenance.json")["choices"]["hardware"] == "thiscluster"


@pytest.mark.xdist_group("slurm_b")  # a second worker: the cluster has room for both
def test_a_job_in_another_environment_fails_in_seconds_and_says_why(tmp_path):
    proc = ok(cli(*SLURM, "hardware.nodes=1", *QUICK_SFT, "launcher.submit=false", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    provenance = read_json(run_dir / "provenance.json")
    provenance["packages"]["torch"] = "1.0.0"
    (run_dir / "provenance.json").write_text(json.dumps(provenance))
    ok(cli(str(run_dir), "--launcher", "slurm", verb="launch", cwd=tmp_path))
    info = wait(job_id_of(run_dir), timeout=120)
    log = "".join(path.read_text(errors="replace") for path in (run_dir / "logs").glob("*.out"))
    assert info.state == "FAILED" and "torch" in log and "(validated 1.0.0)" in log
    assert read_json(run_dir / "status.json")["state"] == "FAILED"
    assert not (run_dir / "logs" / "train.log").exists()  # training never started
