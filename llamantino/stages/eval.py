"""The eval stage: lm-evaluation-harness on a run's output or a model, per few-shot count.

The run directory holds ``eval.json`` (the plan: model, tasks grouped by few-shot count, batch
size) and, for local task definitions, their YAMLs under ``eval_tasks/``; the job runs
``python -m llamantino.evaluate .`` (``llamantino/evaluation.py``).
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path

import yaml

from llamantino.errors import ConfigError
from llamantino.inputs import MODEL_LINK, Inputs, base_model, from_adapter_output, is_run, read_run
from llamantino.method import Method, model_gpus, model_ram_gb
from llamantino.paths import PROJECT_ROOT
from llamantino.rundir import RunDir
from llamantino.schema import EvalConfig, LlamantinoConfig, Task
from llamantino.stages.base import HubRead, Stage


class EvalStage(Stage):
    task = Task.eval
    command = ("-m", "llamantino.evaluate", ".")

    def name_parts(self, cfg: LlamantinoConfig) -> list[str]:
        return [cfg.model.name, cfg.eval.name]

    def inputs(self, cfg: LlamantinoConfig, method: Method | None, tiny_dir, known_runs: dict) -> Inputs:
        if cfg.run.input_model and is_run(Path(cfg.run.input_model).expanduser(), known_runs):
            return run_output(Path(cfg.run.input_model).expanduser(), known_runs)
        return base_model(cfg, tiny_dir, known_runs)

    def render(self, cfg, method, inputs, validate, notices):
        if validate:
            check_tasks(cfg.eval)
        files = materialise_tasks(cfg.eval, inputs)
        files[RunDir.EVAL_PLAN] = json.dumps(eval_plan(cfg, inputs), indent=2) + "\n"
        return None, files

    def shape(self, cfg, method):
        """The GPUs the model needs in bf16 (7B: one; 70B: the GPUs that hold it, model-sharded)."""
        if not cfg.hardware.gpu:
            return super().shape(cfg, method)
        return self.sized_shape(cfg, model_gpus(cfg.model.params_b, cfg.hardware.gpu_memory_gb),
                                model_ram_gb(cfg.model.params_b))

    def hub_reads(self, cfg, inputs) -> list[str]:
        reads = super().hub_reads(cfg, inputs)
        local = local_task_files(cfg.eval)
        hub_tasks = [task.name for task in cfg.eval.tasks if task.name not in local]
        if hub_tasks:
            reads.append(HubRead("eval_tasks", tasks=tuple(hub_tasks)))
        return reads


def run_output(path: Path, known_runs: dict) -> Inputs:
    """What an eval reads from a run: its merged/full model, or its base plus adapter."""
    key = str(path.resolve())
    if key not in known_runs:  # a run on disk must have finished; a pipeline step evaluates a future output
        state = RunDir(path).read_status().get("state") or "not finished"
        if state != "COMPLETED":
            raise ConfigError(f"run.input_model={path} has no finished output to evaluate (state: {state})")
    output = read_run(path, known_runs).get("output") or {}
    source = {"kind": "run", "run_dir": key, **output}
    if output.get("kind") == "model":
        return Inputs(base_model=MODEL_LINK, model_source=source, links={MODEL_LINK: str((path / output["path"]).resolve())})
    if output.get("kind") != "adapter":
        raise ConfigError(f"run.input_model={path} produced nothing to evaluate")
    return from_adapter_output(output, source, str((path / output["path"]).resolve()))


def local_task_files(eval_cfg: EvalConfig) -> dict[str, Path]:
    """Task name -> YAML file of the eval group's local tasks (its include_path)."""
    include = eval_cfg.include_path
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


def check_tasks(eval_cfg: EvalConfig) -> None:
    """Unknown task names fail here, before anything is written or submitted."""
    local = local_task_files(eval_cfg)
    known = _known_tasks(str(next(iter(local.values())).parent) if local else None)
    for task in eval_cfg.tasks:
        if task.name not in known:
            close = difflib.get_close_matches(task.name, sorted(known), n=5)
            raise ConfigError(f"eval {eval_cfg.name}: lm-eval has no task {task.name!r}"
                              + (f"; close: {', '.join(close)}" if close else ""))


def materialise_tasks(eval_cfg: EvalConfig, inputs: Inputs) -> dict[str, str]:
    """Local task YAMLs for the run directory, their data files linked under inputs/."""
    files = {}
    for name, path in local_task_files(eval_cfg).items():
        task = yaml.safe_load(path.read_text())
        data_files = (task.get("dataset_kwargs") or {}).get("data_files") or {}
        for split, relative in list(data_files.items()):
            source = (path.parent / relative).resolve()
            if not source.is_file():
                raise ConfigError(f"eval task {name} ({path}): data file {source} not found")
            link = f"{RunDir.INPUTS}/{source.name}"
            inputs.links[link] = str(source)
            data_files[split] = link
        files[f"{RunDir.EVAL_TASKS}/{path.name}"] = yaml.safe_dump(task, sort_keys=False, allow_unicode=True)
    return files


def eval_plan(cfg: LlamantinoConfig, inputs: Inputs) -> dict:
    """What the eval job runs: one lm-eval call per few-shot count, on the resolved model."""
    model_args = [f"pretrained={inputs.base_model}"]
    if inputs.base_model_revision:
        model_args.append(f"revision={inputs.base_model_revision}")
    if inputs.adapter:
        model_args.append(f"peft={inputs.adapter}")
    gpu = cfg.hardware.gpu
    if gpu:
        model_args.append("dtype=bfloat16" if cfg.hardware.bf16 else "dtype=float16")
        if model_gpus(cfg.model.params_b, cfg.hardware.gpu_memory_gb) > 1:
            model_args.append("parallelize=True")  # layers spread over the job's GPUs (accelerate device_map)
    groups: dict[int, list[str]] = {}
    for task in cfg.eval.tasks:
        groups.setdefault(int(task.num_fewshot), []).append(task.name)
    local = local_task_files(cfg.eval)
    return {
        "eval": cfg.eval.name,
        "model": inputs.model_source,
        "model_args": ",".join(model_args),
        "device": "cuda:0" if gpu else "cpu",
        "batch_size": str(cfg.eval.batch_size),
        "limit": cfg.eval.limit,
        "include_path": RunDir.EVAL_TASKS if local else None,
        "groups": [{"num_fewshot": shots, "tasks": tasks} for shots, tasks in sorted(groups.items())],
        "metrics": {task.name: task.metric for task in cfg.eval.tasks},
        "leaderboard": bool(cfg.eval.leaderboard),
        "target": None if cfg.target is None else {"model_id": cfg.target.model_id, "scores": dict(cfg.target.scores),
                                                   "source": cfg.target.source},
        "evaluated_run": inputs.model_source.get("run_dir"),
    }
