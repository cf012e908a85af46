"""The error contract at every entry point, as a table: a usage error, a sync with nothing to upload
or no network, a refused composition or sweep, a cluster that does not answer all end in exactly
one ``error:`` line and exit 2, write nothing (Hydra's own ``multirun.yaml``, ``.hydra/`` and run
folders included) and submit nothing (tests/hostile.py).

Usage errors are discovered: every verb of the one command (``VERBS``) and every job command
(``JOB_COMMANDS``) is run with an unknown option and with no arguments at all.

``wandb`` stand-ins: ``sync`` runs ``python -m wandb sync``, so a stand-in ``wandb`` package first
on PYTHONPATH takes its place. Without network the real one waits for good (seen: still "setting up
run" after 60 s), but how long it waits depends on DNS and retries; a stand-in that sleeps forever
makes "hangs" deterministic and proves the time limit ends it, in seconds and without network.
One test below runs the real ``wandb`` against no network as well.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli, ok, run_dir_of
from hostile import assert_refused, hostile_folder

DRY = ["launcher=dry"]
HANG = {"PYTHONPATH": "{w}/stubs/hang"}  # the stand-in wandb that never finishes
FAIL = {"PYTHONPATH": "{w}/stubs/fail"}  # the stand-in wandb that fails with two lines of output

# (id, module or verb, arguments, text the error line must contain, extra environment)
ROWS = [
    # argparse's usage errors: one line with the command's one-line usage, never the multi-line usage
    ("main command unknown option", "llamantino", ["--nope"], "llamantino: unrecognized arguments: --nope", {}),
    ("main command bad --cfg", "llamantino", ["--cfg", "nope"], "argument --cfg/-c: invalid choice: 'nope'", {}),
    ("sweep unknown option", "llamantino", ["-m", "--nope", "stage.lora_r=8,16", *DRY],
     "unrecognized arguments: --nope", {}),
    ("recipe import without a recipe", "recipe", ["import"],
     "python -m llamantino recipe import: the following arguments are required: recipe (usage: ", {}),
    ("data unknown subcommand", "data", ["nope"], "argument command: invalid choice: 'nope'", {}),
    ("data check unknown option", "data", ["check", "{w}/x.jsonl", "--nope"], "unrecognized arguments: --nope", {}),
    ("site init without a name", "site", ["init", "--out", "{w}/site"],
     "python -m llamantino site init: the following arguments are required: --name", {}),
    ("plan mfu not a number", "plan", ["--mfu", "abc"], "argument --mfu: invalid float value: 'abc'", {}),
    ("status unknown option after the target", "status", ["{w}/dry_run", "--nope"],
     "unrecognized arguments: --nope", {}),
    ("finish exit code not a number", "llamantino.job.finish", ["{w}/dry_run", "--rc", "x"],
     "argument --rc: invalid int value: 'x'", {}),
    ("prepare unknown step", "llamantino.job.prepare", ["nope", "{w}/nowhere"], "argument step: invalid choice", {}),
    ("sync timeout not a number", "sync", ["{w}/wandb_run", "--timeout", "soon"], "invalid float value: 'soon'", {}),
    # sync: nothing to sync is an error; every upload has a time limit; a failed one is one line
    ("sync nothing", "sync", ["{w}/dry_run"], "nothing to sync", {}),
    ("sync dry run of nothing", "sync", ["{w}/dry_run", "--dry-run"], "nothing to sync", {}),
    ("sync offline folder without a run record", "sync", ["{w}/empty_wandb_run"], "nothing to sync", {}),
    ("sync zero timeout", "sync", ["{w}/wandb_run", "--timeout", "0"], "--timeout 0 must be a positive number", {}),
    ("sync infinite timeout", "sync", ["{w}/wandb_run", "--timeout", "inf"], "--timeout inf must be a positive", {}),
    ("sync without network hangs", "sync", ["{w}/wandb_run", "--timeout", "2"],
     "1 of 1 offline W&B run(s) not synced", HANG),
    ("sync upload fails", "sync", ["{w}/wandb_run"], "wandb sync failed (exit 1): wandb: ERROR network", FAIL),
    # Hydra writes before llamantino is asked: multirun.yaml, .hydra/, hydra.run.dir
    ("sweep point that does not compose", "llamantino", ["-m", "stage.lora_r=8,abc", *DRY], "stage.lora_r=abc", {}),
    ("sweep over an unknown option", "llamantino", ["-m", "model=tiny_llama,nope", *DRY], "model/nope", {}),
    ("sweep in Hydra's multirun folder", "llamantino", ["-m", "hydra.sweep.dir=multirun/2026-01-01/00-00-00",
                                                        "stage.lora_r=8,abc", *DRY], "stage.lora_r=abc", {}),
    ("refused run with a .hydra folder", "llamantino", ["hydra.output_subdir=.hydra", "stage.lora_r=0", *DRY],
     "stage.lora_r=0 must be at least 1", {}),
    ("refused run in Hydra's outputs folder", "llamantino", ["hydra.run.dir=outputs/2026-01-01/00-00-00",
                                                             "stage.lora_r=0", *DRY],
     "stage.lora_r=0 must be at least 1", {}),
]

HANGING_WANDB = """\
import os, subprocess, sys, time
# Like wandb's own service process: a helper that outlives nothing on its own and holds our output.
helper = subprocess.Popen(["sleep", "600"])
if os.environ.get("STUB_PIDFILE"):
    with open(os.environ["STUB_PIDFILE"], "w") as handle:
        handle.write(str(helper.pid))
time.sleep(600)
"""
FAILING_WANDB = """\
import sys
print("wandb: ERROR network error (ConnectionError), entering retry loop", file=sys.stderr)
print("wandb: ERROR giving up", file=sys.stderr)
sys.exit(1)
"""
SYNCING_WANDB = "print('wandb: syncing... done')\n"


def _stand_in(folder: Path, main: str) -> Path:
    (folder / "wandb").mkdir(parents=True, exist_ok=True)
    (folder / "wandb" / "__init__.py").write_text("")
    (folder / "wandb" / "__main__.py").write_text(main)
    return folder


def _with_offline_run(source: Path, dest: Path, record: bool = True) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    offline = dest / "wandb" / "offline-run-20260101_000000-abcd1234"
    offline.mkdir(parents=True)
    if record:
        (offline / "run-abcd1234.wandb").write_bytes(b":W&B\x00" + b"\x01" * 64)
    return dest


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("contract")
    dry = run_dir_of(ok(cli("launcher=dry", "stage.max_steps=1", cwd=w)))
    os.rename(dry, w / "dry_run")
    shutil.rmtree(w / "runs")  # a refused command must not make it again
    _with_offline_run(w / "dry_run", w / "wandb_run")
    _with_offline_run(w / "dry_run", w / "empty_wandb_run", record=False)
    _stand_in(w / "stubs" / "hang", HANGING_WANDB)
    _stand_in(w / "stubs" / "fail", FAILING_WANDB)
    _stand_in(w / "stubs" / "ok", SYNCING_WANDB)
    hang_bin = w / "hang_bin"  # SLURM clients that never answer
    hang_bin.mkdir()
    for name in ("sinfo", "sacctmgr"):
        (hang_bin / name).write_text("#!/bin/sh\nexec sleep 600\n")
        (hang_bin / name).chmod(stat.S_IRWXU)
    (w / "x.jsonl").write_text('{"text": "ciao"}\n')
    return hostile_folder(w)


def _env(work: Path, env: dict) -> dict:
    return {key: value.replace("{w}", str(work)) for key, value in env.items()}


def test_the_table_is_large_enough():
    assert len(ROWS) >= 14 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("name, module, args, needle, env", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_command_is_one_error_line_and_leaves_nothing(work, name, module, args, needle, env):
    assert_refused(work, module, args, needle, env=_env(work, env))


def _entry_points() -> list[tuple[str, str]]:
    from llamantino.cli.main import VERBS
    from llamantino.job import JOB_COMMANDS

    return ([(verb, f"python -m llamantino {verb}") for verb in VERBS]
            + [(f"llamantino.job.{name}", f"python -m llamantino.job.{name}") for name in JOB_COMMANDS])


@pytest.mark.parametrize("module, prog", _entry_points(), ids=[e[0] for e in _entry_points()])
def test_every_entry_point_ends_a_usage_error_in_one_line(work, module, prog):
    """An unknown option, and no arguments at all, at every verb and job command (discovered)."""
    proc = assert_refused(work, module, ["--nope"], f"{prog}: ")
    assert "(usage: " in proc.stderr
    if module == "plan":  # takes only optional overrides: with none it plans the default run, on a CPU
        assert_refused(work, module, [], "no GPU peak throughput")
    else:
        assert "(usage: " in assert_refused(work, module, [], f"{prog}").stderr


@pytest.mark.parametrize("args", [["--help"], ["import", "--help"]])
def test_help_still_prints_the_help_and_exits_0(work, args):
    proc = cli(*args, verb="recipe", cwd=work)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m llamantino recipe") and not proc.stderr
    proc = cli("--help", module="llamantino.job.finish", cwd=work)
    assert proc.returncode == 0 and "--rc RC" in proc.stdout


def test_no_module_builds_its_own_argument_parser():
    """Every entry point's parser is llamantino.argparsing.ArgumentParser (its usage errors are one line)."""
    import re

    pattern = re.compile(r"argparse\.ArgumentParser\s*\(|from\s+argparse\s+import[^\n]*\bArgumentParser\b")
    offenders = [path.relative_to(ROOT).as_posix()
                 for package in ("llamantino", "llamantino_plugin", "hydra_plugins", "benchmarks")
                 for path in sorted((ROOT / package).rglob("*.py")) if pattern.search(path.read_text())]
    assert offenders == []
    from llamantino.argparsing import ArgumentParser

    sub = ArgumentParser(prog="x").add_subparsers().add_parser("y")
    assert isinstance(sub, ArgumentParser)  # subparsers inherit the class


def test_a_sync_that_times_out_ends_wandbs_helper_processes_too(work, tmp_path):
    """The stand-in starts a helper holding its output, as wandb's service does: killing the process
    group ends both, and the command returns at the time limit, not when the helper would."""
    pidfile = tmp_path / "helper.pid"
    started = time.monotonic()
    assert_refused(work, "sync", ["{w}/wandb_run", "--timeout", "2"], "did not finish in 2 s (no network?",
                   env=_env(work, {**HANG, "STUB_PIDFILE": str(pidfile)}))
    assert time.monotonic() - started < 60
    helper = int(pidfile.read_text())
    for _ in range(50):
        try:
            if Path(f"/proc/{helper}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break  # a zombie: ended, waiting for init to reap it
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"wandb's helper process {helper} still runs after the time limit")


def test_a_sync_that_uploads_says_so_and_exits_0(work):
    proc = ok(cli(str(work / "wandb_run"), verb="sync", cwd=work, env={"PYTHONPATH": str(work / "stubs" / "ok")}))
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("synced ") and lines[-1] == "1 offline W&B run(s) synced", proc.stdout


def test_the_real_wandb_without_network_ends_in_one_line(work, tmp_path):
    """No stand-in: a real offline run, a made-up API key, no network (none here but package indexes)."""
    folder = tmp_path / "real"
    shutil.copytree(work / "dry_run", folder, symlinks=True)
    offline_run = "import wandb; run = wandb.init(project='p', mode='offline'); run.log({'loss': 1.0}); run.finish()"
    subprocess.run([sys.executable, "-c", offline_run], cwd=folder, check=True, capture_output=True, timeout=120,
                   env={**os.environ, "WANDB_DIR": str(folder), "WANDB_SILENT": "true"})
    started = time.monotonic()
    proc = cli(str(folder), "--timeout", "5", verb="sync", cwd=tmp_path,
               env={"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "1 of 1 offline W&B run(s) not synced" in lines[0], proc.stderr
    assert time.monotonic() - started < 60


def test_a_refused_sweep_leaves_no_folders_outside_the_working_folder(work, tmp_path):
    """run.output_root elsewhere: the folders Hydra's sweeper made there on the way go too."""
    outside = tmp_path / "outside"
    outside.mkdir()
    assert_refused(work, "llamantino", ["-m", "stage.lora_r=8,abc", *DRY, f"run.output_root={outside}/deep/runs"],
                   "stage.lora_r=abc", watch=(outside,))


def test_a_sweep_that_started_keeps_hydras_record(work, tmp_path):
    proc = ok(cli("-m", "stage.lora_r=8,16", "stage.max_steps=1", *DRY, cwd=tmp_path))
    sweep = run_dir_of(proc)
    assert (sweep / "multirun.yaml").is_file() and (sweep / "000").is_dir()


def test_a_cluster_that_does_not_answer_is_one_error_line(work, monkeypatch):
    """sinfo that never answers: site init ends at the query's time limit with one line."""
    from llamantino.launchers import cluster

    monkeypatch.setattr(cluster, "QUERY_TIMEOUT_S", 1)
    started = time.monotonic()
    assert_refused(work, "site", ["init", "--name", "here", "--out", "{w}/site"], "no answer in 1 s",
                   env={"PATH": f"{work / 'hang_bin'}{os.pathsep}{work / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    assert time.monotonic() - started < 30
