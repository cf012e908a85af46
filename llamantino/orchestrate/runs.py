"""One stage from config to job: build (stage type) -> launch plan -> the launcher's one sequence.

The main command's single-run path and ``llamantino launch`` for a directory written earlier (a run,
or the job graph of a run, pipeline or sweep); pipelines (``pipeline.py``) and sweeps (``sweep.py``)
build their plans from the same pieces. Each holds its directory's lock (records/lock.py) from
choosing the directory to the last submission, so a command running at the same time never writes
or submits it again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from pathlib import Path

from llamantino.config.schema import LauncherName, LlamantinoConfig
from llamantino.errors import ConfigError
from llamantino.launchers import LAUNCHERS, LaunchPlan, launcher_for
from llamantino.launchers.base import refuse_completed
from llamantino.records.jobgraph import graph_home, node_of, read_graph
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

            launcher_for(cfg, echo).launch(LaunchPlan(runs=[run], write=write, home=run_dir))
            return run.run_dir


def start_written(target: Path, launcher: str | None, echo=print, *, again: bool = False, dry_run: bool = False) -> None:
    """Start what a directory written earlier holds, with its own launcher or the one named.

    A pipeline or sweep directory: its recorded job graph (every job not done, each after what it
    waits on; a sweep's points that failed or never ran as one array), or, written by launcher=local
    or dry, its steps or points in order here (the done ones skipped). A run directory: the part of
    its own or its pipeline's graph it needs, else the run alone. A COMPLETED run is refused
    (``again``: a new run directory is written from it and started); what is queued or running is
    not started again; what failed resumes from its last complete checkpoint."""
    target = Path(os.path.abspath(target))
    pipeline, sweep = PipelineDir(target), SweepDir(target)
    if pipeline.is_pipeline() or sweep.is_sweep():
        if again:
            raise ConfigError(f"--again writes a new run from one run directory; {target} is a "
                              f"{'pipeline' if pipeline.is_pipeline() else 'sweep'}: run the command that wrote it "
                              "with a new run.name, or launch it as it is (its unfinished runs start)")
        own = pipeline.manifest().launcher if pipeline.is_pipeline() else sweep.record().launcher
        named = LauncherName(launcher or own)
        with directory_lock(target, echo):
            graph = read_graph(target)
            if graph is not None:
                LAUNCHERS[named](echo=echo).start_graph(target, graph, dry_run=dry_run)
            else:
                LAUNCHERS[named](echo=echo).start_members(target, dry_run=dry_run)
        return
    run = RunDir(target)
    own = run.config().launcher.name  # refuses a folder that is not a run before anything is locked
    named = LauncherName(launcher) if launcher else own
    if again:
        start_again(run, named, echo, dry_run)
        return
    home = graph_home(run.path)  # its pipeline's or sweep's lock covers it: their command submits it too
    with directory_lock(home, echo):
        starter = LAUNCHERS[named](echo=echo)
        graph = read_graph(home) if named == own else None  # another launcher starts the run alone
        node = node_of(graph, home, run) if graph else None
        if node is None:
            starter.start_written(run, dry_run=dry_run)  # refuses a COMPLETED run itself
        else:  # in its pipeline's graph a COMPLETED step is skipped; asked for by itself, it is refused
            refuse_completed(run, starter.state(run), run.job_id())
            starter.start_graph(home, graph, only={node}, dry_run=dry_run)


def start_again(run: RunDir, launcher: LauncherName, echo=print, dry_run: bool = False) -> RunDir | None:
    """``launch --again``: a new run directory written from a run's recorded config and overrides
    (rendered and checked afresh), its provenance naming the run it was derived from; then started."""
    cfg, provenance = run.config(), run.provenance()
    cfg = dataclasses.replace(cfg, launcher=dataclasses.replace(cfg.launcher, name=launcher, submit=True))
    if dry_run:
        echo(f"would write a new run directory from {run.path} under {output_root(cfg) / cfg.run.name} and start it "
             f"with launcher={launcher}")
        return None
    while True:
        run_dir = new_run_dir(cfg)
        with directory_lock(run_dir, echo):
            if run_dir.exists():
                continue
            new = build(cfg, run_dir, overrides=list(provenance.overrides), choices=dict(provenance.choices))
            new.provenance.derived_from = str(run.path)
            new.files[RunDir.PROVENANCE] = new.provenance.to_json()

            def write(launcher) -> None:
                new.write()
                echo(f"wrote {new.run_dir.path} (again, from {run.path})")

            launcher_for(cfg, echo).launch(LaunchPlan(runs=[new], write=write, home=run_dir))
            return new.run_dir
