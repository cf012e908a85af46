"""``python -m llamantino.job.evaluate <eval run dir>``: run an eval stage: lm-evaluation-harness per few-shot group, results beside the published scores.

The stage command (``python -m llamantino.job.evaluate <eval run dir>``) reads the plan the eval stage
type wrote (``llamantino/stages/eval.py``), runs lm-eval once per few-shot count, and writes
``results.json`` and ``results.md``: the model beside the LLaMAntino models and their bases
(``datasets_ita/leaderboard.yaml``). The evaluated run's model card gets the table.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from dataclasses import dataclass
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
MAX_LINE_BYTES = 1 << 20
PROGRESS_SECONDS = 30  # a bar's line at least this often (besides one per tenth done)
# tqdm's bar as lm-eval draws it: "Running loglikelihood requests:  45%|####5     | 450/1000 [00:30<00:40, ...]"
_BAR = re.compile(r"^(?P<what>[^|]*?):?\s*(?P<percent>\d{1,3})%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)"
                  r"(?:\s*\[(?P<elapsed>[0-9:]+)<(?P<left>[0-9:?]+))?")


class HarnessOutput:
    """lm-eval's output as lines: each tqdm bar (carriage returns, unreadable in a log file) becomes
    a ``llamantino eval:`` line per tenth done and at least every PROGRESS_SECONDS; other lines pass."""

    def __init__(self, emit=print) -> None:
        self.emit = emit
        self.shown: dict[str, tuple[int, int, float]] = {}  # bar -> (tenths shown, done, when)

    def feed(self, segment: str) -> None:
        match = _BAR.match(segment.strip())
        if not match:
            if segment.strip():
                self.emit(segment.rstrip())
            return
        what, done, total = match["what"].strip() or "progress", int(match["done"]), int(match["total"])
        tenths = 10 * done // total if total else 10
        shown_tenths, shown_done, when = self.shown.get(what, (-1, -1, 0.0))
        if done < shown_done:  # the same bar drawn again for the next group
            shown_tenths, when = -1, 0.0
        now = time.monotonic()
        if tenths > shown_tenths or (done > shown_done and now - when >= PROGRESS_SECONDS):
            timing = f", {match['elapsed']} elapsed, {match['left']} left" if match["elapsed"] else ""
            self.emit(f"llamantino eval: {what}: {done:,}/{total:,} ({match['percent']}%){timing}")
            self.shown[what] = (tenths, done, now)
        else:
            self.shown[what] = (shown_tenths, shown_done, when)


def run_harness(argv: list[str], cwd: Path) -> int:
    """Run lm-eval with its output (stdout and stderr, in order) passed through HarnessOutput."""
    lines = HarnessOutput(lambda line: print(line, flush=True))
    with subprocess.Popen(argv, cwd=cwd, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        pending = b""
        while chunk := proc.stdout.read1(1 << 16):
            *segments, pending = re.split(rb"[\r\n]", pending + chunk)
            if len(pending) > MAX_LINE_BYTES:  # a line without end is passed on in pieces, not held
                segments.append(pending)
                pending = b""
            for segment in segments:
                lines.feed(segment.decode("utf-8", errors="replace"))
        if pending:
            lines.feed(pending.decode("utf-8", errors="replace"))
        return proc.wait()


def task_lines(results_dir: Path, group: dict, plan: EvalPlan, seconds: float) -> list[str]:
    """One line per task of a finished few-shot group: samples, time, score (from its newest results file)."""
    files = sorted(results_dir.rglob("results_*.json"), key=lambda path: path.stat().st_mtime)
    written = load_json(files[-1], MAX_STATE_BYTES) if files else {}
    results = written.get("results") if isinstance(written, dict) else None
    samples = written.get("n-samples") if isinstance(written, dict) else None
    lines = []
    for task in group["tasks"]:
        counted = samples.get(task) if isinstance(samples, dict) else None
        count = counted.get("effective") if isinstance(counted, dict) else None
        metric = plan.metrics.get(task)
        value = results.get(task, {}).get(f"{metric},none") if isinstance(results, dict) and isinstance(
            results.get(task), dict) else None
        together = f" ({len(group['tasks'])} tasks together)" if len(group["tasks"]) > 1 else ""
        lines.append(f"llamantino eval: task {task}: "
                     + (f"{count:,} samples" if isinstance(count, int) and not isinstance(count, bool) else "? samples")
                     + f" in {seconds:.0f}s{together}; {metric}="
                     + (f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"))
    return lines


def leaderboard() -> dict:
    return yaml.safe_load(LEADERBOARD.read_text())


#: lm-eval's dataset_path values that name a loader of local files, not a hub dataset.
LOCAL_LOADERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas", "sql", "webdataset", "generator"})
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")  # [owner/]name
_CONFIG_NAME = re.compile(r"[A-Za-z0-9_.-]{1,96}")


@dataclass(frozen=True)
class TaskScores:
    """What lm-eval's result files say of each task of a plan (read back as untrusted)."""

    scores: dict[str, float]  # the metric the eval group names
    versions: dict[str, str]  # the task's version
    stderr: dict[str, float]  # the score's standard error, where lm-eval computed one
    datasets: dict[str, str]  # the hub dataset it reads (none for local data files)
    dataset_configs: dict[str, str]  # that dataset's configuration


def finite_number(value) -> float | None:
    """A number read back (JSON, YAML) as a float; None for anything else (bool, text, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _dataset(config) -> tuple[str | None, str | None]:
    """(hub id, configuration) of a task's dataset as lm-eval's ``configs`` names it; None for
    local files (dataset_path json, csv, ...) and for anything that is not a plain hub name."""
    if not isinstance(config, dict):
        return None, None
    path, name = config.get("dataset_path"), config.get("dataset_name")
    if not (isinstance(path, str) and HUB_ID.fullmatch(path) and path not in LOCAL_LOADERS and ".." not in path):
        return None, None
    return path, name if isinstance(name, str) and _CONFIG_NAME.fullmatch(name) and name != ".." else None


def read_scores(run_dir: Path, plan: EvalPlan) -> TaskScores:
    """Each task's score (the metric the eval group names), version, standard error and dataset, from
    lm-eval's result files (read back as untrusted: bounded, every value checked)."""
    found = TaskScores({}, {}, {}, {}, {})
    for path in sorted((Path(run_dir) / RunDir.EVAL_RESULTS).rglob("results_*.json")):
        written = load_json(path, MAX_STATE_BYTES)
        results = written.get("results") if isinstance(written, dict) else None
        if not isinstance(results, dict):
            raise RunDirError(f"{path}: results must be an object of tasks; was it cut short?")
        versions = written.get("versions") if isinstance(written.get("versions"), dict) else {}
        configs = written.get("configs") if isinstance(written.get("configs"), dict) else {}
        for task, metric in plan.metrics.items():
            values = results.get(task) if isinstance(results.get(task), dict) else {}
            value = values.get(f"{metric},none")
            if value is None:
                continue
            if finite_number(value) is None:
                raise RunDirError(f"{path}: results.{task}.{metric},none={value!r} must be a number")
            found.scores[task] = float(value)
            found.versions[task] = str(versions.get(task, "unknown"))[:100]
            stderr = finite_number(values.get(f"{metric}_stderr,none"))  # "N/A" where lm-eval computed none
            if stderr is not None and stderr >= 0:
                found.stderr[task] = stderr
            dataset, config = _dataset(configs.get(task))
            if dataset is not None:
                found.datasets[task] = dataset
            if config is not None:
                found.dataset_configs[task] = config
    missing = sorted(set(plan.metrics) - set(found.scores))
    if missing:
        raise LaunchError(f"lm-eval produced no score for {', '.join(missing)}")
    return found


def fewshot_counts(plan: EvalPlan) -> dict[str, int]:
    """Task -> the few-shot count of its eval group."""
    return {task: group.num_fewshot for group in plan.groups for task in group.tasks}


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
            + (f"; {', '.join(vendored)} as the leaderboard mode assumes the leaderboard ran "
               f"{'it' if len(vendored) == 1 else 'them'}" if vendored else "")
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
        argv = lm_eval_argv(argv_plan, group)
        print(f"llamantino eval: {' '.join(argv[1:])}", flush=True)
        started = time.monotonic()
        rc = run_harness(argv, run_dir)
        if rc != 0:
            raise LaunchError(f"lm-eval failed with exit code {rc} on {', '.join(group['tasks'])}")
        results_dir = run_dir / RunDir.EVAL_RESULTS / f"fewshot_{group['num_fewshot']}"
        for line in task_lines(results_dir, group, plan, time.monotonic() - started):
            print(line, flush=True)
    found = read_scores(run_dir, plan)
    scores = found.scores
    harness = harness_record(plan, found.versions)
    name = run.config().run.name or run.name
    table = results_table(name, scores, plan, harness)
    result = EvalResults(eval=plan.eval, scores=scores, model=plan.model, harness=harness,
                         average=sum(scores.values()) / 3 if plan.leaderboard and len(scores) == 3 else None,
                         stderr=found.stderr or None, num_fewshot=fewshot_counts(plan),
                         datasets=found.datasets or None, dataset_configs=found.dataset_configs or None)
    write_json(run / RunDir.RESULTS_JSON, {k: v for k, v in to_plain(result).items() if v is not None})
    write_text(run / RunDir.RESULTS_MD, table)
    print(table, flush=True)
    if plan.evaluated_run:
        card = RunDir(plan.evaluated_run).output_card()
        if card is not None:
            from llamantino.job.card import merge_eval_section

            merge_eval_section(card, f"`{plan.eval}` (run `{name}`):\n\n{table}")
    return to_plain(result)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="an eval run directory (written by stage=eval)")
    args = parser.parse_args(argv)
    run_evaluation(args.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
