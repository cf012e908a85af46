"""Experiment tracking, end to end (issue 24): the tiny model trained for real with each tracker, read
back with the tracker's own client or loader.

MLflow against a real ``mlflow server`` (SQLite backend) started here, and against the default store
(``<run.output_root>/mlflow.db``): params, legal tags (the overrides as key/value pairs) and the loss
history. W&B offline: a requeued job (the stage command run again in its run directory, as a requeue
does) continues the same run id. W&B online without a key and a missing tracker package: one error
line before anything is written. TensorBoard: each point of a 2-point sweep has an HParams session.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli, ok, read_json, run_dir_of, until

PY = sys.executable
SHORT = ("stage.max_steps=3", "stage.saves_per_epoch=null")
#: MLflow's tag and param keys: alphanumerics, underscores, dashes, periods, spaces and slashes.
LEGAL_KEY = re.compile(r"[0-9A-Za-z_\-. /]{1,250}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on localhost with a SQLite backend; its URI."""
    import urllib.request

    port = free_port()
    folder = tmp_path / "server"
    folder.mkdir()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen([PY, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/store.db",
                               "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        until(healthy, 120, "the MLflow server answering /health")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def requeue(run: Path) -> subprocess.CompletedProcess:
    """What a requeued job does: the stage command again, in the run directory, with the run's environment."""
    env = read_json(run / "provenance.json")["env"]
    return subprocess.run([PY, "-m", "axolotl.cli.train", "axolotl.yaml"], cwd=run, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env})


def the_mlflow_run(uri: str, run: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("llamantino")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    recorded = read_json(run / "tracking_run.json")["mlflow_run_id"]
    assert runs[0].info.run_id == recorded
    return client, runs[0]


def check_mlflow_run(uri: str, run: Path, steps: list[int]):
    client, found = the_mlflow_run(uri, run)
    assert found.info.status == "FINISHED"
    params, tags = found.data.params, found.data.tags
    assert float(params["learning_rate"]) == pytest.approx(3e-4) and params["max_steps"] == "3"
    assert all(LEGAL_KEY.fullmatch(key) for key in tags), sorted(tags)
    assert not any("=" in key for key in tags)
    assert tags["stage.learning_rate"] == "3e-4" and tags["stage.max_steps"] == "3"
    assert (tags["model"], tags["data"], tags["stage"]) == ("tiny_llama", "it_instructions_sample", "sft")
    assert not any(key.startswith(("tracking", "hydra", "run.output_root")) for key in tags)
    assert tags["mlflow.runName"] == found.info.run_name and found.info.run_name.endswith(run.name)
    history = client.get_metric_history(found.info.run_id, "loss")
    assert [point.step for point in history] == steps
    assert all(0 < point.value < 20 for point in history)
    return found


@pytest.mark.e2e
def test_mlflow_against_a_real_tracking_server(mlflow_server, tmp_path):
    proc = ok(cli("tracking=mlflow", f"tracking.uri={mlflow_server}", *SHORT, "stage.learning_rate=3e-4",
                  f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path))
    run = run_dir_of(proc)
    first = check_mlflow_run(mlflow_server, run, [1, 2, 3])
    # A requeued job reattaches to the same run; its parameters are not logged again.
    again = requeue(run)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second = check_mlflow_run(mlflow_server, run, [1, 2, 3, 1, 2, 3])
    assert second.info.run_id == first.info.run_id and second.data.params == first.data.params


@pytest.mark.e2e
def test_mlflow_default_store_is_a_sqlite_file_under_the_output_root(tmp_path):
    root = tmp_path / "runs"
    proc = ok(cli("tracking=mlflow", *SHORT, "stage.learning_rate=3e-4", f"run.output_root={root}", cwd=tmp_path))
    run = run_dir_of(proc)
    assert f"mlflow_tracking_uri: sqlite:///{root}/mlflow.db" in (run / "axolotl.yaml").read_text()
    assert (root / "mlflow.db").is_file()
    check_mlflow_run(f"sqlite:///{root}/mlflow.db", run, [1, 2, 3])
    from mlflow import MlflowClient

    experiment = MlflowClient(f"sqlite:///{root}/mlflow.db").get_experiment_by_name("llamantino")
    assert experiment.artifact_location == (root / "mlartifacts").as_uri()  # beside the store, not in a run


@pytest.mark.parametrize("uri, why", [("file:./mlruns", "MLflow 3 no longer writes folder stores"),
                                      ("./mlruns", "MLflow 3 no longer writes folder stores"),
                                      ("ftp://host/x", "must be an MLflow server"),
                                      ("http://host:5000/$HOME", "percent-encode")])
def test_mlflow_uris_mlflow_cannot_use_are_refused(uri, why, tmp_path):
    proc = cli("tracking=mlflow", f"tracking.uri={uri}", f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path)
    assert proc.returncode == 2 and why in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_a_missing_tracker_package_is_one_error_before_anything_is_written(tmp_path):
    """A Python where ``import mlflow`` fails (a real subprocess; the shim hides the installed package)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['mlflow'] = None  # as if not installed\n")
    hidden = subprocess.run([PY, "-c", "import mlflow"], env={**os.environ, "PYTHONPATH": str(shim)},
                            capture_output=True, text=True)
    assert hidden.returncode != 0 and "ModuleNotFoundError" in hidden.stderr
    proc = cli("tracking=mlflow", f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path,
               env={"PYTHONPATH": str(shim)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "mlflow package" in lines[0] and "pip install 'llamantino[tracking]'" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_wandb_online_without_a_key_is_refused_before_anything_is_written(tmp_path):
    proc = cli("tracking=wandb", f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path,
               env={"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "WANDB_API_KEY" in lines[0] and "tracking.mode=offline" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_a_requeued_wandb_offline_run_keeps_one_run_id(tmp_path):
    proc = ok(cli("tracking=wandb", "tracking.mode=offline", *SHORT, "stage.learning_rate=3e-4",
                  f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path, env={"WANDB_API_KEY": ""}))
    run = run_dir_of(proc)
    env = read_json(run / "provenance.json")["env"]
    tags = env["WANDB_TAGS"].split(",")
    assert "stage.learning_rate:3e-4" in tags and "model:tiny_llama" in tags
    assert all(len(tag) <= 64 and "tracking" not in tag and str(tmp_path) not in tag for tag in tags), tags
    assert env["WANDB_NAME"].endswith(run.name) and env["WANDB_RUN_GROUP"] == run.parent.name
    assert (env["WANDB_JOB_TYPE"], env["WANDB_RESUME"]) == ("sft", "allow")
    run_id = read_json(run / "tracking_run.json")["wandb_run_id"]
    again = requeue(run)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and {folder.name.rsplit("-", 1)[1] for folder in offline} == {run_id}
    assert all((folder / f"run-{run_id}.wandb").is_file() for folder in offline)
    assert read_json(run / "tracking_run.json")["wandb_run_id"] == run_id


@pytest.mark.e2e
def test_tensorboard_hparams_tabulate_a_sweep(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    proc = ok(cli("-m", "stage.learning_rate=1e-4,3e-4", "stage.max_steps=2", "stage.saves_per_epoch=null",
                  f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path))
    sweep = run_dir_of(proc)
    mux = EventMultiplexer().AddRunsFromDirectory(str(sweep))  # what `tensorboard --logdir <sweep>` reads
    mux.Reload()
    sessions = {}
    for run, tags in mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        if metadata.SESSION_START_INFO_TAG in tags:
            info = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
            sessions[run] = info.hparams
    assert sorted(sessions) == ["000/output/runs", "001/output/runs"], sorted(sessions)
    rates = sorted(hparams["stage.learning_rate"].number_value for hparams in sessions.values())
    assert rates == pytest.approx([1e-4, 3e-4])
    assert all(hparams["stage.max_steps"].number_value == 2 for hparams in sessions.values())
    for run in sessions:  # the metric the table shows beside them
        last = mux.Tensors(run, "loss/last")
        assert len(last) == 1 and 0 < float(tensor_util.make_ndarray(last[0].tensor_proto)) < 20
    assert not any("output_root" in key for hparams in sessions.values() for key in hparams)


def test_tags_are_legal_key_value_pairs_without_paths_or_tracker_settings():
    from llamantino.config.tracking import mlflow_tags, override_pairs, wandb_tags

    overrides = ["tracking=wandb", "tracking.mode=offline", "hydra.sweep.dir=/x", "run.output_root=/scratch/me/runs",
                 "run.input_model=/scratch/me/base", "launcher=slurm", "stage.learning_rate=2e-4", "model=llama3_8b",
                 "+stage.axolotl.weird(key)=1", "stage.notes=" + "x" * 900,
                 "+hardware.slurm.env.MY_TOKEN=s3cret", "hardware.storage.hf_home=/scratch/me/hf"]
    pairs = override_pairs(overrides)
    assert pairs["stage.learning_rate"] == "2e-4" and pairs["model"] == "llama3_8b"
    assert pairs["stage.axolotl.weird_key_"] == "1" and len(pairs["stage.notes"]) == 500
    assert not any(key.startswith(("tracking", "hydra", "run.", "launcher", "hardware.")) for key in pairs)
    tags = mlflow_tags({"model": "m"}, overrides, ["baseline", "team:nlp"])
    assert tags["baseline"] == "" and tags["team"] == "nlp" and all(LEGAL_KEY.fullmatch(key) for key in tags)
    listed = wandb_tags({"model": "m"}, overrides, ["baseline"])
    assert "stage.learning_rate:2e-4" in listed and "baseline" in listed
    assert all(len(tag) <= 64 and "," not in tag and "/scratch" not in tag and "tracking" not in tag for tag in listed)


def test_each_sweep_point_and_pipeline_step_has_its_own_name_and_its_group():
    from llamantino.config.tracking import tracking_identity

    root = Path("/runs")
    assert tracking_identity("sft-m-d", root / "sft-m-d" / "20261203-1530-ab12") == (
        "sft-m-d-20261203-1530-ab12", "sft-m-d")
    assert tracking_identity("sft-m-d", root / "sweeps" / "20261203-1530" / "003") == (
        "sft-m-d-20261203-1530-003", "sft-m-d-20261203-1530")
    assert tracking_identity("llamantino2-adapt", root / "pipelines" / "llamantino2" / "adapt") == (
        "llamantino2-adapt", "llamantino2")
