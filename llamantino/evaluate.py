"""The ``eval`` stage: lm-evaluation-harness on a stage's output, results beside the published scores.

    python -m llamantino stage=eval eval=ita_leaderboard run.input_model=<run dir> hardware=leonardo_booster
    python -m llamantino stage=eval eval=local_smoke run.input_model=<tiny run dir>     # CPU, no hub

The run directory holds ``eval.json`` (the plan: model, tasks grouped by few-shot count, batch
size), and after the job ``results.json`` and ``results.md``: the model beside the LLaMAntino models
and their bases (``datasets_ita/leaderboard.yaml``). The evaluated run's model card gets the table.
The stage command is ``python -m llamantino.evaluate <eval run dir>``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import yaml

from llamantino.errors import ConfigError
from llamantino.paths import DATASETS_DIR, PROJECT_ROOT

LEADERBOARD = DATASETS_DIR / "leaderboard.yaml"
LOCAL_TASKS = "eval_tasks"


def leaderboard() -> dict:
    return yaml.safe_load(LEADERBOARD.read_text())


def local_task_files(cfg: dict) -> dict[str, Path]:
    """Task name -> YAML file of the eval group's local tasks (its include_path)."""
    include = cfg["eval"]["include_path"]
    if not include:
        return {}
    folder = Path(include) if Path(include).is_absolute() else PROJECT_ROOT / include
    if not folder.is_dir():
        raise ConfigError(f"eval.include_path={include!r} is not a folder")
    tasks = {}
    for path in sorted(folder.glob("*.yaml")):
        task = (yaml.safe_load(path.read_text()) or {}).get("task")
        if task:
            tasks[task] = path
    return tasks


@lru_cache(maxsize=None)
def _known_tasks(include: str | None) -> frozenset:
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_path=include).all_tasks)


def check_tasks(cfg: dict) -> None:
    """Unknown task names fail here, before anything is written or submitted."""
    local = local_task_files(cfg)
    include = str(next(iter(local.values())).parent) if local else None
    known = _known_tasks(include)
    for task in cfg["eval"]["tasks"]:
        if task["name"] not in known:
            close = difflib.get_close_matches(task["name"], sorted(known), n=5)
            raise ConfigError(f"eval {cfg['eval']['name']}: lm-eval has no task {task['name']!r}"
                              + (f"; close: {', '.join(close)}" if close else ""))


def materialise_tasks(cfg: dict, inputs) -> dict[str, str]:
    """Local task YAMLs for the run directory, their data files linked under inputs/."""
    files = {}
    for name, path in local_task_files(cfg).items():
        task = yaml.safe_load(path.read_text())
        data_files = (task.get("dataset_kwargs") or {}).get("data_files") or {}
        for split, relative in list(data_files.items()):
            source = (path.parent / relative).resolve()
            if not source.is_file():
                raise ConfigError(f"eval task {name} ({path}): data file {source} not found")
            link = f"inputs/{source.name}"
            inputs.links[link] = str(source)
            data_files[split] = link
        files[f"{LOCAL_TASKS}/{path.name}"] = yaml.safe_dump(task, sort_keys=False, allow_unicode=True)
    return files


def eval_plan(cfg: dict, inputs) -> dict:
    """What the eval job runs: one lm-eval call per few-shot count, on the resolved model."""
    model_args = [f"pretrained={inputs.base_model}"]
    if inputs.base_model_revision:
        model_args.append(f"revision={inputs.base_model_revision}")
    if inputs.adapter:
        model_args.append(f"peft={inputs.adapter}")
    gpu = cfg["hardware"]["accelerator"] != "cpu"
    if gpu:
        model_args.append("dtype=bfloat16" if cfg["hardware"]["bf16"] else "dtype=float16")
    groups: dict[int, list[str]] = {}
    for task in cfg["eval"]["tasks"]:
        groups.setdefault(int(task["num_fewshot"]), []).append(task["name"])
    local = local_task_files(cfg)
    return {
        "eval": cfg["eval"]["name"],
        "model": inputs.model_source,
        "model_args": ",".join(model_args),
        "device": "cuda:0" if gpu else "cpu",
        "batch_size": str(cfg["eval"]["batch_size"]),
        "limit": cfg["eval"]["limit"],
        "include_path": LOCAL_TASKS if local else None,
        "groups": [{"num_fewshot": shots, "tasks": tasks} for shots, tasks in sorted(groups.items())],
        "metrics": {task["name"]: task["metric"] for task in cfg["eval"]["tasks"]},
        "leaderboard": bool(cfg["eval"]["leaderboard"]),
        "target": cfg.get("target"),
        "evaluated_run": inputs.model_source.get("run_dir"),
    }


def lm_eval_argv(plan: dict, group: dict) -> list[str]:
    argv = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", plan["model_args"],
            "--tasks", ",".join(group["tasks"]), "--num_fewshot", str(group["num_fewshot"]),
            "--batch_size", plan["batch_size"], "--device", plan["device"],
            "--output_path", f"eval_results/fewshot_{group['num_fewshot']}"]
    if plan["include_path"]:
        argv += ["--include_path", plan["include_path"]]
    if plan["limit"] is not None:
        argv += ["--limit", str(plan["limit"])]
    return argv


def read_scores(run_dir: Path, plan: dict) -> dict[str, float]:
    """Task -> score (the metric the eval group names) from lm-eval's result files."""
    scores = {}
    for path in sorted((Path(run_dir) / "eval_results").rglob("results_*.json")):
        results = json.loads(path.read_text())["results"]
        for task, metric in plan["metrics"].items():
            if task in results and f"{metric},none" in results[task]:
                scores[task] = float(results[task][f"{metric},none"])
    missing = sorted(set(plan["metrics"]) - set(scores))
    if missing:
        raise RuntimeError(f"lm-eval produced no score for {', '.join(missing)}")
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
    run_dir = Path(run_dir).resolve()
    plan = json.loads((run_dir / "eval.json").read_text())
    for group in plan["groups"]:
        print(f"llamantino eval: {' '.join(lm_eval_argv(plan, group)[1:])}", flush=True)
        rc = subprocess.run(lm_eval_argv(plan, group), cwd=run_dir, env=os.environ).returncode
        if rc != 0:
            raise SystemExit(rc)
    scores = read_scores(run_dir, plan)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    table = results_table(config["run"]["name"], scores, plan)
    result = {"eval": plan["eval"], "scores": scores, "model": plan["model"]}
    if plan["leaderboard"] and len(scores) == 3:
        result["average"] = sum(scores.values()) / 3
    (run_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / "results.md").write_text(table)
    print(table, flush=True)
    if plan["evaluated_run"]:
        card = _card_of(Path(plan["evaluated_run"]))
        if card is not None:
            from llamantino.card import merge_eval_section

            merge_eval_section(card, f"`{plan['eval']}` ({run_dir}):\n\n{table}")
    return result


def _card_of(run_dir: Path) -> Path | None:
    output = (json.loads((run_dir / "provenance.json").read_text()).get("output") or {}).get("path")
    card = run_dir / output / "README.md" if output else None
    return card if card is not None and card.is_file() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="an eval run directory (written by stage=eval)")
    args = parser.parse_args(argv)
    run_evaluation(args.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
