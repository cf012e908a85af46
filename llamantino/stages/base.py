"""The stage type: one class per kind of stage (train, merge, eval), each owning what differs.

:meth:`Stage.build` is the one fixed sequence every stage goes through (NeMo Launcher style):

    method -> inputs -> render -> validate -> output record -> provenance -> files

Subclasses fill in the steps; nothing outside ``llamantino/stages/`` asks which kind a stage is:
other code asks the stage type of a config or of a written run (``stage_for``). ``build`` reads the
file system (data files, earlier runs) and calls Axolotl's validation, but writes nothing: every
check that can fail runs before the run directory exists.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from llamantino.config.method import Method
from llamantino.config.schema import LlamantinoConfig, Tracker, to_plain
from llamantino.inputs.resolve import Inputs
from llamantino.records.provenance import (Provenance, RunOutput, SourceKind, build_provenance, git_state,
                                           package_versions)
from llamantino.records.rundir import RunDir
from llamantino.render.sbatch import JobShape


@dataclass(frozen=True)
class HubRead:
    """Something a stage's job downloads from the hub (on an offline cluster a download job fetches it first)."""

    kind: str  # model, dataset or eval_tasks
    repo: str | None = None
    revision: str | None = None
    subset: str | None = None
    split: str | None = None
    tasks: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind == "eval_tasks":
            return f"the datasets of eval tasks {', '.join(self.tasks)}"
        return f"{'data' if self.kind == 'dataset' else self.kind} {self.repo}"


@dataclass
class PreparedRun:
    """A rendered, validated run, ready to be written to ``run_dir`` and launched."""

    cfg: LlamantinoConfig
    run_dir: RunDir
    stage: "Stage"
    method: Method | None
    inputs: Inputs
    recipe: dict | None
    provenance: Provenance
    files: dict[str, str | bytes] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def links(self) -> dict[str, str]:
        return self.inputs.links

    @property
    def command(self) -> list[str]:
        """The stage command after the Python executable, run from inside the run directory."""
        return list(self.stage.command)

    @property
    def output(self) -> RunOutput:
        return self.provenance.output

    @property
    def shape(self) -> JobShape:
        return self.stage.shape(self.cfg, self.method)

    def write(self) -> Path:
        return self.run_dir.write(self.files, self.links)


@dataclass(frozen=True)
class Work:
    """A job's wall clock as its stage type estimates it, and how (printed with the plan)."""

    hours: float
    formula: str
    tokens: float | None = None
    flops: float | None = None


class Stage:
    """Base of the stage types; see the module docstring for the sequence.

    A stage type declares its own ``task`` (the name ``stage.task`` selects it by; unique in the
    registry, ``llamantino/stages/__init__.py``) and ``command``.
    """

    task: ClassVar[str]
    command: ClassVar[tuple[str, ...]]  # after the Python executable, run from inside the run directory
    plan_file: ClassVar[str] = RunDir.RECIPE  # the file that says what the job runs (compared on relaunch)
    checkpoints: ClassVar[bool] = False  # writes training checkpoints: storage guard, requeue at the time limit
    costed: ClassVar[bool] = False  # trains: `llamantino plan` costs it by FLOPs (others: work())
    input_key: ClassVar[str] = "input_model"  # the run.* key a pipeline sets to the previous step's directory

    # --- the steps a stage type fills in -------------------------------------------------------

    def name_parts(self, cfg: LlamantinoConfig) -> list[str]:
        """The default run name's parts after the stage name."""
        return [cfg.model.name]

    def method(self, cfg: LlamantinoConfig, overrides: list[str]) -> tuple[LlamantinoConfig, Method | None]:
        return cfg, None

    def inputs(self, cfg: LlamantinoConfig, method: Method | None, tiny_dir, known_runs: dict) -> Inputs:
        raise NotImplementedError

    def render(self, cfg: LlamantinoConfig, method: Method | None, inputs: Inputs,
               notices: list[str]) -> tuple[dict | None, dict[str, str | bytes]]:
        """(the Axolotl recipe, if the stage has one; the other files that describe what the job runs). Pure."""
        raise NotImplementedError

    def validate(self, cfg: LlamantinoConfig, recipe: dict | None, files: dict[str, str | bytes]) -> None:
        """Refuse what the job would fail on: by default Axolotl's own validation of the recipe, as the
        target hardware would run it."""
        if recipe is not None:
            from llamantino.render.validate import validate_recipe

            validate_recipe(recipe, cfg.hardware)

    def output(self, cfg: LlamantinoConfig, method: Method | None, inputs: Inputs, recipe: dict | None) -> RunOutput:
        """What the run produces, for the next stage's lineage checks."""
        return RunOutput()

    def work(self, cfg: LlamantinoConfig, shape: JobShape) -> "Work | None":
        """What a job that does not train takes, for `llamantino plan` (billing is the planner's); None:
        no cost model. Training is costed by FLOPs (orchestrate/costs.py plan)."""
        return None

    def shape(self, cfg: LlamantinoConfig, method: Method | None) -> JobShape:
        """One process on one node, with the hardware option's GPUs and CPUs (merge, eval)."""
        hw = cfg.hardware
        return JobShape(nodes=1, processes_per_node=1, gpus_per_node=hw.gpus_per_node if hw.gpu else 0,
                        cpus_per_node=hw.cpus_per_node, mem=hw.slurm.mem, distributed=False, requeue=False)

    def sized_shape(self, cfg: LlamantinoConfig, gpus: int, ram_gb: int) -> JobShape:
        """One process asking for ``gpus`` GPUs (0: host memory only), their share of the node's CPUs,
        and ``ram_gb`` of host memory: not the whole node (merge and eval use a part of one)."""
        from llamantino.errors import ConfigError
        from llamantino.config.method import mem_gb

        hw = cfg.hardware
        if not hw.gpu:
            return self.shape(cfg, None)
        if gpus > hw.gpus_per_node:
            raise ConfigError(f"model {cfg.model.name} ({cfg.model.params_b:g}B) needs {gpus} GPUs of "
                              f"{hw.gpu_memory_gb:g} GB, more than one node of {hw.name} has ({hw.gpus_per_node})")
        node_gb = mem_gb(hw.slurm.mem)
        if node_gb is not None and ram_gb > node_gb:
            raise ConfigError(f"model {cfg.model.name} needs {ram_gb} GB of host memory, more than a node of "
                              f"{hw.name} has ({hw.slurm.mem})")
        share = max(gpus, 1) / hw.gpus_per_node
        return JobShape(nodes=1, processes_per_node=1, gpus_per_node=gpus,
                        cpus_per_node=max(1, int(hw.cpus_per_node * share)) if gpus else hw.cpus_per_node,
                        mem=f"{ram_gb}G", distributed=False, requeue=False)

    def hub_reads(self, cfg: LlamantinoConfig, inputs: Inputs) -> list[HubRead]:
        """What the stage's job would download from the hub (an offline cluster must fetch it first)."""
        source = inputs.model_source
        return [HubRead("model", source.hub_id, source.revision)] if inputs.reads_hub_model else []

    def reads_hub(self, cfg: LlamantinoConfig, provenance: Provenance) -> bool:
        """Whether a written run's job reads the hub (its model, or data it does not find prepared)."""
        data = provenance.data
        return provenance.model.kind == SourceKind.hub or (data is not None and data.hub_id is not None
                                                           and data.corpus is None)

    def prepare_command(self, run: RunDir) -> tuple[list[str] | None, dict]:
        """What `llamantino data prepare <run>` runs (after the downloads) so the job finds its data
        ready offline, and what the lock file records of it: by default Axolotl's preprocess of the
        recipe; no command when the downloads are all the job reads."""
        import sys

        return [sys.executable, "-m", "axolotl.cli.preprocess", RunDir.RECIPE], {}

    # --- the fixed sequence --------------------------------------------------------------------

    def build(self, cfg: LlamantinoConfig, run_dir: Path, *, overrides: list[str], choices: dict,
              validate: bool = True, known_runs: dict | None = None) -> PreparedRun:
        """Render and check one stage; raises LlamantinoError subclasses naming what is wrong."""
        from llamantino.inputs.tiny import tiny_model_dir

        cfg, method = self.method(cfg, overrides)
        notices = list(method.notices) if method else []
        inputs = self.inputs(cfg, method, tiny_model_dir, known_runs or {})
        recipe, files = self.render(cfg, method, inputs, notices)
        if validate:
            self.validate(cfg, recipe, files)
        if recipe is not None:
            from llamantino.render.axolotl import dump_yaml

            files[RunDir.RECIPE] = dump_yaml(recipe, recipe_header(cfg, overrides, notices))
        output = self.output(cfg, method, inputs, recipe)
        provenance = build_provenance(self.task, cfg, overrides, choices, method, inputs, output, notices,
                                      job_env(cfg, inputs, overrides, run_dir))
        files = {**inputs.files, **files}
        files[RunDir.CONFIG] = yaml.safe_dump(to_plain(cfg), sort_keys=False, allow_unicode=True)
        files[RunDir.PROVENANCE] = provenance.to_json()
        return PreparedRun(cfg=cfg, run_dir=RunDir(run_dir), stage=self, method=method, inputs=inputs, recipe=recipe,
                           provenance=provenance, files=files, notices=notices)


def run_tags(cfg: LlamantinoConfig, run_dir: Path | None = None) -> dict[str, str]:
    """The run's own tags for trackers: model, data, stage, git commit and, given where it is written,
    its name and group (each sweep point and pipeline step its own name; the command's overrides and
    the user's ``tracking.tags`` are added by each tracker's rules, llamantino/config/tracking.py)."""
    from llamantino.config.tracking import tracking_identity

    commit = git_state().get("commit")
    tags = {"model": cfg.model.name, "data": cfg.data.name, "stage": cfg.stage.name}
    tags.update({"git": commit[:12]} if commit else {})
    if run_dir is not None and cfg.run.name:
        name, group = tracking_identity(cfg.run.name, Path(run_dir))
        tags.update(run=name, group=group)
    return tags


def job_env(cfg: LlamantinoConfig, inputs: Inputs, overrides: list[str] = (),
            run_dir: Path | None = None) -> dict[str, str]:
    """Environment of the stage's process: no telemetry; offline when nothing needs the network; the
    tracker's mode, folder, run name, group and tags (its secrets come from the environment the job starts in)."""
    from llamantino.config.tracking import mlflow_tags, wandb_tags

    # Unbuffered: a log followed with `tail -f` shows each step as it happens, not in 8 KiB blocks.
    # No carriage-return bars from datasets in a job's log: the plugin prints progress as lines.
    env = {"AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    own = run_tags(cfg, run_dir)
    if cfg.tracking.name == Tracker.wandb:
        from llamantino.render.axolotl import tracker_mode

        # The run id comes from the run directory (the plugin's record); resume=allow continues it on requeue.
        env.update(WANDB_MODE=tracker_mode(cfg), WANDB_DIR=".", WANDB_RESUME="allow", WANDB_JOB_TYPE=cfg.stage.name,
                   WANDB_TAGS=",".join(wandb_tags({k: v for k, v in own.items() if k not in ("run", "group")},
                                                  overrides, cfg.tracking.tags)))
        if "run" in own:
            env.update(WANDB_NAME=own["run"], WANDB_RUN_GROUP=own["group"])
    elif cfg.tracking.name == Tracker.mlflow:
        if "run" in own:  # MLflow's own tag for the run's name (a random one otherwise)
            own["mlflow.runName"] = own["run"]
        env["MLFLOW_TAGS"] = json.dumps(mlflow_tags(own, overrides, cfg.tracking.tags), ensure_ascii=False)
    if cfg.hardware.storage.hf_home:  # the same HF_HOME as the prepare jobs (expanded by the job's shell)
        env["HF_HOME"] = cfg.hardware.storage.hf_home
    local_only = not inputs.reads_hub_model and (inputs.data is None or "local" in inputs.data
                                                 or inputs.prepared is not None)
    if cfg.hardware.offline or local_only:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def recipe_header(cfg: LlamantinoConfig, overrides: list[str], notices: list[str]) -> list[str]:
    """The comment block at the top of axolotl.yaml: what it is and how to re-create it.

    Built from the config and the overrides only, so an imported recipe renders byte-identical.
    """
    picked = " ".join(f"{group}={getattr(cfg, group).name}" for group in ("model", "data", "stage", "hardware"))
    versions = package_versions()
    lines = [
        f"llamantino {versions['llamantino']} recipe for Axolotl {versions['axolotl']}: "
        "re-render it rather than editing it",
        f"preset: {cfg.experiment or '-'}   {picked}",
        "re-create: python -m llamantino " + " ".join(shlex.quote(o) for o in overrides),
        "run it: from this directory, `axolotl train axolotl.yaml` (llamantino_plugin installed)",
    ]
    lines += [f"notice: {notice}" for notice in notices]
    return lines
