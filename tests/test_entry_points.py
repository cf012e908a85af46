"""Every entry point once as a real process: interpreter start, argument parsing, exit code, one error line.

The other tests call the same ``main`` functions in process (tests/conftest.py); these make sure the
``python -m`` modules and the console script are wired to them.
"""

from __future__ import annotations

import pytest

from conftest import cli, command, ok, run_dir_of


def one_error_line(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_main_command_renders_a_run(tmp_path):
    proc = ok(cli("launcher=dry", cwd=tmp_path, subprocess=True))
    assert (run_dir_of(proc) / "axolotl.yaml").is_file()


def test_main_command_reports_hydras_errors_as_one_line(tmp_path):
    one_error_line(cli("stage.lora_r=abc", cwd=tmp_path, subprocess=True), "stage.lora_r", "abc")
    one_error_line(cli("model=llama3_8bb", cwd=tmp_path, subprocess=True), "llama3_8bb", "tiny_llama")
    one_error_line(cli("stage.lora_r=8)", cwd=tmp_path, subprocess=True), "stage.lora_r=8)")
    assert not (tmp_path / "runs").exists()


def console(*args, cwd):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "llamantino"
    if not script.is_file():
        pytest.fail(f"the llamantino console script is not installed beside {sys.executable} (pip install -e .)")
    return subprocess.run([script, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_console_script_help_lists_every_verb_and_every_group(tmp_path):
    from llamantino.cli.main import VERBS

    proc = console("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    verbs = [line.split()[0] for line in proc.stdout.split("verbs:\n", 1)[1].split("\n\n", 1)[0].splitlines()]
    assert verbs == list(VERBS)
    for group in ("model", "data", "stage", "hardware", "launcher", "eval", "pipeline", "experiment", "tracking"):
        assert f"  {group}: " in proc.stdout, group


def test_console_script_version_is_llamantinos_and_the_stacks(tmp_path):
    from importlib.metadata import version

    proc = console("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"llamantino {version('llamantino')} (Python ") and f"axolotl {version('axolotl')}" in line
    assert "Hydra" not in line and "hydra-core 1.4" in line


def test_console_script_runs_a_verb(tmp_path):
    run = run_dir_of(ok(cli("launcher=dry", cwd=tmp_path)))
    proc = console("status", str(run), cwd=tmp_path)
    assert proc.returncode == 0 and "WRITTEN" in proc.stdout, proc.stdout + proc.stderr


def test_a_bare_word_that_is_no_verb_names_the_verbs(tmp_path):
    one_error_line(console("statu", str(tmp_path), cwd=tmp_path), "'statu' is not a verb (status, runs, logs, cancel, launch,", "--help")
    one_error_line(cli("train", cwd=tmp_path), "'train' is not a verb", "key=value")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("module, args, needle", [
    ("data", ["list"], "clean_mc4_it"),
    ("recipe", ["list"], "llamantino2_7b_adapt"),
    ("plan", ["experiment=llamantino2_7b_adapt"], "GPU hours"),
])
def test_commands_answer(tmp_path, module, args, needle):
    assert needle in ok(cli(*args, **command(module), cwd=tmp_path, subprocess=True)).stdout


@pytest.mark.parametrize("module, args, needle", [
    ("status", ["nowhere"], "nowhere is not a llamantino run, pipeline, sweep or study directory"),
    ("collect", ["."], "is not a llamantino run, pipeline, sweep or study directory"),
    ("compare", ["."], "no results.json found"),
    ("launch", ["nowhere"], "nowhere is not a llamantino run directory"),
    ("llamantino.job.evaluate", ["."], "eval.json not found"),
    ("llamantino.job.finish", [".", "--rc", "0"], "provenance.json not found"),
    ("plan", ["--calibrate", "no-such-run"], "not a llamantino run directory"),
    ("llamantino.job.envcheck", ["."], "provenance.json not found"),
    ("llamantino.job.prepare", ["finish", "."], "request.json not found"),
    ("llamantino.job.download", ["."], "request.json not found"),
    ("site", ["init", "--name", "x", "--out", ".", "--partition", "nope"], "--partition 'nope'"),
])
def test_commands_end_user_errors_in_one_line(tmp_path, module, args, needle):
    one_error_line(cli(*args, **command(module), cwd=tmp_path, subprocess=True), needle)
