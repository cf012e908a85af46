"""Unit tests of the small pieces everything relies on: quoting, SLURM times, losses, run directories,
secrets, the typed config reader, error lines."""

from __future__ import annotations

import os
import subprocess

import pytest

from llamantino.errors import ConfigError, RunDirError, entry, one_line
from llamantino.config.schema import time_seconds
from llamantino.records.logs import parse_losses
from llamantino.render.sbatch import Shell, job_name, shell_value
from llamantino.records.rundir import RunDir, remove_stale_partials, write_atomic
from llamantino.config.schema import LlamantinoConfig, StageConfig, from_plain, to_plain
from llamantino.orchestrate.sharing import secrets_in


# --- shell quoting ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("plain", "plain"),
    ("${WORK}/hf_home", "${WORK}/hf_home"),
    ("$HOME/x y", "$HOME/x y"),
    ("a'b", "a'b"),
    ("x$(touch pwned)", "x$(touch pwned)"),
    ("`id`; rm -rf /", "`id`; rm -rf /"),
])
def test_shell_value_keeps_variables_live_and_everything_else_literal(value, expected, tmp_path):
    quoted = shell_value(value)
    assert isinstance(quoted, Shell)
    env = {"WORK": "/w", "HOME": "/h", "PATH": os.environ["PATH"]}
    echoed = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, text=True, env=env,
                            cwd=tmp_path).stdout
    assert echoed == expected.replace("${WORK}", "/w").replace("$HOME", "/h")
    assert not (tmp_path / "pwned").exists()


def test_job_names_are_reduced_to_safe_characters():
    assert job_name("x$(touch y);b") == "llamantino-x__touch_y__b"
    assert len(job_name("n" * 500)) == 120


# --- SLURM times --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("30", 30 * 60), ("01:30", 90), ("02:00:00", 7200), ("1-00:00:00", 86400), ("4-00:00:00", 4 * 86400),
    ("1-02", 26 * 3600), ("1-02:03", 26 * 3600 + 180), ("00:00:45", 45),
])
def test_slurm_time_parsing(text, seconds):
    assert time_seconds(text) == seconds


# --- losses from logs ---------------------------------------------------------------------------


def test_losses_are_read_from_task_zero_only_in_order():
    log = "\n".join([
        "{'loss': '2.5', 'grad_norm': '1.0', 'learning_rate': '1e-4', 'epoch': '0.1'}",
        "1: {'loss': '9.9', 'learning_rate': '1e-4', 'epoch': '0.1'}",
        "0: {'loss': 2.25, 'learning_rate': 1e-4, 'epoch': 0.2}",
        "{'eval_loss': '3.0'}",
        "progress\r{'loss': '1.0e-01', 'learning_rate': '1e-4', 'epoch': '0.3'}",
    ])
    assert parse_losses(log) == [2.5, 2.25, 0.1]


# --- run directories ----------------------------------------------------------------------------


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(TypeError):
        write_atomic(target, {"a.txt": "x", "b.txt": 3})  # not text: fails half way
    assert list(tmp_path.iterdir()) == []


def test_a_written_directory_appears_whole_and_is_never_overwritten(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write({"config.yaml": "a: 1\n", "inputs/x.jsonl": b"{}\n"}, {"inputs/base_model": "/nowhere"})
    assert (run / "inputs/x.jsonl").read_bytes() == b"{}\n" and (run / RunDir.LOGS).is_dir()
    assert os.readlink(run / RunDir.MODEL_LINK) == "/nowhere"
    with pytest.raises(RunDirError, match="already exists"):
        run.write({"config.yaml": "b: 2\n"}, {})
    assert (run / "config.yaml").read_text() == "a: 1\n"


def test_partials_of_killed_processes_are_removed_by_the_next_write(tmp_path):
    stale, fresh = tmp_path / ".old.abc.partial", tmp_path / ".new.def.partial"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (0, 0))
    write_atomic(tmp_path / "next", {"x": "y"})
    assert not stale.exists() and fresh.exists()  # a partial of a process still writing stays
    assert remove_stale_partials(tmp_path / "missing") == []


def test_broken_run_files_are_named(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / RunDir.PROVENANCE).write_text("{not json")
    with pytest.raises(RunDirError, match="provenance.json is not readable JSON"):
        run.provenance()
    (tmp_path / RunDir.CONFIG).write_text("stage: [\n")
    with pytest.raises(RunDirError, match="config.yaml: not a readable YAML file"):
        run.config()


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    {"env": {"HF_TOKEN": "abc"}},
    {"env": {"WANDB_API_KEY": "x"}},
    {"env": {"aws_secret_access_key": "x"}},
    {"notes": "hf_" + "a" * 34},
    {"notes": "key sk-" + "b" * 40},
    {"notes": "ghp_" + "c" * 36},
    {"notes": "AKIA" + "D" * 16},
    {"x": ["ok", "-----BEGIN RSA PRIVATE KEY-----"]},
    {"notes": "export TOKEN=abc"},
])
def test_secrets_are_found(data):
    assert secrets_in(data)


@pytest.mark.parametrize("data", [
    {"env": {"TOKENIZERS_PARALLELISM": "false"}},
    {"stage": {"max_tokens": 5, "hf_use_auth_token": True}},
    {"model": {"revision": "0123456789abcdef0123456789abcdef01234567"}},
    {"env": {"HF_HOME": "${WORK}/hf_home", "NCCL_IB_HCA": "mlx5"}},
    {"notes": "tokenizer trained on Italian text"},
])
def test_ordinary_settings_are_not_secrets(data):
    assert secrets_in(data) == []


# --- the typed config reader --------------------------------------------------------------------


def test_config_round_trips_as_plain_data(compose):
    cfg = compose("stage=dpo", "model=llama3_8b")
    again = from_plain(LlamantinoConfig, to_plain(cfg))
    assert again == cfg and again.stage.rl == "dpo" and type(again.stage.rl).__name__ == "RL"


@pytest.mark.parametrize("data, message", [
    ({"lora_r": "8"}, "stage.lora_r='8' must be an integer"),
    ({"adapter": "dora"}, "stage.adapter='dora' is not valid; use one of: lora, qlora"),
    ({"lora_rr": 8}, "stage.lora_rr is not a config key"),
    ({"lora_r": 0}, "stage.lora_r=0 must be at least 1"),
    ({"notes": "x"}, "stage.notes is not a config key"),
])
def test_the_reader_names_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        from_plain(StageConfig, {"name": "s", **data}, "stage")


def test_interpolations_are_read_as_text():
    stage = from_plain(StageConfig, {"name": "${oc.env:HOME}"}, "stage")
    assert stage.name == "${oc.env:HOME}"


# --- error lines --------------------------------------------------------------------------------


def test_one_line_collapses_hydra_style_messages():
    text = "Error merging override x=1\nInvalid value\n    full_key: x\n    object_type=Foo\n"
    assert one_line(text) == "Error merging override x=1; Invalid value; full_key: x"


def test_entry_turns_user_errors_into_one_line_and_exit_2(capsys):
    def fails(argv):
        raise ConfigError("stage.lora_r=0 must be at least 1")

    assert entry(fails) == 2
    assert capsys.readouterr().err == "error: stage.lora_r=0 must be at least 1\n"

    def bug(argv):
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        entry(bug)


def test_run_records_round_trip_through_their_files(tmp_path):
    """provenance.json and status.json are written and read back as the same typed records; a record
    of another layout or a malformed one names its file."""
    import json

    from llamantino.errors import RunDirError
    from llamantino.records.jobstate import JobState, RunStatus
    from llamantino.records.provenance import (BaseModelRef, ModelSource, OutputKind, Provenance, RunOutput,
                                               SourceKind)
    from llamantino.records.rundir import RunDir

    run = RunDir(tmp_path)
    output = RunOutput(kind=OutputKind.adapter, path="output", adapter="lora",
                       base_model=BaseModelRef(ref="inputs/base_model", local="/models/base"))
    record = Provenance(stage_type="train", llamantino="0.1.0", created="now", git={"commit": None, "dirty": None},
                        packages={"torch": None}, python="3.11.7", cuda=None, command=["x"], overrides=["a=b"],
                        choices={"model": "tiny_llama"}, experiment=None,
                        model=ModelSource(kind=SourceKind.run, run_dir="/runs/a", output=output), data=None,
                        method=None, notices=[], output=output, env={"A": "1"})
    run.write_provenance(record)
    assert run.provenance() == record
    assert run.provenance().model.folder().as_posix() == "/runs/a/output"
    status = RunStatus(state=JobState.TIMEOUT, exit_code="0:15", job_id="12_3", losses={"first": 1.0})
    run.write_status(status)
    assert run.read_status() == status and run.read_status().state.failed
    data = json.loads((tmp_path / "provenance.json").read_text())
    (tmp_path / "provenance.json").write_text(json.dumps({**data, "record": 1}))
    with pytest.raises(RunDirError, match="record of another llamantino version"):
        run.provenance()
    (tmp_path / "provenance.json").write_text(json.dumps({**data, "output": {"kind": "weights"}}))
    with pytest.raises(RunDirError, match="provenance.json: provenance.output.kind='weights' is not valid"):
        run.provenance()


def test_job_states_parse_and_rank():
    from llamantino.records.jobstate import JobState, worst

    assert JobState.parse("CANCELLED by 0") is JobState.CANCELLED and JobState.parse("") is JobState.UNKNOWN
    assert JobState.PENDING.active and JobState.OUT_OF_MEMORY.failed and JobState.COMPLETED.done
    assert worst(["COMPLETED", "RUNNING", "COMPLETED"]) is JobState.RUNNING
    assert worst(["COMPLETED", "RUNNING", "TIMEOUT"]) is JobState.TIMEOUT
    assert worst([]) is None
