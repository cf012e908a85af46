"""``llamantino release``: a run released on the command line, and the push up to the upload call.

The upload itself needs the Hub, which this machine cannot reach: everything before it is tested
for real (the run, the folder, the options, the token, the network check), and the SLURM push job
is submitted to the real cluster, waits on the release job and, on nodes without network, stops
with the one error line before any upload.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import cli, ok, read_json, run_dir_of, until

pytestmark = pytest.mark.e2e
QUICK = ("stage.max_steps=2", "stage.saves_per_epoch=null")
NO_TOKEN = {"HF_TOKEN": ""}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A quick SFT run, released with ``llamantino release <run>`` (stage=release run here)."""
    folder = tmp_path_factory.mktemp("release-cli")
    sft = run_dir_of(ok(cli(*QUICK, f"run.output_root={folder}", cwd=folder)))
    proc = ok(cli(str(sft), verb="release", cwd=folder))
    release_line = [line for line in proc.stdout.splitlines() if line.startswith("release: ")]
    assert release_line, proc.stdout
    release = Path(release_line[0].split(": ", 1)[1])
    return sft, release.parent


def test_releasing_a_run_writes_and_runs_a_release_beside_it(released):
    sft, release_run = released
    assert release_run.parent.parent == sft.parent.parent  # the same output root
    assert read_json(release_run / "status.json")["state"] == "COMPLETED"
    plan = read_json(release_run / "release.json")
    assert plan["model_run"] == str(sft) and plan["lineage"] == [str(sft)] and plan["eval_runs"] == []
    assert (release_run / "release" / "README.md").is_file()


def test_push_needs_the_token_from_the_environment(released, tmp_path):
    _, release_run = released
    proc = cli(str(release_run), "--push", "someone/tiny-it", verb="release", cwd=tmp_path, env=NO_TOKEN)
    assert proc.returncode == 2 and "HF_TOKEN is not set" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("repo", ["../../etc", "someone/tiny it", "someone/x;rm -rf ~", "a/b/c", "-rf/x", "someone/"])
def test_a_push_target_that_is_not_one_repository_is_refused(repo, released, tmp_path):
    _, release_run = released
    proc = cli(str(release_run), f"--push={repo}", verb="release", cwd=tmp_path, env={"HF_TOKEN": "hf_test"})
    assert proc.returncode == 2 and "is not a Hub repository id" in proc.stderr, proc.stderr


def test_without_network_the_push_stops_before_any_upload(released, tmp_path):
    from llamantino.job.push import Upload, plan_upload
    from llamantino.records.rundir import RunDir

    _, release_run = released
    folder = release_run / "release"
    # everything up to the upload call: the one call it would make
    assert plan_upload(RunDir(release_run), "someone/tiny-it", True, "v1") == \
        Upload(folder=folder, repo_id="someone/tiny-it", private=True, revision="v1")
    before = sorted(path.relative_to(folder) for path in folder.rglob("*"))
    proc = cli(str(release_run), "--push", "someone/tiny-it", verb="release", cwd=tmp_path,
               env={"HF_TOKEN": "hf_not_a_real_token", "HF_HUB_OFFLINE": "0"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot reach the Hub at https://huggingface.co" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # upload_large_folder never started: it would have left its resume records in the folder
    assert sorted(path.relative_to(folder) for path in folder.rglob("*")) == before
    assert "hf_not_a_real_token" not in proc.stdout + proc.stderr
    offline = cli(str(release_run), "--push", "someone/tiny-it", verb="release", cwd=tmp_path,
                  env={"HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "HF_HUB_OFFLINE is set" in offline.stderr


def test_push_and_release_options_are_checked(released, tmp_path):
    sft, release_run = released
    lone = cli(str(release_run), "--private", verb="release", cwd=tmp_path)
    assert lone.returncode == 2 and "go with --push" in lone.stderr
    unnamed = cli(str(release_run), "--push", verb="release", cwd=tmp_path, env={"HF_TOKEN": "hf_x"})
    assert unnamed.returncode == 2 and "records no release.repo_id" in unnamed.stderr
    over = cli(str(release_run), "release.what=adapter", verb="release", cwd=tmp_path)
    assert over.returncode == 2 and "is a release already" in over.stderr
    shard = cli("stage=release", f"run.input_model={sft}", "release.max_shard_size=5 GB", "launcher=dry",
                f"run.output_root={tmp_path}", cwd=tmp_path)
    assert shard.returncode == 2 and "release.max_shard_size='5 GB' must be a size" in shard.stderr
    assert not list(tmp_path.glob("release-*"))


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_on_nodes_without_network_the_push_is_a_job_that_waits_on_the_release(released, tmp_path):
    """local_slurm's nodes have no network (hardware.offline): the push goes to the download
    partition as a job after the release job; there it stops at the network check."""
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.fail("no SLURM cluster answers: run `slurm/local-cluster.sh up` (as root) first")
    sft, _ = released
    args = ("stage=release", f"run.input_model={sft}", "hardware=local_slurm", "hardware.nodes=1", "launcher=slurm",
            "hardware.prepare.download_partition=debug", f"run.output_root={tmp_path}")
    release_run = run_dir_of(ok(cli(*args, cwd=tmp_path)))
    release_job = read_json(release_run / "job.json")["job_id"]
    env = {"HF_TOKEN": "hf_secret_never_written"}
    proc = ok(cli(str(release_run), "--push", "someone/tiny-it", verb="release", cwd=tmp_path, env=env))
    assert "submitted push job" in proc.stdout, proc.stdout
    script = (release_run / "push.sbatch").read_text()
    assert "--partition=debug" in script and "llamantino.job.push" in script and "someone/tiny-it" in script
    assert "hf_secret_never_written" not in script
    push_job = proc.stdout.split("submitted push job ", 1)[1].split()[0]
    if "afterok" in proc.stdout:  # submitted while the release job was queued or running
        assert f"afterok:{release_job}" in proc.stdout

    def ended(job_id):
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
        state = out.stdout.strip().split("\n")[0] if out.stdout.strip() else ""
        return state if state and state not in ("PENDING", "RUNNING") else None

    assert until(lambda: ended(release_job), 600, "the release job ended") == "COMPLETED"
    until(lambda: ended(push_job), 300, "the push job ended")
    log = until(lambda: next(iter((release_run / "logs").glob(f"llamantino-push-{push_job}.out")), None), 30,
                "the push job's log")
    text = log.read_text()
    assert "error: cannot reach the Hub" in text or "error: HF_HUB_OFFLINE is set" in text, text[-2000:]
    assert "hf_secret_never_written" not in text
