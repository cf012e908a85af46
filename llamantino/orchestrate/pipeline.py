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
running is not submitted again (later steps depend on its job), a failed or cancelled step with the
same recipe resumes in its directory from its last complete checkpoint, and one whose recipe changed
is rendered afresh (its old directory is kept as ``<step>.attempt-N``). ``python -m llamantino
launch <pipeline dir>`` does the same without composing anything again. The same pipeline started twice
at once is this relaunch too: the second command waits for the first's lock (records/lock.py), then
finds every step queued and submits nothing.

Overrides on the command line reach every step (a step's own overrides win over them), except
``+pipeline.<step>=[...]``, a list of quoted overrides for that one step, applied after its own:

    python -m llamantino pipeline=llamantino2 '+pipeline.adapt=["data=it_web_mix","data.budget_margin=0.1"]'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamantino.config.compose import compose_config
from llamantino.config.schema import LlamantinoConfig, PipelineStep
from llamantino.errors import ConfigError, LlamantinoError, one_line, user_error
from llamantino.launchers import LaunchPlan, launcher_for
from llamantino.orchestrate.runs import build, output_root
from llamantino.records.jobstate import JobState
from llamantino.records.lock import directory_lock
from llamantino.records.rundir import PipelineDir
from llamantino.stages import PreparedRun, stage_for

# Overrides that describe the pipeline as a whole (or one step of it) and must not reach every step.
_PIPELINE_KEYS = ("pipeline=", "pipeline.", "run.name=", "run.input_model=", "run.input_adapter=")
STEP_SYNTAX = '+pipeline.<step>=["key=value",...]'


def pipeline_level(override: str) -> bool:
    return override.lstrip("+~").startswith(_PIPELINE_KEYS)


def step_overrides(cfg: LlamantinoConfig, overrides: list[str]) -> dict[str, list[str]]:
    """The command line's overrides of single steps, by step: ``+pipeline.<step>=[...]``.

    A step the pipeline does not have, or a value that is not a list of overrides, is refused in
    one line; each override is then composed into its step like the step's own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    names = [step.name for step in cfg.pipeline.steps]
    found: dict[str, list[str]] = {}
    for text in overrides:
        if not text.startswith(("+pipeline.", "++pipeline.")):
            continue
        override = OverridesParser.create().parse_overrides([text])[0]
        name = override.key_or_group.removeprefix("pipeline.")
        key = text.split("=", 1)[0]
        if name not in names:
            raise ConfigError(f"{key}: pipeline {cfg.pipeline.name} has no step {name!r}; its steps: "
                              f"{', '.join(names)} (one step's overrides: '{STEP_SYNTAX}')")
        value = override.value()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key} must be a list of quoted overrides, e.g. '+pipeline.{name}=[\"data=it_web_mix\","
                              f"\"stage.max_steps=100\"]'; got {value!r}")
        whole = [item for item in value if pipeline_level(item)]
        if whole:
            raise ConfigError(f"{key}: {whole[0]} describes the whole pipeline; put it on the command line itself")
        found.setdefault(name, []).extend(value)
    return found


def composed_steps(cfg: LlamantinoConfig, overrides: list[str],
                   per_step: dict[str, list[str]] | None = None) -> list[tuple[PipelineStep, list[str], list[str]]]:
    """Each step with the command line's overrides that reach it and its own (the step's, then its
    ``+pipeline.<step>`` list): composing ``base + own`` gives the step's config. Pure."""
    base = [o for o in overrides if not pipeline_level(o)]
    per_step = per_step or {}
    return [(step, base, list(step.overrides) + per_step.get(step.name, [])) for step in cfg.pipeline.steps]


@dataclass
class PlannedStep:
    name: str
    run: PreparedRun
    state: JobState  # where the step's directory stands now: NEW, WRITTEN, COMPLETED, RUNNING, ...
    action: str  # run, skip (completed with the same recipe), wait (queued or running) or resume (failed)


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


def plan_steps(cfg: LlamantinoConfig, overrides: list[str], choices: dict, pipeline: PipelineDir,
               per_step: dict[str, list[str]] | None = None, echo=lambda line: None) -> list[PlannedStep]:
    """Compose, build and validate every step; decide for each: skip, wait (queued) or run.
    ``per_step``: the command line's overrides of single steps (:func:`step_overrides`)."""
    steps = cfg.pipeline.steps
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"pipeline {cfg.pipeline.name}: step names must be unique, got {names}")
    launcher = launcher_for(cfg)
    known: dict[str, dict] = {}
    planned: list[PlannedStep] = []
    for index, (step, base, own) in enumerate(composed_steps(cfg, overrides, per_step)):
        input_dir = _step_input(steps, index, pipeline)
        run_dir = pipeline.step(step.name)
        echo(f"step {step.name} ({index + 1}/{len(steps)}): composing, rendering and checking with Axolotl")
        # the command line as it applies to this step: its +pipeline.<step> list is the step's own
        recorded = [o for o in overrides if not o.lstrip("+").startswith(("pipeline.", "run.input_model=",
                                                                           "run.input_adapter="))]
        try:
            input_key = stage_for(compose_config(base + own)).input_key
            if input_key != "input_model" and input_dir is None:
                raise ConfigError(f"needs run.{input_key} but has no earlier step to take it from")
            composed = base + own + [f"run.name={cfg.run.name}-{step.name}", f"run.output_root={output_root(cfg)}"]
            if input_dir is not None:
                composed.append(f"run.{input_key}={input_dir}")
            run = build(compose_config(composed), run_dir.path, overrides=recorded + own, choices=choices,
                        known_runs=known)
        except LlamantinoError as exc:
            raise type(exc)(f"pipeline step {step.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - Hydra's composition errors, named by step; bugs re-raised
            message = user_error(exc)
            if message is None:
                raise
            raise ConfigError(f"pipeline step {step.name}: {one_line(message)}") from None
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
        # A failed step with the same recipe resumes in its directory from its last complete checkpoint.
        action = ("skip" if state.done else "wait" if state.active else
                  "resume" if state.failed and same and run_dir.is_run() else "run")
        known[str(run_dir.path.resolve())] = run.provenance
        planned.append(PlannedStep(step.name, run, state, action))
    return planned


def run_pipeline(cfg: LlamantinoConfig, overrides: list[str], choices: dict, echo=print) -> Path:
    """Plan, check, write and launch a pipeline; returns the pipeline directory.

    The pipeline's lock is held from planning to the last submission: the same pipeline started
    again meanwhile waits, then plans against this one's steps (queued: not submitted again)."""
    pipeline = PipelineDir(output_root(cfg) / "pipelines" / cfg.run.name)
    per_step = step_overrides(cfg, overrides)  # refused before anything is locked or written
    with directory_lock(pipeline.path, echo):
        planned = plan_steps(cfg, overrides, choices, pipeline, per_step, echo)

        def write(launcher) -> None:
            pipeline.write_manifest({
                "pipeline": cfg.pipeline.name,
                "description": cfg.pipeline.description,
                "launcher": str(cfg.launcher.name),
                "steps": [{"name": step.name, "run_dir": str(step.run.run_dir.path), "stage": step.run.cfg.stage.name,
                           "action": step.action} for step in planned],
            })
            for step in planned:
                if step.action == "run":  # resume: the failed step's own directory starts again
                    if step.run.run_dir.path.exists():
                        step.run.run_dir.retire()
                    step.run.write()
                echo(f"step {step.name:12} {step.action:5} {step.state:10} {step.run.run_dir.path}")

        plan = LaunchPlan(
            runs=[step.run for step in planned], write=write, home=pipeline.path,
            after={index: [index - 1] for index in range(1, len(planned))},  # each step after the one before it
            skip={index for index, step in enumerate(planned) if step.action == "skip"},
            jobs={index: step.run.run_dir.job_id() for index, step in enumerate(planned) if step.action == "wait"},
            label=lambda index: f"step {planned[index].name}",
        )
        launcher_for(cfg, echo).launch(plan)
    return pipeline.path
