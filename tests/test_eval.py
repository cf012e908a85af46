"""The eval stage: lm-evaluation-harness on a run's output; results beside the published scores."""

from __future__ import annotations

import json

import pytest

from conftest import cli, ok, read_json, run_dir_of

LEONARDO = ("hardware=leonardo_booster", "launcher=slurm", "hardware.slurm.account=IscrC_EXAMPLE", "run.output_root=runs")


def test_leaderboard_job_uses_the_leaderboards_tasks_shots_and_metrics(tmp_path):
    proc = ok(cli("stage=eval", "eval=ita_leaderboard", "model=llama3_8b_instruct", *LEONARDO, "launcher.submit=false",
                  cwd=tmp_path))
    run_dir = run_dir_of(proc)
    plan = read_json(run_dir / "eval.json")
    assert plan["groups"] == [{"num_fewshot": 0, "tasks": ["hellaswag_it", "arc_it"]},
                              {"num_fewshot": 5, "tasks": ["m_mmlu_it"]}]
    assert plan["metrics"] == {"hellaswag_it": "acc_norm", "arc_it": "acc_norm", "m_mmlu_it": "acc"}
    assert plan["model_args"] == "pretrained=meta-llama/Meta-Llama-3-8B-Instruct,dtype=bfloat16"
    assert plan["device"] == "cuda:0" and plan["leaderboard"]
    from llamantino.evaluation import lm_eval_argv

    argv = lm_eval_argv(plan, plan["groups"][1])
    assert argv[argv.index("--tasks") + 1] == "m_mmlu_it" and argv[argv.index("--num_fewshot") + 1] == "5"
    script = (run_dir / "job.sbatch").read_text()
    assert "-m llamantino.evaluate ." in script and "HF_DATASETS_OFFLINE=1" in script


def test_offline_cluster_without_a_download_partition_refuses_task_data_before_writing(tmp_path):
    proc = cli("stage=eval", "eval=ita_leaderboard", "model=llama3_8b_instruct", *LEONARDO,
               "hardware.prepare.download_partition=null", cwd=tmp_path)
    assert proc.returncode == 2
    assert "eval tasks hellaswag_it, arc_it, m_mmlu_it" in proc.stderr and "prepare" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_task_is_named_with_close_matches(tmp_path):
    proc = cli("stage=eval", "eval=ita_leaderboard", "eval.tasks=[{name: arc_itt, num_fewshot: 0, metric: acc}]",
               "launcher=dry", cwd=tmp_path)
    assert proc.returncode == 2 and "no task 'arc_itt'" in proc.stderr and "arc_it" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_run_without_finished_output_is_refused(tmp_path):
    run_dir = run_dir_of(ok(cli("launcher=dry", cwd=tmp_path)))
    proc = cli("stage=eval", f"run.input_model={run_dir}", "launcher=dry", cwd=tmp_path)
    assert proc.returncode == 2 and "no finished output to evaluate" in proc.stderr


def test_results_table_places_the_model_beside_published_scores():
    from llamantino.evaluation import results_table

    plan = {"metrics": {"m_mmlu_it": "acc", "arc_it": "acc_norm", "hellaswag_it": "acc_norm"}, "leaderboard": True,
            "target": {"model_id": "swap-uniba/LLaMAntino-3-ANITA-8B-Inst-DPO-ITA"}}
    table = results_table("mine", {"m_mmlu_it": 0.5, "arc_it": 0.4, "hellaswag_it": 0.6}, plan)
    assert "| **mine** (this run) | 0.5000 | 0.4000 | 0.6000 | 0.5000 |" in table
    assert "| swap-uniba/LLaMAntino-3-ANITA-8B-Inst-DPO-ITA (target) | 0.5672 | 0.5714 | 0.7093 | 0.6160 |" in table
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in table


@pytest.mark.e2e
def test_local_smoke_evaluates_a_trained_adapter_and_the_base_and_compares(tmp_path):
    trained = run_dir_of(ok(cli("stage.max_steps=2", "stage.saves_per_epoch=null", cwd=tmp_path)))
    evaluated = run_dir_of(ok(cli("stage=eval", "eval=local_smoke", f"run.input_model={trained}", cwd=tmp_path)))
    result = read_json(evaluated / "results.json")
    assert 0.0 <= result["scores"]["llamantino_smoke_it"] <= 1.0
    assert "peft=inputs/adapter" in (evaluated / "eval.json").read_text()
    assert "| **eval-tiny_llama-local_smoke** (this run) |" in (evaluated / "results.md").read_text()
    assert "## Evaluation" in (trained / "output" / "README.md").read_text()  # merged into the card
    base = run_dir_of(ok(cli("stage=eval", "eval=local_smoke", "run.name=eval-base", cwd=tmp_path)))
    assert json.loads((base / "eval.json").read_text())["model_args"] == "pretrained=inputs/base_model"
    out = ok(cli(str(tmp_path / "runs"), "--png", str(tmp_path / "compare.png"), module="llamantino.compare",
                 cwd=tmp_path)).stdout
    assert "eval-base" in out and "eval-tiny_llama-local_smoke" in out
    assert (tmp_path / "compare.png").stat().st_size > 5_000
