"""Every entry point once as a real process: interpreter start, argument parsing, exit code, one error line.

The other tests call the same ``main`` functions in process (tests/conftest.py); these make sure the
``python -m`` modules and the console script are wired to them.
"""

from __future__ import annotations

import pytest

from conftest import cli, ok, run_dir_of


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


def test_console_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "llamantino"
    if not script.is_file():
        pytest.fail(f"the llamantino console script is not installed beside {sys.executable} (pip install -e .)")

    proc = subprocess.run([script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "llamantino" in proc.stdout


@pytest.mark.parametrize("module, args, needle", [
    ("llamantino.data", ["list"], "clean_mc4_it"),
    ("llamantino.recipe", ["list"], "llamantino2_7b_adapt"),
    ("llamantino.plan", ["experiment=llamantino2_7b_adapt"], "GPU hours"),
])
def test_commands_answer(tmp_path, module, args, needle):
    assert needle in ok(cli(*args, module=module, cwd=tmp_path, subprocess=True)).stdout


@pytest.mark.parametrize("module, args, needle", [
    ("llamantino.status", ["nowhere"], "nowhere is not a llamantino run, pipeline or sweep directory"),
    ("llamantino.collect", ["."], "sweep.json not found"),
    ("llamantino.compare", ["."], "no results.json found"),
    ("llamantino.launch", ["nowhere"], "nowhere is not a llamantino run directory"),
    ("llamantino.evaluate", ["."], "eval.json not found"),
    ("llamantino.finish", [".", "--rc", "0"], "provenance.json not found"),
    ("llamantino.plan", ["stage=merge"], "does not train"),
    ("llamantino.jobcheck", ["."], "provenance.json not found"),
    ("llamantino.prepare_corpus", ["finish", "."], "request.json not found"),
    ("llamantino.hub_fetch", ["."], "request.json not found"),
    ("llamantino.site", ["init", "--name", "x", "--out", ".", "--partition", "nope"], "--partition 'nope'"),
])
def test_commands_end_user_errors_in_one_line(tmp_path, module, args, needle):
    one_error_line(cli(*args, module=module, cwd=tmp_path, subprocess=True), needle)
