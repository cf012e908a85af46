"""One stage from config to job: build (stage type) -> launch plan -> the launcher's one sequence.

The main command's single-run path and ``llamantino launch`` for a run directory written earlier;
pipelines (``pipeline.py``) and sweeps (``sweep.py``) build their plans from the same pieces. Each
holds its directory's lock (records/lock.py) from choosing the directory to the last submission, so
a command running at the same time never writes or submits it again.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from llamantino.config.schema import LauncherName, LlamantinoConfig
from llamantino.launchers import LAUNCHERS, LaunchPlan, launcher_for
from llamantino.records.lock import directory_lock
from llamantino.records.rundir import PipelineDir, RunDir, SweepDir, unique_path
from llamantino.stages import PreparedRun, stage_for


def output_root(cfg: LlamantinoConfig) -> Path:
    """``run.output_root`` (the hardware option's ``storage.runs`` unless set), ``$VAR`` expanded."""
    from llamantino.inputs.corpus import expand

    return Path(os.path.abspath(expand(cfg.run.output_root, "run.output_root")))


def new_run_dir(cfg: LlamantinoConfig) -> Path:
    """``<output_root>/<run name>/<time>-<4 hex>``: a new, unique run directory."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return unique_path(output_root(cfg) / cfg.run.name, stamp)


def build(cfg: LlamantinoConfig, run_dir: Path, *, overrides: list[str], choices: dict | None = None,
          known_runs: dict | None = None) -> PreparedRun:
    """Render and check one stage with its stage type (nothing is written)."""
    return stage_for(cfg).build(cfg, run_dir, overrides=overrides, choices=choices or {},
                                validate=cfg.launcher.validate, known_runs=known_runs)


def start_run(cfg: LlamantinoConfig, overrides: list[str], choices: dict, echo=print) -> RunDir:
    """Build, check, write and launch one stage; returns its run directory."""
    while True:
        run_dir = new_run_dir(cfg)
        with directory_lock(run_dir, echo):
            if run_dir.exists():  # another command took the same name while this one waited for it
                continue
            run = build(cfg, run_dir, overrides=overrides, choices=choices)

            def write(launcher) -> None:
                run.write()
                echo(f"wrote {run.run_dir.path}: {', '.join(sorted(name for name in run.files if '/' not in name))}")

            launcher_for(cfg, echo).launch(LaunchPlan(runs=[run], write=write))
            return run.run_dir


def owning_directory(run: RunDir) -> Path:
    """The directory whose lock covers a run: its pipeline's or sweep's (whose command submits it), else its own."""
    parent = run.path.parent
    return parent if PipelineDir(parent).is_pipeline() or SweepDir(parent).is_sweep() else run.path


def start_written(run: RunDir, launcher: str | None, echo=print) -> None:
    """Start a run directory written earlier, with its own launcher or the one named; a run already
    submitted or started (by this command running twice, or by its pipeline) is not started again."""
    own = run.config().launcher.name  # refuses a folder that is not a run before anything is locked
    with directory_lock(owning_directory(run), echo):
        LAUNCHERS[LauncherName(launcher) if launcher else own](echo=echo).start_written(run)
