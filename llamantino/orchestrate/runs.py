"""One stage from config to job: build (stage type) -> launch plan -> the launcher's one sequence.

The main command's single-run path and ``llamantino launch`` for a run directory written earlier;
pipelines (``pipeline.py``) and sweeps (``sweep.py``) build their plans from the same pieces.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from llamantino.config.schema import LauncherName, LlamantinoConfig
from llamantino.launchers import LAUNCHERS, LaunchPlan, launcher_for
from llamantino.records.rundir import RunDir, unique_path
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
    run = build(cfg, new_run_dir(cfg), overrides=overrides, choices=choices)

    def write(launcher) -> None:
        run.write()
        echo(f"wrote {run.run_dir.path}: {', '.join(sorted(name for name in run.files if '/' not in name))}")

    launcher_for(cfg, echo).launch(LaunchPlan(runs=[run], write=write))
    return run.run_dir


def start_written(run: RunDir, launcher: str | None, echo=print) -> None:
    """Start a run directory written earlier, with its own launcher or the one named."""
    name = LauncherName(launcher) if launcher else run.config().launcher.name
    LAUNCHERS[name](echo=echo).start_written(run)
