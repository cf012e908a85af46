"""The release run a ``llamantino release`` command names: found, or written and run from a model's run."""

from __future__ import annotations

from pathlib import Path

from llamantino.errors import ConfigError


def release_run(target: Path, overrides: list[str], echo=print):
    """The release run ``target`` names, or a new one made from it (run here, to the end)."""
    from llamantino.records.provenance import OutputKind
    from llamantino.records.rundir import PipelineDir, RunDir

    target = target.expanduser().resolve()
    if PipelineDir(target).is_pipeline():
        steps = [RunDir(step.run_dir) for step in PipelineDir(target).manifest().steps]
        released = [run for run in steps if run.is_run() and run.provenance().output.kind == OutputKind.release]
        if not released:
            raise ConfigError(f"pipeline {target} has no release step: release one of its steps (llamantino release "
                              f"{steps[-1].path if steps else '<step dir>'})")
        if overrides:
            raise ConfigError(f"{' '.join(overrides)}: a pipeline's release step is already written; overrides apply "
                              "only when releasing a run")
        return released[-1]
    run = RunDir(target)
    if not run.is_run():
        raise ConfigError(f"{target} is neither a run nor a pipeline directory written by llamantino")
    if run.provenance().output.kind == OutputKind.release:
        if overrides:
            raise ConfigError(f"{' '.join(overrides)}: {target} is a release already; overrides apply only when "
                              "releasing a run")
        return run
    from llamantino.config.compose import compose_config
    from llamantino.orchestrate.runs import start_run

    recorded = run.config()
    composed = ["stage=release", f"run.input_model={target}", f"run.output_root={recorded.run.output_root}",
                "launcher=local", f"hardware={recorded.hardware.name}", *overrides]
    return start_run(compose_config(composed), composed, {}, echo)


def push_target(run, repo_id: str | None, private: bool, revision: str | None) -> tuple[str, bool, str | None]:
    """(repository, private, branch) of a push: the command line's, else what the release recorded
    (release.repo_id, release.private, release.revision)."""
    recorded = run.release_plan().push
    repo_id = repo_id or recorded.repo_id
    if not repo_id:
        raise ConfigError(f"{run.path} records no release.repo_id: name the repository, --push <owner>/<name>")
    return repo_id, private or recorded.private, revision or recorded.revision
