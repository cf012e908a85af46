"""The planner's arithmetic against hand-computed cases (numbers worked out here, not by the code)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import cli

from llamantino.config.method import JOB_STARTUP_S as STARTUP_S
from llamantino.orchestrate.costs import plan
from llamantino.stages.eval import EVAL_MFU
from llamantino.orchestrate.plans import calibrate, plan_command


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


# --- pipelines, sweeps, eval/merge/release, billing, calibration (issue 24) ----------------------

A100 = 312e12
LLAMA2_7B = 6.74e9


def test_pipeline_plan_sums_its_steps():
    p = plan_command(["pipeline=llamantino2", "model=llama2_7b", "hardware=leonardo_booster"])
    steps = {job["step"]: job for job in p["steps"]}
    assert list(steps) == ["adapt:prepare", "adapt", "merge", "sft:prepare", "sft", "release"]
    adapt = steps["adapt"]
    # 25,000 steps x 8 x 1 x 4 GPUs (one node) x 1,024 tokens; QLoRA 4NT + recompute 2NT at 25% MFU
    assert adapt["tokens"] == 819_200_000
    assert adapt["gpu_hours"] == pytest.approx(6 * LLAMA2_7B * 819_200_000 / (A100 * 0.25) / 3600)  # ~118
    assert 100 < adapt["gpu_hours"] < 130
    assert (adapt["nodes"], adapt["gpus"], adapt["partition"], adapt["node_share"]) == (1, 4, "boost_usr_prod", 1.0)
    # full fine-tune with FSDP: 130,000 rows x 3 epochs x 1,024 tokens, 6NT + 2NT at 40%
    assert steps["sft"]["gpu_hours"] == pytest.approx(8 * LLAMA2_7B * 130_000 * 3 * 1024 / (A100 * 0.40) / 3600)
    # merge: one GPU of the node, the bf16 model read and written at 1 GB/s after the start-up
    merge_hours = (STARTUP_S + 2 * 2 * 6.74) / 3600
    assert steps["merge"]["wall_clock_hours"] == pytest.approx(merge_hours)
    assert (steps["merge"]["gpus"], steps["merge"]["node_share"]) == (1, 0.25)
    assert steps["merge"]["budget_hours"] == pytest.approx(merge_hours * 0.25 * 32)
    assert steps["release"]["gpus"] == 0 and steps["release"]["gpu_hours"] == 0
    prepare = steps["adapt:prepare"]
    assert (prepare["partition"], prepare["gpu_hours"], prepare["node_share"]) == ("dcgp_usr_prod", 0.0, None)
    # the SFT rows, tokenised once by one CPU task: at most 130,000 rows x 1,024 tokens
    rows = steps["sft:prepare"]
    assert (rows["partition"], rows["gpu_hours"], rows["tasks"], rows["tokens"]) == ("dcgp_usr_prod", 0.0, 1, 130_000 * 1024)
    assert rows["entry"] == steps["sft"]["rows"]["key"] and rows["corpus"] is None
    assert rows["budget_hours"] == pytest.approx(rows["wall_clock_hours"] * rows["cpus_per_node"])
    for key in ("gpu_hours", "budget_hours", "node_hours", "wall_clock_hours"):
        assert p["totals"][key] == pytest.approx(sum(job[key] for job in p["steps"]))
    assert all(job["formula"] for job in p["steps"])


def test_pipeline_step_overrides_reach_their_step_only():
    p = plan_command(["pipeline=llamantino2", "model=llama2_7b", "hardware=leonardo_booster",
                      '+pipeline.adapt=["stage.max_steps=1000"]'])
    steps = {job["step"]: job for job in p["steps"]}
    assert steps["adapt"]["tokens"] == 1000 * 8 * 4 * 1024
    assert steps["sft"]["tokens"] == 130_000 * 3 * 1024


def test_eval_is_costed_by_forward_flops_over_its_tasks():
    p = plan_command(["stage=eval", "eval=ita_leaderboard", "model=llama3_8b", "hardware=leonardo_booster"])
    (job,) = p["steps"]
    # hub tasks: 10,000 items assumed x 4 choices x 150 tokens x (0+1, 0+1, 5+1 shots)
    tokens = 10_000 * 4 * 150 * (1 + 1 + 6)
    assert job["tokens"] == tokens and "assumed" in job["formula"]
    compute_hours = 2 * 8.03e9 * tokens / (4 * A100 * EVAL_MFU) / 3600  # data-parallel on the node's 4 GPUs
    load_hours = (STARTUP_S + 8.03 * 2) / 3600
    assert job["wall_clock_hours"] == pytest.approx(compute_hours + load_hours)
    assert job["gpu_hours"] == pytest.approx(4 * (compute_hours + load_hours))
    # the project's own task: its items counted from its data file (16 questions)
    smoke = plan_command(["stage=eval", "eval=local_smoke", "model=llama2_7b", "hardware=leonardo_booster"])["steps"][0]
    assert smoke["tokens"] == 16 * 4 * 150 and "its data file" in smoke["formula"]


def test_merge_of_a_model_too_large_for_one_gpu_runs_in_host_memory(tmp_path):
    proc = cli("stage=merge", "model=llama2_70b", "hardware=leonardo_booster", verb="plan", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "merge" in proc.stdout and "read and written" in proc.stdout
    p = plan_command(["stage=merge", "model=llama2_70b", "hardware=leonardo_booster"])
    assert p["steps"][0]["gpus"] == 0 and p["steps"][0]["wall_clock_hours"] == pytest.approx((STARTUP_S + 4 * 69.0) / 3600)


def test_sweep_plans_every_point_and_throttles_the_array(tmp_path):
    args = ["experiment=llamantino2_7b_adapt", "stage.learning_rate=1e-4,2e-4"]
    one_at_a_time = plan_command(args + ["launcher.array_parallelism=1"], multirun=True)
    assert one_at_a_time["points"] == 2
    points = [job for job in one_at_a_time["steps"] if job["trains"]]
    assert len(points) == 2 and [o[1] for o in one_at_a_time["overrides"]] == ["stage.learning_rate=0.0001",
                                                                              "stage.learning_rate=0.0002"]
    point_hours = points[0]["wall_clock_hours"]
    prepare_hours = one_at_a_time["array"]["prepare_hours"]  # one corpus shared by both points
    assert [job["kind"] for job in one_at_a_time["steps"]].count("prepare") == 1
    assert one_at_a_time["totals"]["gpu_hours"] == pytest.approx(2 * points[0]["gpu_hours"])
    assert one_at_a_time["totals"]["wall_clock_hours"] == pytest.approx(prepare_hours + 2 * point_hours)
    # SFT points of one data and sequence length share one rows entry: one rows job; a second length, a second
    rows = plan_command(["stage=sft", "model=llama2_7b", "hardware=leonardo_booster",
                         "stage.learning_rate=1e-5,2e-5"], multirun=True)
    assert [job["kind"] for job in rows["steps"]].count("prepare") == 1
    lengths = plan_command(["stage=sft", "model=llama2_7b", "hardware=leonardo_booster",
                            "stage.sequence_len=512,1024"], multirun=True)
    assert [job["kind"] for job in lengths["steps"]].count("prepare") == 2
    # boost_qos_lprod holds 3 nodes: one 3-node point at a time, whatever the array's %N
    lprod = plan_command(args + ["hardware.slurm.qos=boost_qos_lprod"], multirun=True)
    assert lprod["array"]["parallel"] == 1
    parallel = plan_command(args, multirun=True)  # %4, QoS normal (64 nodes): both points at once
    assert parallel["array"]["parallel"] == 4
    assert parallel["totals"]["wall_clock_hours"] == pytest.approx(prepare_hours + point_hours)
    # end to end, as a user types it
    proc = cli("-m", *args, verb="plan", cwd=tmp_path, subprocess=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "sweep of 2 points" in proc.stdout and "one job array, %4 at once" in proc.stdout


def test_a_sweep_of_pipelines_is_refused(tmp_path):
    proc = cli("-m", "pipeline=llamantino2", "model=llama2_7b,llama2_13b", "hardware=leonardo_booster",
               verb="plan", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: a sweep of pipelines is not supported")


def test_whole_node_billed_for_one_gpu_is_said_with_the_cheaper_shapes():
    rows, job = plan_command(["experiment=anita_8b_dpo"])["steps"]
    assert rows["kind"] == "prepare" and rows["entry"] == job["rows"]["key"]
    assert job["gpus"] == 1 and job["node_share"] == 1.0
    (notice,) = [n for n in job["notices"] if "billed for the whole node" in n]
    assert "uses 1 of its 4 GPUs" in notice
    assert "hardware.gpus_per_node=4" in notice and "hardware.cpus_per_node=8 hardware.slurm.mem=123500M" in notice
    quarter = plan_command(["experiment=anita_8b_dpo", "hardware.cpus_per_node=8", "hardware.slurm.mem=123500M"])
    _, cheaper = quarter["steps"]
    assert cheaper["node_share"] == pytest.approx(0.25)
    assert cheaper["budget_hours"] == pytest.approx(job["budget_hours"] / 4)
    assert not [n for n in cheaper["notices"] if "whole node" in n]
    full = plan_command(["experiment=anita_8b_dpo", "hardware.gpus_per_node=4"])["steps"][-1]
    assert full["wall_clock_hours"] == pytest.approx(job["wall_clock_hours"] / 4)
    assert full["budget_hours"] == pytest.approx(job["budget_hours"] / 4)  # same tokens, 4 GPUs, one node bill
    adapt = plan_command(["experiment=llamantino2_7b_adapt"])["steps"][-1]
    assert not [n for n in adapt["notices"] if "whole node" in n]


# --- --calibrate with a real finished run -------------------------------------------------------


def _as_if_on(run: Path, tmp_path: Path, hardware: str) -> Path:
    """A copy of a finished run whose recorded config says it trained on ``hardware``."""
    from llamantino.config.compose import compose_config
    from llamantino.config.schema import to_plain

    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["hardware"] = to_plain(compose_config([f"hardware={hardware}"]).hardware)
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def _trainer_scalar(run: Path, tag: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for path in sorted((run / "output" / "runs").glob("*/events.out.tfevents.*")):  # the trainer's folder
        events = EventAccumulator(str(path))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            return events.Scalars(tag)[-1].value
    raise AssertionError(f"no {tag} in {run}'s event files")


def test_calibrate_refuses_a_run_without_a_gpu_peak(default_job, tmp_path):
    _, run = default_job
    proc = cli("--calibrate", str(run), "experiment=llamantino2_7b_adapt", verb="plan", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --calibrate") and "hardware cpu, which has no GPU peak" in proc.stderr


def test_calibrate_measures_the_mfu_of_a_finished_run(default_job, tmp_path):
    _, run = default_job
    copy = _as_if_on(run, tmp_path, "a100_80gb_x1")
    samples_per_s = _trainer_scalar(copy, "train/train_samples_per_second")
    config = yaml.safe_load((copy / "config.yaml").read_text())
    # the default job: LoRA (the CPU fallback, recorded in provenance) with gradient checkpointing: 6·N·T
    assert json.loads((copy / "provenance.json").read_text())["method"]["adapter"] == "lora"
    assert config["stage"]["gradient_checkpointing"] is True
    tokens_per_s = samples_per_s * config["stage"]["sequence_len"]
    expected = 6 * config["model"]["params_b"] * 1e9 * tokens_per_s / (A100 * 1)
    measured = calibrate(copy)
    assert measured.value == pytest.approx(expected, rel=1e-6)
    assert measured.tokens_per_s == pytest.approx(tokens_per_s, rel=1e-6)
    proc = cli("--calibrate", str(copy), "experiment=llamantino2_7b_adapt", "--json", verb="plan", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (adapt,) = [job for job in json.loads(proc.stdout)["steps"] if job["trains"]]
    assert adapt["mfu"] == pytest.approx(expected, rel=1e-6)
    assert adapt["gpu_hours"] == pytest.approx(adapt["flops"] / (A100 * expected) / 3600, rel=1e-6)
    assert f"calibrated from {copy}" in adapt["mfu_source"] and "tokens/s measured" in adapt["mfu_source"]
    text = cli("--calibrate", str(copy), "experiment=llamantino2_7b_adapt", verb="plan", cwd=tmp_path).stdout
    assert f"MFU           {expected:.3%} model FLOPs utilisation of 312 TFLOP/s bf16 peak per GPU: calibrated from {copy}" in text


@pytest.mark.parametrize("value", [float("nan"), -5.0, 1e300, 1e8])
def test_calibrate_refuses_hostile_trainer_records(default_job, tmp_path, value):
    from torch.utils.tensorboard import SummaryWriter

    _, run = default_job
    copy = _as_if_on(run, tmp_path, "a100_80gb_x1")
    shutil.rmtree(copy / "output" / "runs")
    writer = SummaryWriter(str(copy / "output" / "runs" / "hostile"))
    writer.add_scalar("train/train_samples_per_second", value, 120)
    writer.close()
    proc = cli("--calibrate", str(copy), "experiment=llamantino2_7b_adapt", verb="plan", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
    assert "train_samples_per_second" in proc.stderr or "outside (0, 1]" in proc.stderr  # 1e8 samples/s: MFU > 1


@pytest.mark.parametrize("elapsed", ["NaN", "-3", "1e308", "\"soon\""])
def test_calibrate_refuses_hostile_status_records(default_job, tmp_path, elapsed):
    _, run = default_job
    copy = _as_if_on(run, tmp_path, "a100_80gb_x1")
    shutil.rmtree(copy / "output" / "runs")  # no trainer metrics: the status' elapsed time is what is left
    status = json.loads((copy / "status.json").read_text())
    text = json.dumps({**status, "elapsed_s": 0}).replace('"elapsed_s": 0', f'"elapsed_s": {elapsed}')
    (copy / "status.json").write_text(text)
    proc = cli("--calibrate", str(copy), "experiment=llamantino2_7b_adapt", verb="plan", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:") and "status" in proc.stderr


def test_a_mixture_of_experts_is_costed_by_its_active_parameters_and_sized_by_all(compose):
    """Mixtral-8x7B on Leonardo (4 x A100 64 GB): by hand, full fine-tuning needs 46.7B x 16 bytes / 4 x 1.2
    + 2 = 226 GB per GPU, so the SFT trains LoRA sharded by FSDP: 46.7 x 2 / 4 x 1.2 + 2 = 30.0 GB, which fits
    64 GB. FLOPs count the 12.9B parameters a token goes through (2 of 8 experts), not the 46.7B."""
    p = plan(compose("model=mixtral_8x7b", "stage=sft", "hardware=leonardo_booster"))
    assert (p["method"], p["distributed"], p["gpus"]) == ("lora", "fsdp", 4)
    assert p["state_memory_gb"] == pytest.approx(46.7 * 2 / 4 * 1.2 + 2, abs=0.05)
    assert p["memory_per_gpu_gb"] < 64
    assert p["flops"] == pytest.approx(6 * 12.9e9 * p["tokens"])  # LoRA 4NT + recompute 2NT, N active
    assert any("needs ~226 GB/GPU" in notice for notice in p["notices"])
    # The same model planned as if dense: the same memory, FLOPs in the ratio of the parameter counts.
    dense = plan(compose("model=mixtral_8x7b", "stage=sft", "hardware=leonardo_booster",
                         "model.experts=null", "model.active_params_b=null"))
    assert dense["state_memory_gb"] == p["state_memory_gb"]
    assert p["flops"] / dense["flops"] == pytest.approx(12.9 / 46.7)
    # QLoRA adaptation: 46.7 x 0.55 x 1.2 + 2 = 32.8 GB replicated on each GPU (DDP), no sharding needed.
    adapt = plan(compose("model=mixtral_8x7b", "stage=adapt", "hardware=leonardo_booster"))
    assert (adapt["method"], adapt["distributed"]) == ("qlora", "ddp")
    assert adapt["state_memory_gb"] == pytest.approx(46.7 * 0.55 * 1.2 + 2, abs=0.05)


def test_a_mixture_of_experts_is_merged_and_evaluated_with_all_its_parameters(tmp_path):
    from llamantino.config.method import model_gpus

    proc = cli("stage=eval", "model=mixtral_8x7b", "hardware=leonardo_booster", verb="plan", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(N = 12.9B active of 46.7B)" in proc.stdout  # forward FLOPs from the active parameters
    assert model_gpus(46.7, 64) == 2  # 46.7B x 2 bytes x 1.2 = 112 GB: two 64 GB GPUs hold the whole model
    assert "1x2 GPU" in proc.stdout
    text = cli("stage=sft", "model=mixtral_8x7b", "hardware=leonardo_booster", verb="plan",
               cwd=tmp_path).stdout
    assert "46.7B parameters in all, 12.9B active per token" in text
    assert "46.7B x 2 bytes (lora) / 4 GPUs x 1.2 + 2 GB = 30.0 GB" in text
