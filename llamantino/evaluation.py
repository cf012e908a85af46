"""Run an eval stage: lm-evaluation-harness per few-shot group, results beside the published scores.

The stage command (``python -m llamantino.evaluate <eval run dir>``) reads the plan the eval stage
type wrote (``llamantino/stages/eval.py``), runs lm-eval once per few-shot count, and writes
``results.json`` and ``results.md``: the model beside the LLaMAntino models and their bases
(``datasets_ita/leaderboard.yaml``). The evaluated run's model card gets the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from llamantino.errors import LaunchError
from llamantino.paths import DATASETS_DIR
from llamantino.rundir import RunDir, read_json, write_json

LEADERBOARD = DATASETS_DIR / "leaderboard.yaml"


def leaderboard() -> dict:
    return yaml.safe_load(LEADERBOARD.read_text())


def lm_eval_argv(plan: dict, group: dict) -> list[str]:
    argv = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", plan["model_args"],
            "--tasks", ",".join(group["tasks"]), "--num_fewshot", str(group["num_fewshot"]),
            "--batch_size", plan["batch_size"], "--device", plan["device"],
            "--output_path", f"{RunDir.EVAL_RESULTS}/fewshot_{group['num_fewshot']}"]
    if plan["include_path"]:
        argv += ["--include_path", plan["include_path"]]
    if plan["limit"] is not None:
        argv += ["--limit", str(plan["limit"])]
    return argv


def read_scores(run_dir: Path, plan: dict) -> dict[str, float]:
    """Task -> score (the metric the eval group names) from lm-eval's result files."""
    scores = {}
    for path in sorted((Path(run_dir) / RunDir.EVAL_RESULTS).rglob("results_*.json")):
        results = json.loads(path.read_text())["results"]
        for task, metric in plan["metrics"].items():
            if task in results and f"{metric},none" in results[task]:
                scores[task] = float(results[task][f"{metric},none"])
    missing = sorted(set(plan["metrics"]) - set(scores))
    if missing:
        raise LaunchError(f"lm-eval produced no score for {', '.join(missing)}")
    return scores


def results_table(name: str, scores: dict, plan: dict) -> str:
    """Markdown: this model, its target, and the published LLaMAntino and base-model scores."""
    tasks = list(plan["metrics"])
    board = leaderboard()
    comparable = set(tasks) <= set(board["tasks"])
    average = plan["leaderboard"] and comparable and len(tasks) == len(board["tasks"])
    header = ["model"] + [f"{t} ({plan['metrics'][t]})" for t in tasks] + (["average"] if average else [])
    rows = [[f"**{name}** (this run)"] + [f"{scores[t]:.4f}" for t in tasks]
            + ([f"{sum(scores.values()) / len(tasks):.4f}"] if average else [])]
    target = (plan.get("target") or {}).get("model_id")
    if comparable:
        for model, published in board["models"].items():
            values = [published.get(t) for t in tasks]
            label = f"{model} (target)" if model == target else model
            rows.append([label] + [f"{v:.4f}" if v is not None else "-" for v in values]
                        + ([f"{sum(values) / len(values):.4f}"] if average and None not in values else []))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    note = f"Published scores: {board['source']}." if comparable else \
        "These tasks are not on the Open Italian LLM Leaderboard: no published scores to compare with."
    return "\n".join(lines) + f"\n\n{note}\n"


def run_evaluation(run_dir: Path) -> dict:
    """The eval stage command: lm-eval per few-shot group, then results.json/results.md and the card."""
    run = RunDir(Path(run_dir).resolve())
    run_dir = run.path
    plan = read_json(run / RunDir.EVAL_PLAN, "not an eval run directory (written by stage=eval)")
    for group in plan["groups"]:
        print(f"llamantino eval: {' '.join(lm_eval_argv(plan, group)[1:])}", flush=True)
        rc = subprocess.run(lm_eval_argv(plan, group), cwd=run_dir, env=os.environ).returncode
        if rc != 0:
            raise LaunchError(f"lm-eval failed with exit code {rc} on {', '.join(group['tasks'])}")
    scores = read_scores(run_dir, plan)
    table = results_table(run.config().run.name, scores, plan)
    result = {"eval": plan["eval"], "scores": scores, "model": plan["model"]}
    if plan["leaderboard"] and len(scores) == 3:
        result["average"] = sum(scores.values()) / 3
    write_json(run / RunDir.RESULTS_JSON, result)
    (run / RunDir.RESULTS_MD).write_text(table)
    print(table, flush=True)
    if plan["evaluated_run"]:
        card = RunDir(plan["evaluated_run"]).output_card()
        if card is not None:
            from llamantino.card import merge_eval_section

            merge_eval_section(card, f"`{plan['eval']}` ({run_dir}):\n\n{table}")
    return result
