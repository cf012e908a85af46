"""Pipelines: ordered stages, each its own run directory and job, each consuming the last one's output.

``python -m llamantino pipeline=llamantino2 model=llama2_7b hardware=leonardo_booster launcher=slurm``

1. Every step is composed (the command line's overrides + the step's own), built by its stage type
   and validated, lineage included (an adapter must be merged before a stage trains on it), and
   the launcher checks every step to run, before anything is written or submitted.
2. Steps are written to ``<output_root>/pipelines/<run.name>/<step>`` with the manifest. The
   directory name has no timestamp: relaunching the same command finds it.
3. The launcher starts them: ``local`` in order; ``slurm`` chained with ``--dependency=afterok``
   (``--kill-on-invalid-dep=yes``: when a step fails, the steps after it are cancelled).

On relaunch a step that completed with the same recipe is skipped, a step that is queued or
running is not submitted again (later steps depend on its job), and a failed or cancelled step is
rendered afresh (its old directory is kept as ``<step>.attempt-N``). The same pipeline started twice
at once is this relaunch too: the second command waits for the first's lock (records/lock.py), then
finds every step queued and submits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamantino.config.compose import compose_config
from llamantino.config.schema import LlamantinoConfig, PipelineStep
from llamantino.errors import ConfigError, LlamantinoError
from llamantino.launchers import LaunchPlan, launcher_for
from llamantino.orchestrate.runs import build, output_root
from llamantino.records.jobstate import JobState
from llamantino.records.lock import directory_lock
from llamantino.records.rundir import PipelineDir
from llamantino.stages import PreparedRun, stage_for

# Overrides that describe the pipeline as a whole and must not reach its steps.
_PIPELINE_KEYS = ("pipeline=", "+pipeline=", "run.name=", "run.input_model=", "run.input_adapter=")


@dataclass
class PlannedStep:
    name: str
    run: PreparedRun
    state: JobState  # where the step's directory stands now: NEW, WRITTEN, COMPLETED, RUNNING, ...
    action: str  # run, skip (completed with the same recipe) or wait (queued or running)


def _step_input(steps: list[PipelineStep], index: int, pipeline: PipelineDir) -> Path | None:
    step, names = steps[index], [s.name for s in steps]
    source = step.input or "previous"
    if source == "base" or (source == "previous" and index == 0):
        return None
    if source == "previous":
        return pipeline.step(steps[index - 1].name).path
    if source in names[:index]:
        return pipeline.step(source).path
    raise ConfigError(f"pipeline step {step.name}: input={source!r} must be base, previous or an earlier step")


def _strip_header(text: str | None) -> str | None:
    """A recipe without its comment header (which records the command line, not the recipe)."""
    if text is None:
        return None
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def plan_steps(cfg: LlamantinoConfig, overrides: list[str], choices: dict, pipeline: PipelineDir) -> list[PlannedStep]:
    """Compose, build and validate every step; decide for each: skip, wait (queued) or run."""
    steps = cfg.pipeline.steps
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"pipeline {cfg.pipeline.name}: step names must be unique, got {names}")
    base = [o for o in overrides if not o.startswith(_PIPELINE_KEYS)]
    launcher = launcher_for(cfg)
    known: dict[str, dict] = {}
    planned: list[PlannedStep] = []
    for index, step in enumerate(steps):
        input_dir = _step_input(steps, index, pipeline)
        input_key = stage_for(compose_config(base + list(step.overrides))).input_key
        if input_key != "input_model" and input_dir is None:
            raise ConfigError(f"pipeline step {step.name} needs run.{input_key} but has no earlier step to take it from")
        step_overrides = base + list(step.overrides) + [f"run.name={cfg.run.name}-{step.name}",
                                                        f"run.output_root={output_root(cfg)}"]
        if input_dir is not None:
            step_overrides.append(f"run.{input_key}={input_dir}")
        run_dir = pipeline.step(step.name)
        recorded = [o for o in overrides if not o.startswith(("run.input_model=", "run.input_adapter="))]
        try:
            run = build(compose_config(step_overrides), run_dir.path, overrides=recorded + list(step.overrides),
                        choices=choices, known_runs=known)
        except LlamantinoError as exc:
            raise type(exc)(f"pipeline step {step.name}: {exc}") from None
        state = launcher.state(run_dir)
        same = _strip_header(run_dir.read_text(run.stage.plan_file)) == _strip_header(run.files.get(run.stage.plan_file))
        if state.done and not same:
            raise ConfigError(
                f"pipeline step {step.name} already completed in {run_dir.path} with a different recipe; "
                "start a new pipeline with run.name=<new name> (or remove that step's directory)"
            )
        if state.active and not same:
            raise ConfigError(f"pipeline step {step.name} is {state} in SLURM with a different recipe; "
                              "cancel it (scancel) or use a new run.name")
        action = "skip" if state.done else ("wait" if state.active else "run")
        known[str(run_dir.path.resolve())] = run.provenance
        planned.append(PlannedStep(step.name, run, state, action))
    return planned


def run_pipeline(cfg: LlamantinoConfig, overrides: list[str], choices: dict, echo=print) -> Path:
    """Plan, check, write and launch a pipeline; returns the pipeline directory.

    The pipeline's lock is held from planning to the last submission: the same pipeline started
    again meanwhile waits, then plans against this one's steps (queued: not submitted again)."""
    pipeline = PipelineDir(output_root(cfg) / "pipelines" / cfg.run.name)
    with directory_lock(pipeline.path, echo):
        planned = plan_steps(cfg, overrides, choices, pipeline)

        def write(launcher) -> None:
            pipeline.write_manifest({
                "pipeline": cfg.pipeline.name,
                "description": cfg.pipeline.description,
                "launcher": str(cfg.launcher.name),
                "steps": [{"name": step.name, "run_dir": str(step.run.run_dir.path), "stage": step.run.cfg.stage.name,
                           "action": step.action} for step in planned],
            })
            for step in planned:
                if step.action == "run":
                    if step.run.run_dir.path.exists():
                        step.run.run_dir.retire()
                    step.run.write()
                echo(f"step {step.name:12} {step.action:5} {step.state:10} {step.run.run_dir.path}")
            for step in planned:
                if step.action == "wait":
                    echo(f"step {step.name}: already queued or running as job {step.run.run_dir.job_id()}; "
                         "not submitted again")

        plan = LaunchPlan(
            runs=[step.run for step in planned], write=write,
            after={index: [index - 1] for index in range(1, len(planned))},  # each step after the one before it
            skip={index for index, step in enumerate(planned) if step.action == "skip"},
            jobs={index: step.run.run_dir.job_id() for index, step in enumerate(planned) if step.action == "wait"},
            label=lambda index: f"step {planned[index].name}",
        )
        launcher_for(cfg, echo).launch(plan)
    return pipeline.path
