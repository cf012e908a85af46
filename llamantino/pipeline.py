"""Pipelines: ordered stages, each its own run directory and job, each consuming the last one's output.

``python -m llamantino pipeline=llamantino2 model=llama2_7b hardware=leonardo_booster launcher=slurm``

1. Every step is composed (the command line's overrides + the step's own), rendered and validated,
   lineage included (an adapter must be merged before a stage trains on it), before anything is
   written or submitted.
2. Steps are written to ``<output_root>/pipelines/<run.name>/<step>`` with ``pipeline.json``, the
   manifest. The directory name has no timestamp: relaunching the same command finds it.
3. Launch: ``local`` runs the steps in order; ``slurm`` chains them with ``--dependency=afterok``
   (``--kill-on-invalid-dep=yes``: when a step fails, the steps after it are cancelled).

On relaunch a step that completed with the same recipe is skipped, a step that is queued or
running is not submitted again (later steps depend on its job), and a failed or cancelled step is
rendered afresh (its old directory is kept as ``<step>.attempt-N``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llamantino.compose import compose_config
from llamantino.errors import ConfigError, LaunchError, LlamantinoError
from llamantino.finish import read_status, write_json

MANIFEST = "pipeline.json"
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")
# Overrides that describe the pipeline as a whole and must not reach its steps.
_PIPELINE_KEYS = ("pipeline=", "+pipeline=", "run.name=", "run.input_model=", "run.input_adapter=")


def step_overrides(base: list[str], step: dict, input_dir: Path | None, stage_is_merge: bool,
                   name: str, output_root: str) -> list[str]:
    overrides = [o for o in base if not o.startswith(_PIPELINE_KEYS)]
    overrides += list(step["overrides"]) + [f"run.name={name}-{step['name']}", f"run.output_root={output_root}"]
    if input_dir is not None:
        overrides.append(f"run.{'input_adapter' if stage_is_merge else 'input_model'}={input_dir}")
    return overrides


def step_state(step_dir: Path) -> str:
    """COMPLETED / FAILED from status.json, else the SLURM state of its last job, else NEW."""
    state = read_status(step_dir).get("state")
    if state:
        return state
    job = step_dir / "job.json"
    if job.is_file():
        from llamantino.status import slurm_job

        return slurm_job(json.loads(job.read_text())["job_id"]).get("JobState", "UNKNOWN")
    return "WRITTEN" if step_dir.exists() else "NEW"


def _recipe_of(step_dir: Path) -> str | None:
    for name in ("axolotl.yaml", "eval.json"):
        if (step_dir / name).is_file():
            return (step_dir / name).read_text()
    return None


def plan_steps(cfg: dict, overrides: list[str], choices: dict, pipeline_dir: Path) -> list[dict]:
    """Compose, render and validate every step; decide for each: skip, keep (queued) or run."""
    from llamantino.prepare import prepare_run

    steps = cfg["pipeline"]["steps"]
    names = [step["name"] for step in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"pipeline {cfg['pipeline']['name']}: step names must be unique, got {names}")
    known: dict[str, dict] = {}
    planned: list[dict] = []
    for index, step in enumerate(steps):
        source = step.get("input") or "previous"
        if source == "base" or (source == "previous" and index == 0):
            input_dir = None
        elif source == "previous":
            input_dir = pipeline_dir / steps[index - 1]["name"]
        elif source in names[:index]:
            input_dir = pipeline_dir / source
        else:
            raise ConfigError(f"pipeline step {step['name']}: input={source!r} must be base, previous or an earlier step")
        probe = compose_config([o for o in overrides if not o.startswith(_PIPELINE_KEYS)] + list(step["overrides"]))
        is_merge = probe["stage"]["task"] == "merge"
        if is_merge and input_dir is None:
            raise ConfigError(f"pipeline step {step['name']} merges an adapter but has no earlier step to take it from")
        step_cfg = compose_config(step_overrides(overrides, step, input_dir, is_merge, cfg["run"]["name"],
                                                 str(Path(cfg["run"]["output_root"]).resolve())))
        step_dir = pipeline_dir / step["name"]
        try:
            prepared = prepare_run(step_cfg, step_dir, overrides=step_cfg_overrides(overrides, step),
                                   choices=choices, validate=cfg["launcher"]["validate"], known_runs=known)
        except LlamantinoError as exc:
            raise type(exc)(f"pipeline step {step['name']}: {exc}") from None
        state = step_state(step_dir)
        old = _recipe_of(step_dir)
        new = prepared.files.get("axolotl.yaml") or prepared.files.get("eval.json")
        same = old is not None and _strip_header(old) == _strip_header(new)
        if state == "COMPLETED" and not same:
            raise ConfigError(
                f"pipeline step {step['name']} already completed in {step_dir} with a different recipe; "
                "start a new pipeline with run.name=<new name> (or remove that step's directory)"
            )
        action = "skip" if state == "COMPLETED" else ("wait" if state in ACTIVE_STATES and same else "run")
        if state in ACTIVE_STATES and not same:
            raise ConfigError(f"pipeline step {step['name']} is {state} in SLURM with a different recipe; "
                              "cancel it (scancel) or use a new run.name")
        known[str(step_dir.resolve())] = prepared.provenance
        planned.append({"name": step["name"], "dir": step_dir, "prepared": prepared, "state": state, "action": action})
    return planned


def step_cfg_overrides(overrides: list[str], step: dict) -> list[str]:
    """The overrides recorded in a step's recipe header: the pipeline command's and the step's."""
    return [o for o in overrides if not o.startswith(("run.input_model=", "run.input_adapter="))] + list(step["overrides"])


def _strip_header(text: str | None) -> str | None:
    """A recipe without its comment header (which records the command line, not the recipe)."""
    if text is None:
        return None
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def _retire(step_dir: Path) -> None:
    attempt = 1
    while (step_dir.parent / f"{step_dir.name}.attempt-{attempt}").exists():
        attempt += 1
    os.rename(step_dir, step_dir.parent / f"{step_dir.name}.attempt-{attempt}")


def write_manifest(pipeline_dir: Path, cfg: dict, planned: list[dict]) -> None:
    manifest = {
        "pipeline": cfg["pipeline"]["name"],
        "description": cfg["pipeline"]["description"],
        "launcher": cfg["launcher"]["name"],
        "steps": [{"name": p["name"], "run_dir": str(p["dir"]), "stage": p["prepared"].cfg["stage"]["name"],
                   "action": p["action"]} for p in planned],
    }
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    write_json(pipeline_dir / MANIFEST, manifest)


def run_pipeline(cfg: dict, overrides: list[str], choices: dict) -> Path:
    """Plan, write and launch a pipeline; returns the pipeline directory."""
    from llamantino.launch.local import run_local
    from llamantino.rundir import write_run_dir

    launcher = cfg["launcher"]
    pipeline_dir = Path(cfg["run"]["output_root"]).resolve() / "pipelines" / cfg["run"]["name"]
    planned = plan_steps(cfg, overrides, choices, pipeline_dir)
    if launcher["name"] == "slurm":
        from llamantino.launch.slurm import add_job_script, check_submittable

        for step in planned:
            if step["action"] == "run":
                check_submittable(step["prepared"].cfg, step["prepared"].inputs)
                add_job_script(step["prepared"])
    for step in planned:
        for notice in step["prepared"].notices:
            print(f"notice: step {step['name']}: {notice}")
    write_manifest(pipeline_dir, cfg, planned)
    for step in planned:
        if step["action"] == "run":
            if step["dir"].exists():
                _retire(step["dir"])
            write_run_dir(step["dir"], step["prepared"].files, step["prepared"].links)
        print(f"step {step['name']:12} {step['action']:5} {step['state']:10} {step['dir']}")
    if launcher["name"] == "local":
        for step in planned:
            if step["action"] != "run":
                continue
            if step["prepared"].inputs.build_tiny:
                from llamantino.tiny import ensure_tiny_model

                ensure_tiny_model()
            try:
                run_local(step["dir"], step["prepared"].stage_args)
            except LaunchError as exc:
                raise LaunchError(f"pipeline step {step['name']} failed; the steps after it did not run. {exc}") from None
    elif launcher["name"] == "slurm" and launcher["submit"]:
        _submit_chain(planned)
    return pipeline_dir


def _submit_chain(planned: list[dict]) -> None:
    from llamantino.launch.slurm import submit_run

    if any(step["prepared"].inputs.build_tiny for step in planned):
        from llamantino.tiny import ensure_tiny_model

        ensure_tiny_model()
    previous_job = None
    for step in planned:
        if step["action"] == "skip":
            previous_job = None
            continue
        if step["action"] == "wait":
            previous_job = json.loads((step["dir"] / "job.json").read_text())["job_id"]
            print(f"step {step['name']}: already queued or running as job {previous_job}; not submitted again")
            continue
        dependency = f"afterok:{previous_job}" if previous_job else None
        previous_job = submit_run(step["dir"], dependency=dependency)
        print(f"step {step['name']}: submitted job {previous_job}" + (f" ({dependency})" if dependency else ""))
