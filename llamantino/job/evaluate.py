"""``python -m llamantino.job.evaluate <eval run dir>``: run an eval stage: lm-evaluation-harness per few-shot group, results beside the published scores.

The stage command (``python -m llamantino.job.evaluate <eval run dir>``) reads the plan the eval stage
type wrote (``llamantino/stages/eval.py``), runs lm-eval once per few-shot count, and writes
``results.json`` and ``results.md``: the model beside the LLaMAntino models and their bases
(``datasets_ita/leaderboard.yaml``). The evaluated run's model card gets the table.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from llamantino.argparsing import ArgumentParser
from llamantino.config.schema import to_plain
from llamantino.errors import LaunchError, RunDirError, entry
from llamantino.paths import DATASETS_DIR
from llamantino.records.files import MAX_STATE_BYTES, load_json
from llamantino.records.manifests import EvalPlan, EvalResults
from llamantino.records.rundir import RunDir, write_json, write_text
from llamantino.render.lmeval import lm_eval_argv

LEADERBOARD = DATASETS_DIR / "leaderboard.yaml"


def leaderboard() -> dict:
    return yaml.safe_load(LEADERBOARD.read_text())


def read_scores(run_dir: Path, plan: EvalPlan) -> tuple[dict[str, float], dict[str, str]]:
    """Task -> score (the metric the eval group names), and task -> the version lm-eval reports,
    from lm-eval's result files (read back as untrusted: bounded, every value checked)."""
    scores, versions = {}, {}
    for path in sorted((Path(run_dir) / RunDir.EVAL_RESULTS).rglob("results_*.json")):
        written = load_json(path, MAX_STATE_BYTES)
        results = written.get("results") if isinstance(written, dict) else None
        if not isinstance(results, dict):
            raise RunDirError(f"{path}: results must be an object of tasks; was it cut short?")
        for task, metric in plan.metrics.items():
            value = results.get(task, {}).get(f"{metric},none") if isinstance(results.get(task), dict) else None
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RunDirError(f"{path}: results.{task}.{metric},none={value!r} must be a number")
            scores[task] = float(value)
            versions[task] = str((written.get("versions") or {}).get(task, "unknown")
                                 if isinstance(written.get("versions") or {}, dict) else "unknown")
    missing = sorted(set(plan.metrics) - set(scores))
    if missing:
        raise LaunchError(f"lm-eval produced no score for {', '.join(missing)}")
    return scores, versions


def harness_record(plan: EvalPlan, versions: dict[str, str]) -> dict:
    """What a result depends on besides model and tasks: written beside every score."""
    from importlib.metadata import version

    harness = dict(plan.harness or {"mode": "unrecorded"})
    harness["lm_eval"] = version("lm_eval")
    harness["task_versions"] = versions
    harness["processes"] = plan.processes
    return harness


def harness_line(harness: dict) -> str:
    bos = {False: "no BOS", True: "BOS", None: "BOS as the tokenizer adds it"}[harness.get("add_bos_token")]
    tasks = ", ".join(f"{task} v{v}" for task, v in harness.get("task_versions", {}).items())
    vendored = harness.get("vendored_tasks") or []
    return (f"Harness: lm-eval {harness.get('lm_eval')}, mode **{harness.get('mode')}** ({bos}, dtype "
            f"{harness.get('dtype')}, batch size {harness.get('batch_size')}; tasks {tasks}"
            + (f"; {', '.join(vendored)} as the leaderboard ran {'it' if len(vendored) == 1 else 'them'}" if vendored else "")
            + ").")


def results_table(name: str, scores: dict, plan: EvalPlan, harness: dict | None = None) -> str:
    """Markdown: this model, its target, and the published LLaMAntino and base-model scores."""
    tasks = list(plan.metrics)
    board = leaderboard()
    comparable = set(tasks) <= set(board["tasks"])
    average = plan.leaderboard and comparable and len(tasks) == len(board["tasks"])
    header = ["model"] + [f"{t} ({plan.metrics[t]})" for t in tasks] + (["average"] if average else [])
    rows = [[f"**{name}** (this run)"] + [f"{scores[t]:.4f}" for t in tasks]
            + ([f"{sum(scores.values()) / len(tasks):.4f}"] if average else [])]
    target = (plan.target or {}).get("model_id")
    if comparable:
        for model, published in board["models"].items():
            values = [published.get(t) for t in tasks]
            label = f"{model} (target)" if model == target else model
            rows.append([label] + [f"{v:.4f}" if v is not None else "-" for v in values]
                        + ([f"{sum(values) / len(values):.4f}"] if average and None not in values else []))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if not comparable:
        note = "These tasks are not on the Open Italian LLM Leaderboard: no published scores to compare with."
    else:
        note = f"Published scores: {board['source']}."
        if (harness or {}).get("mode") != "leaderboard":
            note += (" This run did not use eval.mode=leaderboard: its harness settings differ from the published"
                     " ones (task versions, BOS, dtype), so the rows are not directly comparable.")
    return "\n".join(lines) + f"\n\n{note}\n" + (f"\n{harness_line(harness)}\n" if harness else "")


def run_evaluation(run_dir: Path) -> dict:
    """The eval stage command: lm-eval per few-shot group, then results.json/results.md and the card."""
    run = RunDir(Path(run_dir).resolve())
    run_dir = run.path
    plan = run.eval_plan()
    argv_plan = to_plain(plan)  # the rendered command takes the plan as plain data
    for group in argv_plan["groups"]:
        print(f"llamantino eval: {' '.join(lm_eval_argv(argv_plan, group)[1:])}", flush=True)
        rc = subprocess.run(lm_eval_argv(argv_plan, group), cwd=run_dir, env=os.environ).returncode
        if rc != 0:
            raise LaunchError(f"lm-eval failed with exit code {rc} on {', '.join(group['tasks'])}")
    scores, versions = read_scores(run_dir, plan)
    harness = harness_record(plan, versions)
    table = results_table(run.config().run.name, scores, plan, harness)
    result = EvalResults(eval=plan.eval, scores=scores, model=plan.model, harness=harness,
                         average=sum(scores.values()) / 3 if plan.leaderboard and len(scores) == 3 else None)
    write_json(run / RunDir.RESULTS_JSON, {k: v for k, v in to_plain(result).items() if v is not None})
    write_text(run / RunDir.RESULTS_MD, table)
    print(table, flush=True)
    if plan.evaluated_run:
        card = RunDir(plan.evaluated_run).output_card()
        if card is not None:
            from llamantino.job.card import merge_eval_section

            merge_eval_section(card, f"`{plan.eval}` ({run_dir}):\n\n{table}")
    return to_plain(result)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="an eval run directory (written by stage=eval)")
    args = parser.parse_args(argv)
    run_evaluation(args.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
