"""The eval stage: lm-evaluation-harness on a run's output; results beside the published scores."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import cli, ok, read_json, run_dir_of

LEONARDO = ("hardware=leonardo_booster", "launcher=slurm", "hardware.slurm.account=IscrC_EXAMPLE", "run.output_root=runs")


def test_leaderboard_job_uses_the_leaderboards_tasks_shots_metrics_and_harness_settings(tmp_path):
    proc = ok(cli("stage=eval", "eval=ita_leaderboard", "model=llama3_8b_instruct", *LEONARDO, "launcher.submit=false",
                  cwd=tmp_path))
    run_dir = run_dir_of(proc)
    plan = read_json(run_dir / "eval.json")
    assert plan["groups"] == [{"num_fewshot": 0, "tasks": ["hellaswag_it", "arc_it"]},
                              {"num_fewshot": 5, "tasks": ["m_mmlu_it"]}]
    assert plan["metrics"] == {"hellaswag_it": "acc_norm", "arc_it": "acc_norm", "m_mmlu_it": "acc"}
    # leaderboard mode: no BOS, no dtype (the checkpoint's own), arc_it as version 1.0
    assert plan["model_args"] == "pretrained=meta-llama/Meta-Llama-3-8B-Instruct,add_bos_token=False"
    assert plan["harness"] == {"mode": "leaderboard", "add_bos_token": False, "dtype": "auto", "batch_size": "auto:2",
                               "vendored_tasks": ["arc_it"]}
    vendored = yaml.safe_load((run_dir / "eval_tasks" / "arc_it.yaml").read_text())
    assert vendored["task"] == "arc_it" and vendored["metadata"]["version"] == 1.0
    # an 8B model fits one A100: one copy per GPU of the node, data-parallel under accelerate launch
    assert plan["processes"] == 4 and plan["device"] == "cuda" and plan["leaderboard"]
    from llamantino.render.lmeval import lm_eval_argv

    argv = lm_eval_argv(plan, plan["groups"][1])
    assert argv[1:6] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4"]
    assert argv[argv.index("lm_eval") - 1] == "-m"
    assert argv[argv.index("--tasks") + 1] == "m_mmlu_it" and argv[argv.index("--num_fewshot") + 1] == "5"
    script = (run_dir / "job.sbatch").read_text()
    assert "-m llamantino.job.evaluate ." in script and "HF_DATASETS_OFFLINE=1" in script
    assert "#SBATCH --gres=gpu:4" in script


def test_a_70b_model_is_evaluated_sharded_over_the_gpus_that_hold_it(tmp_path):
    run_dir = run_dir_of(ok(cli("stage=eval", "eval=ita_leaderboard", "model=llama2_70b", "eval.mode=current", *LEONARDO,
                                "launcher.submit=false", cwd=tmp_path)))
    plan = read_json(run_dir / "eval.json")
    # 70B in bf16 is ~140 GB: three 64 GB A100s hold one copy, spread layer by layer
    assert plan["processes"] == 1 and plan["gpus"] == 3
    assert plan["model_args"] == "pretrained=meta-llama/Llama-2-70b-hf,dtype=bfloat16,parallelize=True"
    assert plan["harness"]["mode"] == "current" and plan["harness"]["vendored_tasks"] == []
    assert not (run_dir / "eval_tasks").exists()  # the installed arc_it (version 2.0) in current mode
    from llamantino.render.lmeval import lm_eval_argv

    assert lm_eval_argv(plan, plan["groups"][0])[1:3] == ["-m", "lm_eval"]
    assert "#SBATCH --gres=gpu:3" in (run_dir / "job.sbatch").read_text()


def test_the_vendored_arc_it_is_the_installed_one_plus_the_empty_fifth_option():
    """Version 1.0 (the leaderboard's) against the installed 2.0, through lm-eval's own template code:
    the same query and gold answer; the same choices, plus " " for an absent fifth option."""
    import datasets
    from lm_eval import utils
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks.okapi.arc_multilingual.utils import process_docs

    from llamantino.stages.eval import LEADERBOARD_TASKS

    index = TaskManager(include_path=str(LEADERBOARD_TASKS)).task_index
    assert index["arc_it"]["yaml_path"] == str(LEADERBOARD_TASKS / "arc_it.yaml")  # ours replaces the installed one
    v1 = yaml.safe_load((LEADERBOARD_TASKS / "arc_it.yaml").read_text())
    docs = [{"id": "a", "instruction": " Qual è il [nota] pianeta  rosso? ", "option_a": "Venere", "option_b": "Marte [m]",
             "option_c": "Giove", "option_d": "Saturno", "option_e": None, "answer": "B"},
            {"id": "b", "instruction": "Cosa [title] bolle?", "option_a": "acqua", "option_b": "sasso", "option_c": "ferro",
             "option_d": "legno", "option_e": "vetro", "answer": "E"}]
    for doc, v2 in zip(docs, process_docs(datasets.Dataset.from_list(docs))):
        choices = __import__("ast").literal_eval(utils.apply_template(v1["doc_to_choice"], doc))
        assert utils.apply_template(v1["doc_to_text"], doc) == v2["query"]
        assert int(utils.apply_template(v1["doc_to_target"], doc)) == v2["gold"]
        assert choices == (v2["choices"] + [" "] if doc["option_e"] is None else v2["choices"])
        assert len(choices) == 5


def test_eval_commands_are_parsed_by_the_installed_harness_and_accelerate():
    import sys

    from llamantino.errors import ConfigError
    from llamantino.render.lmeval import parse_eval_argv

    parse_eval_argv([sys.executable, "-m", "lm_eval", "--model", "hf", "--tasks", "arc_it", "--batch_size", "auto:2"])
    with pytest.raises(ConfigError, match="lm-eval command does not parse: .*--no-such-flag"):
        parse_eval_argv([sys.executable, "-m", "lm_eval", "--model", "hf", "--no-such-flag"])
    with pytest.raises(ConfigError, match="accelerate launch command does not parse: .*num_processes"):
        parse_eval_argv([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "four", "-m", "lm_eval",
                         "--model", "hf"])


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
    from llamantino.job.evaluate import results_table
    from llamantino.records.manifests import EvalPlan

    plan = EvalPlan(eval="ita_leaderboard", model={}, model_args="", device="cpu", processes=1, gpus=0,
                    batch_size="1", limit=None, include_path=None, harness={}, groups=[],
                    metrics={"m_mmlu_it": "acc", "arc_it": "acc_norm", "hellaswag_it": "acc_norm"}, leaderboard=True,
                    target={"model_id": "swap-uniba/LLaMAntino-3-ANITA-8B-Inst-DPO-ITA"}, evaluated_run=None)
    table = results_table("mine", {"m_mmlu_it": 0.5, "arc_it": 0.4, "hellaswag_it": 0.6}, plan)
    assert "| **mine** (this run) | 0.5000 | 0.4000 | 0.6000 | 0.5000 |" in table
    assert "| swap-uniba/LLaMAntino-3-ANITA-8B-Inst-DPO-ITA (target) | 0.5672 | 0.5714 | 0.7093 | 0.6160 |" in table
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in table


@pytest.mark.e2e
def test_local_smoke_evaluates_in_both_modes_and_compare_keeps_them_apart(tmp_path):
    trained = run_dir_of(ok(cli("stage.max_steps=2", "stage.saves_per_epoch=null", cwd=tmp_path)))
    evaluated = run_dir_of(ok(cli("stage=eval", "eval=local_smoke", f"run.input_model={trained}", cwd=tmp_path)))
    result = read_json(evaluated / "results.json")
    assert 0.0 <= result["scores"]["llamantino_smoke_it"] <= 1.0
    assert result["harness"]["mode"] == "current" and result["harness"]["add_bos_token"] is None
    assert result["harness"]["task_versions"] == {"llamantino_smoke_it": "1.0"}
    assert result["harness"]["lm_eval"]  # the installed harness's version
    assert "peft=inputs/adapter" in (evaluated / "eval.json").read_text()
    table = (evaluated / "results.md").read_text()
    assert "| **eval-tiny_llama-local_smoke** (this run) |" in table and "mode **current**" in table
    assert "## Evaluation" in (trained / "output" / "README.md").read_text()  # merged into the card
    base = run_dir_of(ok(cli("stage=eval", "eval=local_smoke", "eval.mode=leaderboard", "run.name=eval-base",
                             cwd=tmp_path)))
    plan = json.loads((base / "eval.json").read_text())
    assert plan["model_args"] == "pretrained=inputs/base_model,add_bos_token=False"
    harness = read_json(base / "results.json")["harness"]
    assert harness["mode"] == "leaderboard" and harness["add_bos_token"] is False
    # lm-eval really ran without BOS: its own record of the model arguments says so
    written = json.loads(next((base / "eval_results").rglob("results_*.json")).read_text())
    assert written["config"]["model_args"]["add_bos_token"] is False
    assert "mode **leaderboard** (no BOS" in (base / "results.md").read_text()

    refused = cli(str(tmp_path / "runs"), "--png", str(tmp_path / "compare.png"), verb="compare",
                  cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "different evaluation modes" in refused.stderr and "--mixed-modes" in refused.stderr
    assert not (tmp_path / "compare.png").exists()
    out = ok(cli(str(tmp_path / "runs"), "--mixed-modes", "--png", str(tmp_path / "compare.png"),
                 verb="compare", cwd=tmp_path)).stdout
    assert "eval-base" in out and "eval-tiny_llama-local_smoke" in out  # the eval runs' column
    # each row is labelled by the model it evaluated: the trained run's name, the base model
    assert "sft-tiny_llama-it_instructions_sample" in out and "tiny_llama (base)" in out
    assert "leaderboard" in out and "current" in out
    assert " ± " in out and "2·sqrt(se_best² + se²)" in out  # lm-eval's standard errors, and the rule
    assert (tmp_path / "compare.png").stat().st_size > 5_000
