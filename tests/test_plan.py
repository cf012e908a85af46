"""The planner's arithmetic against hand-computed cases (numbers worked out here, not by the code)."""

from __future__ import annotations

import pytest

from conftest import cli

from llamantino.orchestrate.costs import plan


def test_llamantino2_7b_adaptation(compose):
    p = plan(compose("experiment=llamantino2_7b_adapt"))
    # 25,000 steps x 8 rows x 1 accumulation x 12 GPUs (3 nodes x 4) x 1,024 tokens
    assert p["tokens"] == 2_457_600_000
    # QLoRA 4NT + 2NT recompute (gradient checkpointing) = 6 x 6.74e9 x 2.4576e9
    assert p["flops"] == pytest.approx(9.9385344e19)
    # / (312e12 x 0.25) / 3600 s
    assert p["gpu_hours"] == pytest.approx(353.93, abs=0.01)
    assert p["wall_clock_hours"] == pytest.approx(29.49, abs=0.01)  # / 12 GPUs
    assert p["node_hours"] == pytest.approx(88.48, abs=0.01)  # x 3 nodes
    assert p["budget_hours"] == pytest.approx(2831.4, abs=0.1)  # x 32 cores
    assert (p["jobs"], p["requeues"]) == (2, 1)  # 29.5 h > the 24 h of QoS normal


def test_epoch_based_full_finetune_with_fsdp(compose):
    p = plan(compose("experiment=llamantino2_chat_13b_sft"))
    assert p["tokens"] == 130_000 * 5 * 1024  # rows x epochs x sequence_len
    assert p["flops"] == pytest.approx(8 * 13.0e9 * 665_600_000)  # full 6NT + recompute 2NT
    assert p["gpu_hours"] == pytest.approx(8 * 13.0e9 * 665_600_000 / (312e12 * 0.40) / 3600)
    assert (p["method"], p["distributed"]) == ("full", "fsdp")
    assert p["state_memory_gb"] == pytest.approx(13.0 * 16 / 8 * 1.2 + 2, abs=0.05)
    assert p["memory_per_gpu_gb"] == pytest.approx(p["state_memory_gb"] + p["activation_gb"], abs=0.11)


def test_dpo_counts_both_answers_and_the_reference(compose):
    p = plan(compose("experiment=anita_8b_dpo"), mfu=0.5)
    trained_rows = 44_200 - 442  # 1% held out for evaluation, as ANITA's train_test_split(test_size=0.01)
    assert p["tokens"] == trained_rows * 2 * 2 * 1024  # rows x 2 epochs x (chosen + rejected) x sequence_len
    assert p["flops"] == pytest.approx((4 + 2 + 2) * 8.03e9 * trained_rows * 2 * 2048)
    assert p["gpu_hours"] == pytest.approx(p["flops"] / (312e12 * 0.5) / 3600)
    assert p["time_limit"] == "4-00:00:00" and p["jobs"] == 1


def test_unknown_dataset_size_is_asked_for(compose):
    from llamantino.errors import ConfigError

    with pytest.raises(ConfigError, match="data.num_rows"):
        plan(compose("stage=sft", "data=culturax_it", "model=llama2_7b", "hardware=leonardo_booster"))


def test_cli_prints_its_assumptions(tmp_path):
    proc = cli("experiment=llamantino2_7b_adapt", verb="plan", cwd=tmp_path)
    assert proc.returncode == 0
    for needle in ("2.458e+09", "6·N·T", "25% model FLOPs utilisation", "GPU hours     354", "needs 2 jobs"):
        assert needle in proc.stdout
