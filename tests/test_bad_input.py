"""Bad input: a clear message naming the option, key, file or line; nothing written; nothing started."""

from __future__ import annotations

import pytest

from conftest import cli


def assert_refused(proc, *needles, code=None):
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code
    text = proc.stderr + proc.stdout
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-3000:]}"


def nothing_written(root):
    return not (root / "runs").exists() or not any((root / "runs").rglob("provenance.json"))


def test_unknown_option_lists_valid_ones(tmp_path):
    proc = cli("model=llama3_8bb", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "llama3_8bb", "llama3_8b_instruct", "tiny_llama")
    assert nothing_written(tmp_path)


def test_wrong_type_names_the_key(tmp_path):
    proc = cli("stage.lora_r=abc", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "stage.lora_r", "abc")
    assert nothing_written(tmp_path)


def test_misspelt_key_names_the_key(tmp_path):
    proc = cli("stage.lora_rr=8", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "lora_rr")
    assert nothing_written(tmp_path)


def test_misspelt_key_in_a_group_file_fails_at_composition(tmp_path):
    conf = tmp_path / "conf" / "hardware"
    conf.mkdir(parents=True)
    (conf / "typo.yaml").write_text("name: typo\naccelerator: cpu\ngpus_per_nod: 4\n")
    proc = cli(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hardware=typo", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "gpus_per_nod")
    assert nothing_written(tmp_path)


def test_choice_fields_fail_at_composition_naming_key_and_choices(tmp_path):
    proc = cli("stage.excess_length_strategy=cut", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "stage.excess_length_strategy", "'cut'", "[drop, truncate, raise]", code=2)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert nothing_written(tmp_path)


def test_axolotl_rejection_shows_axolotls_message_and_key(tmp_path):
    proc = cli("+stage.axolotl.dataloader_prefetch_factor=many", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "Axolotl 0.19.0 rejected", "dataloader_prefetch_factor", "valid integer", code=2)
    assert nothing_written(tmp_path)


def test_axolotl_cross_field_rule_is_reported(tmp_path):
    proc = cli("hardware=a100_80gb_x1", "stage.gradient_checkpointing=false",
               "+stage.axolotl.activation_offloading=true", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "activation_offloading requires gradient_checkpointing", code=2)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("override, needle", [
    ("stage.lr_scheduler=cosinee", "Invalid value 'cosinee', expected one of [linear, cosine,"),
    ("stage.micro_batch_size=0", "stage.micro_batch_size=0 must be at least 1"),
    ("stage.lora_dropout=1.5", "stage.lora_dropout=1.5"),
    ("stage.adapter=dora", "Invalid value 'dora', expected one of [lora, qlora]; full_key: stage.adapter"),
    ("hardware.nodes=0", "hardware.nodes=0 must be at least 1"),
    ("launcher.signal_lead_s=-5", "launcher.signal_lead_s=-5 must be at least 10"),
])
def test_values_axolotl_accepts_but_would_fail_on_are_refused(tmp_path, override, needle):
    proc = cli(override, "launcher=dry", cwd=tmp_path)
    assert_refused(proc, needle, code=2)
    assert nothing_written(tmp_path)


def test_key_axolotl_would_drop_silently_is_refused(tmp_path):
    proc = cli("+stage.axolotl.lora_rrr=8", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "lora_rrr", "drop", code=2)
    assert nothing_written(tmp_path)


def test_missing_data_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    proc = cli(f"data.path={missing}", "launcher=local", cwd=tmp_path)
    assert_refused(proc, str(missing), "not found", code=2)
    assert nothing_written(tmp_path)
    assert "running" not in proc.stdout  # no training started


def test_empty_data_file_names_the_path(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = cli(f"data.path={empty}", "launcher=local", cwd=tmp_path)
    assert_refused(proc, str(empty), "empty", code=2)
    assert nothing_written(tmp_path)


def test_malformed_line_names_file_line_and_is_strict_by_default(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"istruzione": "a", "risposta": "b"}\n{"istruzione": "a", "risposta": \n')
    proc = cli(f"data.path={bad}", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, f"{bad}:2", "malformed JSON", code=2)
    assert nothing_written(tmp_path)


def test_stage_and_data_format_must_match(tmp_path):
    proc = cli("stage=dpo", "data=it_instructions_sample", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "stage dpo trains on preferences", "it_instructions_sample", code=2)
    assert nothing_written(tmp_path)


def test_full_finetune_on_cpu_can_refuse_instead_of_falling_back(tmp_path):
    proc = cli("stage.on_unsupported=error", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "full fine-tuning", "stage.on_unsupported=error", code=2)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b"])
def test_run_names_that_are_not_folder_names_are_refused(tmp_path, name):
    proc = cli(f"run.name={name}", "launcher=dry", cwd=tmp_path)
    assert_refused(proc, "run.name", code=2)
    assert nothing_written(tmp_path)


def test_local_launch_on_gpu_hardware_without_gpus_refuses(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA GPUs; the check is about machines without them")
    proc = cli("hardware=a100_80gb_x1", "launcher=local", cwd=tmp_path)
    assert_refused(proc, "hardware=a100_80gb_x1 needs 1 node(s) x 1 GPUs", "0 CUDA GPU(s)", code=2)
    assert nothing_written(tmp_path)
