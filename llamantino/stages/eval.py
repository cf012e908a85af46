"""The eval stage: lm-evaluation-harness on a run's output or a model, per few-shot count.

The run directory holds ``eval.json`` (the plan: model, tasks grouped by few-shot count, batch
size) and, for local task definitions, their YAMLs under ``eval_tasks/``; the job runs
``python -m llamantino.job.evaluate .`` (``llamantino/job/evaluate.py``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from llamantino.errors import ConfigError
from llamantino.inputs.resolve import MODEL_LINK, Inputs, base_model, from_adapter_output, is_run, read_run, unfinished
from llamantino.config.method import BF16_BYTES, Method, io_hours, model_gpus, model_ram_gb
from llamantino.paths import DATASETS_DIR, PROJECT_ROOT
from llamantino.records.rundir import RunDir
from llamantino.render.lmeval import model_args_text
from llamantino.config.schema import EvalConfig, EvalDtype, EvalMode, LlamantinoConfig
from llamantino.config.schema import to_plain
from llamantino.records.provenance import ModelSource, OutputKind, Provenance, RunOutput, SourceKind
from llamantino.stages.base import HubRead, Stage, Work

# What `llamantino plan` assumes of an eval job (printed with each plan line that uses them).
EVAL_MFU = 0.30  # batched forward passes of lm-eval; --mfu and --calibrate apply to training only
EVAL_ITEMS = 10_000  # items of an eval task whose data is not in the project (read from the hub)
EVAL_CHOICES = 4  # loglikelihood requests per item (multiple choice)
EVAL_EXAMPLE_TOKENS = 150  # tokens of one question with its answer (one shot of the prompt)



def _active_note(model) -> str:
    """How the eval formula counts a mixture of experts' N: the parameters a token goes through."""
    return f" (N = {model.active_b:g}B active of {model.params_b:g}B)" if model.experts else ""

class EvalStage(Stage):
    task = "eval"
    command = ("-m", "llamantino.job.evaluate", ".")
    plan_file = RunDir.EVAL_PLAN

    def name_parts(self, cfg: LlamantinoConfig) -> list[str]:
        return [cfg.model.name, cfg.eval.name]

    def inputs(self, cfg: LlamantinoConfig, method: Method | None, tiny_dir, known_runs: dict) -> Inputs:
        if cfg.run.input_model and is_run(Path(cfg.run.input_model).expanduser(), known_runs):
            return run_output(Path(cfg.run.input_model).expanduser(), known_runs)
        return base_model(cfg, tiny_dir, known_runs)

    def render(self, cfg, method, inputs, notices):
        files = materialise_tasks(cfg.eval, inputs)
        files[RunDir.EVAL_PLAN] = json.dumps(eval_plan(cfg, inputs), indent=2) + "\n"
        return None, files

    def validate(self, cfg, recipe, files):
        """Every task known to the installed lm-eval, every rendered command parsed by its own parser."""
        check_tasks(cfg.eval)
        check_commands(json.loads(files[RunDir.EVAL_PLAN]))

    def output(self, cfg, method, inputs, recipe):
        return RunOutput(kind=OutputKind.eval_results, path=RunDir.RESULTS_JSON)

    def reads_hub(self, cfg, provenance: Provenance) -> bool:
        hub_tasks = [task.name for task in cfg.eval.tasks if task.name not in tasks_with_local_data(cfg.eval)]
        return super().reads_hub(cfg, provenance) or bool(hub_tasks)

    def prepare_command(self, run):
        """Download the datasets of the eval tasks (lm-eval's own task loader) into the HF cache."""
        import sys

        plan = json.loads((run / RunDir.EVAL_PLAN).read_text())
        tasks = [task for group in plan["groups"] for task in group["tasks"]]
        code = ("import sys; from lm_eval.tasks import TaskManager, get_task_dict; "
                "get_task_dict(sys.argv[2:], TaskManager(include_path=sys.argv[1] or None))")
        return [sys.executable, "-c", code, plan["include_path"] or "", *tasks], {"eval_tasks": tasks}

    def shape(self, cfg, method):
        """A model that fits one GPU: one copy per GPU of a node (data-parallel); a larger one: the GPUs
        that hold it, model-sharded (70B in bf16 on 64 GB A100s: three)."""
        if not cfg.hardware.gpu:
            return super().shape(cfg, method)
        layout = eval_layout(cfg)
        return self.sized_shape(cfg, layout.gpus, model_ram_gb(cfg.model.params_b) * layout.processes)

    def work(self, cfg, shape):
        """Forward FLOPs 2·N·T over the tasks' tokens at an assumed utilisation, and the model's load."""
        hw = cfg.hardware
        if not hw.gpu or not hw.peak_tflops:
            raise ConfigError(f"hardware {hw.name} has no GPU peak throughput to plan an eval with; choose a GPU "
                              "hardware option (hardware=leonardo_booster, a100_80gb_x1, ...)")
        tokens, parts = eval_tokens(cfg)
        flops = 2 * cfg.model.active_b * 1e9 * tokens  # a mixture of experts: the active parameters
        gpus = shape.nodes * shape.gpus_per_node
        compute_s = flops / (gpus * hw.peak_tflops * 1e12 * EVAL_MFU)
        load_hours, load_how = io_hours(hw, cfg.model.params_b * BF16_BYTES)
        return Work(load_hours + compute_s / 3600,
                    f"2·N·T forward{_active_note(cfg.model)} = {flops:.3e} FLOPs over T = {tokens:.3e} tokens ({'; '.join(parts)}) / ({gpus} GPUs "
                    f"x {hw.peak_tflops:g} TFLOP/s x {EVAL_MFU:.0%} MFU, assumed) + model load: {load_how}",
                    tokens=tokens, flops=flops)

    def hub_reads(self, cfg, inputs) -> list[str]:
        reads = super().hub_reads(cfg, inputs)
        hub_tasks = [task.name for task in cfg.eval.tasks if task.name not in tasks_with_local_data(cfg.eval)]
        if hub_tasks:
            reads.append(HubRead("eval_tasks", tasks=tuple(hub_tasks)))
        return reads


@dataclass(frozen=True)
class EvalLayout:
    """How an eval job spreads over GPUs: ``processes`` copies of the model (data-parallel, launched
    with ``accelerate launch``), each over ``gpus // processes`` GPUs (model-sharded when more than one)."""

    processes: int
    gpus: int

    @property
    def sharded(self) -> bool:
        return self.gpus > self.processes


def eval_layout(cfg: LlamantinoConfig) -> EvalLayout:
    hw = cfg.hardware
    if not hw.gpu:
        return EvalLayout(processes=1, gpus=0)
    # eval.dtype=float32 holds twice the bytes of the 16-bit weights model_gpus counts
    wide = 2 if cfg.eval.dtype == EvalDtype.float32 else 1
    per_copy = model_gpus(cfg.model.params_b * wide, hw.gpu_memory_gb)
    if per_copy > 1 or not cfg.eval.data_parallel:
        return EvalLayout(processes=1, gpus=per_copy)
    return EvalLayout(processes=hw.gpus_per_node, gpus=hw.gpus_per_node)


def run_output(path: Path, known_runs: dict) -> Inputs:
    """What an eval reads from a run: its merged/full model, or its base plus adapter."""
    key = str(path.resolve())
    state = unfinished(path, known_runs, "not finished")
    if state is not None:
        raise ConfigError(f"run.input_model={path} has no finished output to evaluate (state: {state})")
    output = read_run(path, known_runs).output
    source = ModelSource(kind=SourceKind.run, run_dir=key, output=output)
    if output.kind == OutputKind.model:
        return Inputs(base_model=MODEL_LINK, model_source=source, links={MODEL_LINK: str((path / output.path).resolve())})
    if output.kind != OutputKind.adapter:
        raise ConfigError(f"run.input_model={path} produced nothing to evaluate")
    return from_adapter_output(output, source, str((path / output.path).resolve()))


#: Task definitions as the harness had them in spring 2024 (assumed for the leaderboard, whose harness
#: commit is recorded nowhere), used in place of the installed ones in eval.mode=leaderboard
#: (datasets_ita/eval/leaderboard/arc_it.yaml says what changed).
LEADERBOARD_TASKS = DATASETS_DIR / "eval" / "leaderboard"


def local_task_files(eval_cfg: EvalConfig) -> dict[str, Path]:
    """Task name -> YAML file of the tasks the run defines itself: the eval group's include_path and,
    in leaderboard mode, the vendored definitions of the tasks it names."""
    tasks = {}
    if eval_cfg.mode == EvalMode.leaderboard:
        named = {task.name for task in eval_cfg.tasks}
        tasks.update({name: path for name, path in _tasks_in(LEADERBOARD_TASKS).items() if name in named})
    include = eval_cfg.include_path
    if include:
        folder = Path(include) if Path(include).is_absolute() else PROJECT_ROOT / include
        if not folder.is_dir():
            raise ConfigError(f"eval.include_path={include!r} is not a folder")
        tasks.update(_tasks_in(folder))
    return tasks


def _tasks_in(folder: Path) -> dict[str, Path]:
    tasks = {}
    for path in sorted(folder.glob("*.yaml")):
        task = (yaml.safe_load(path.read_text()) or {}).get("task")
        if task:
            tasks[task] = path
    return tasks


def tasks_with_local_data(eval_cfg: EvalConfig) -> set[str]:
    """Local tasks whose data ships with the project (``dataset_kwargs.data_files``); the others,
    vendored definitions included, read their dataset from the hub."""
    return {name for name, path in local_task_files(eval_cfg).items()
            if (yaml.safe_load(path.read_text()).get("dataset_kwargs") or {}).get("data_files")}


@lru_cache(maxsize=None)
def _known_tasks(include: tuple[str, ...]) -> frozenset:
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_path=list(include) or None).all_tasks)


def eval_tokens(cfg: LlamantinoConfig) -> tuple[float, list[str]]:
    """Tokens the eval forwards: per task items x choices x (few-shot + 1) x tokens per example."""
    local = tasks_with_local_data(cfg.eval)
    files = local_task_files(cfg.eval)
    total, parts = 0.0, []
    for task in cfg.eval.tasks:
        items = _local_items(files[task.name]) if task.name in local else None
        known = items is not None
        items = items if known else EVAL_ITEMS
        limit = cfg.eval.limit
        if limit is not None:
            items = min(items, limit) if limit >= 1 else items * limit
        tokens = items * EVAL_CHOICES * (task.num_fewshot + 1) * EVAL_EXAMPLE_TOKENS
        total += tokens
        parts.append(f"{task.name}: {items:,.0f} items ({'its data file' if known else 'assumed'}) x {EVAL_CHOICES} "
                     f"choices x ({task.num_fewshot}+1) shots x {EVAL_EXAMPLE_TOKENS} tokens")
    return total, parts


def _local_items(task_file) -> int | None:
    """Rows of a project task's JSONL data file (its test split), or None when it has none to count."""
    spec = yaml.safe_load(task_file.read_text()) or {}
    data_files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
    split = data_files.get(spec.get("test_split")) if isinstance(data_files, dict) else data_files
    if not isinstance(split, str):
        return None
    path = task_file.parent / split
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else None


def check_tasks(eval_cfg: EvalConfig) -> None:
    """Unknown task names fail here, before anything is written or submitted."""
    known = _known_tasks(tuple(sorted({str(path.parent) for path in local_task_files(eval_cfg).values()})))
    for task in eval_cfg.tasks:
        if task.name not in known:
            close = difflib.get_close_matches(task.name, sorted(known), n=5)
            raise ConfigError(f"eval {eval_cfg.name}: lm-eval has no task {task.name!r}"
                              + (f"; close: {', '.join(close)}" if close else ""))


def check_commands(plan: dict) -> None:
    """The job's commands parse with the installed lm-eval (and accelerate, data-parallel), so a
    rendered eval job cannot fail on its own command line."""
    from llamantino.render.lmeval import lm_eval_argv, parse_eval_argv

    for group in plan["groups"]:
        parse_eval_argv(lm_eval_argv(plan, group))


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


def harness_settings(cfg: LlamantinoConfig) -> dict:
    """What the scores depend on besides the model and the tasks, by mode.

    leaderboard: the harness behaviour of spring 2024, when the published scores were made (the
    leaderboard's own harness commit is recorded nowhere: its commands name none and its result files
    say ``"versions": null``): the leaderboard's commands (no dtype, so the checkpoint's own; batch
    size auto:2), no BOS token for causal models (the harness then), and arc_it version 1.0, the
    definition before lm-eval f27c405 (2024-05-02), vendored (which version the leaderboard ran is
    not recorded; the LLaMAntino-2 rows were uploaded on 2024-05-13, after that change). current:
    the installed harness's behaviour, bf16 on GPUs. ``eval.dtype`` replaces either mode's dtype
    (leaderboard: the result files of every swap-uniba model say bfloat16, though the commands pass none).
    """
    gpu = cfg.hardware.gpu
    if cfg.eval.mode == EvalMode.leaderboard:
        return {"mode": "leaderboard", "add_bos_token": False, "dtype": str(cfg.eval.dtype or "auto")}
    dtype = ("bfloat16" if cfg.hardware.bf16 else "float16") if gpu else "auto"
    return {"mode": "current", "add_bos_token": None, "dtype": str(cfg.eval.dtype or dtype)}


def eval_plan(cfg: LlamantinoConfig, inputs: Inputs) -> dict:
    """What the eval job runs: one lm-eval call per few-shot count, on the resolved model."""
    settings = harness_settings(cfg)
    layout = eval_layout(cfg)
    model_args = {"pretrained": inputs.base_model}
    if inputs.base_model_revision:
        model_args["revision"] = inputs.base_model_revision
    if inputs.adapter:
        model_args["peft"] = inputs.adapter
    if settings["dtype"] != "auto":
        model_args["dtype"] = settings["dtype"]
    if settings["add_bos_token"] is not None:
        model_args["add_bos_token"] = str(settings["add_bos_token"])
    if layout.sharded:
        model_args["parallelize"] = "True"  # layers spread over the job's GPUs (accelerate device_map)
    groups: dict[int, list[str]] = {}
    for task in cfg.eval.tasks:
        groups.setdefault(int(task.num_fewshot), []).append(task.name)
    local = local_task_files(cfg.eval)
    return {
        "eval": cfg.eval.name,
        "model": to_plain(inputs.model_source),
        "model_args": model_args_text(model_args),
        "device": ("cuda" if layout.processes > 1 else "cuda:0") if cfg.hardware.gpu else "cpu",
        "processes": layout.processes,
        "gpus": layout.gpus,
        "batch_size": str(cfg.eval.batch_size),
        "limit": cfg.eval.limit,
        "log_samples": bool(cfg.eval.log_samples),
        "include_path": RunDir.EVAL_TASKS if local else None,
        "harness": {**settings, "batch_size": str(cfg.eval.batch_size),
                    "vendored_tasks": sorted(name for name, path in local.items() if path.parent == LEADERBOARD_TASKS)},
        "groups": [{"num_fewshot": shots, "tasks": tasks} for shots, tasks in sorted(groups.items())],
        "metrics": {task.name: task.metric for task in cfg.eval.tasks},
        "leaderboard": bool(cfg.eval.leaderboard),
        "target": None if cfg.target is None else {"model_id": cfg.target.model_id, "scores": dict(cfg.target.scores),
                                                   "source": cfg.target.source},
        "evaluated_run": inputs.model_source.run_dir,
    }
