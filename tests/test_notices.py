"""Notices that are true and said once; errors that say the fix. Real commands (launcher=dry)."""

from __future__ import annotations

import re

import yaml

from conftest import cli, ok, run_dir_of

SMOKE = ("stage=adapt", "model=tiny_llama", "hardware=cpu", "launcher=dry")


def notices(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("notice:")]


def test_a_warmup_longer_than_the_run_is_shortened_and_said_once(tmp_path):
    proc = ok(cli(*SMOKE, "stage.max_steps=5", cwd=tmp_path))
    run = run_dir_of(proc)
    recipe = yaml.safe_load((run / "axolotl.yaml").read_text())
    assert recipe["max_steps"] == 5 and recipe["warmup_steps"] < 5
    said = [line for line in notices(proc) if "stage.warmup_steps" in line]
    assert len(said) == 1 and "stage.warmup_steps=100" in said[0] and "stage.max_steps=5" in said[0], notices(proc)
    assert said[0].removeprefix("notice: ") in (run / "axolotl.yaml").read_text()  # the recipe header says it too
    # adaptation trains its own QLoRA (no fallback): the model's fallback learning rate does not apply,
    # nor its epochs (the run counts steps); its modules to save do
    assert "adapter_learning_rate" not in proc.stdout and "num_epochs" not in proc.stdout, notices(proc)
    assert recipe["learning_rate"] == 2e-4
    assert any("stage.lora_modules_to_save" in line for line in notices(proc))


def test_a_warmup_that_fits_the_run_is_kept_silently(tmp_path):
    proc = ok(cli(*SMOKE, "stage.max_steps=101", cwd=tmp_path))
    assert yaml.safe_load((run_dir_of(proc) / "axolotl.yaml").read_text())["warmup_steps"] == 100
    assert not any("warmup" in line for line in notices(proc))


def test_the_fallback_learning_rate_is_said_where_it_applies(tmp_path):
    # sft asks for full fine-tuning; on the CPU it falls back to LoRA, where adapter_learning_rate is used
    proc = ok(cli("stage=sft", "model=tiny_llama", "hardware=cpu", "launcher=dry", cwd=tmp_path))
    recipe = yaml.safe_load((run_dir_of(proc) / "axolotl.yaml").read_text())
    assert recipe["learning_rate"] == 0.01
    assert any("stage.adapter_learning_rate=0.01" in line for line in notices(proc)), notices(proc)


def test_a_warmup_longer_than_the_run_is_refused_on_request(tmp_path):
    proc = cli(*SMOKE, "stage.max_steps=5", "stage.on_unsupported=error", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "stage.warmup_steps=100" in lines[0] and "stage.max_steps=5" in lines[0]
    assert "stage.on_unsupported=error" in lines[0] and "stage.warmup_steps=null" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("provenance.json"))


def test_a_sweep_says_each_notice_once_with_its_points(tmp_path):
    proc = ok(cli("-m", *SMOKE, "stage.max_steps=5,6,500", cwd=tmp_path))
    said = notices(proc)
    assert len(said) == len(set(said)), said
    common = [line for line in said if line.startswith("notice: (3 of 3 points) ")]
    assert any("optimizer paged_adamw_8bit needs CUDA" in line for line in common), said
    assert any("model tiny_llama sets stage.lora_modules_to_save" in line for line in common), said
    # the warm-up notice names each point's own max_steps: said once for each point it applies to
    warmups = sorted(line for line in said if "stage.warmup_steps=100" in line)
    assert len(warmups) == 2, said
    assert re.match(r"notice: \(1 of 3 points: 000\) .*stage\.max_steps=5\)", warmups[0]), warmups
    assert re.match(r"notice: \(1 of 3 points: 001\) .*stage\.max_steps=6\)", warmups[1]), warmups
    assert len(said) == len(common) + 2


def test_an_unset_variable_in_the_output_root_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("WORK", raising=False)
    proc = cli("stage=adapt", "model=tiny_llama", "hardware=leonardo_booster", "launcher=dry", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "run.output_root='${WORK}/llamantino/runs'" in lines[0] and "$WORK" in lines[0]
    assert "export WORK=<folder>" in lines[0] and "pass run.output_root=<folder>" in lines[0]
    assert "hardware.storage.runs" in lines[0]
    assert not (tmp_path / "runs").exists()
