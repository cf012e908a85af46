"""Hydra multirun: every point built and checked, then one sweep directory, then one launch.

The Hydra Launcher plugin (``hydra_plugins/llamantino_launcher``) calls :func:`run_sweep` once with
every point. Each point is composed and built by its stage type like a single run; the launcher
checks them all; only then is the sweep directory written, atomically (``<NNN>/`` per point,
``sweep.json``, and for SLURM ``job-array.sbatch``), and started: with ``launcher=slurm`` as ONE
job array (``--array=0-N%K``, K = launcher.array_parallelism) whose task i runs point i, without
waiting. A point that fails its checks leaves nothing written and nothing submitted. The same sweep
started twice at once (one ``hydra.sweep.dir``) is written and submitted once: the second command
waits for the first's lock (records/lock.py), finds the sweep with the same points and says so.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from llamantino.config.compose import typed
from llamantino.errors import ConfigError, LlamantinoError
from llamantino.launchers import LaunchPlan, launcher_for
from llamantino.records.lock import directory_locks
from llamantino.records.rundir import RunDir, SweepDir, unique_path, write_atomic
from llamantino.orchestrate.runs import build

GROUPS = ("model", "data", "stage", "hardware", "launcher", "eval", "pipeline", "experiment")


def choices_of(hydra_cfg) -> dict:
    """Which option each config group took."""
    return {group: value for group, value in hydra_cfg.runtime.choices.items() if group in GROUPS and value is not None}


HYDRA_RECORD = "multirun.yaml"  # Hydra's sweeper writes it into hydra.sweep.dir before any launcher runs


def _hydra_only(path: Path) -> bool:
    return path.is_dir() and {p.name for p in path.iterdir()} <= {HYDRA_RECORD}


def run_sweep(config, config_loader, job_overrides, initial_job_idx: int, echo=print) -> list:
    """Build and check every point, write the sweep directory at once, start it; Hydra's JobReturns.

    The sweep directory's lock (and Hydra's sweep directory's, when ``$VAR``s make them differ) is
    held from choosing the directory to the submission: an identical sweep started at the same time
    (the same ``hydra.sweep.dir``) waits, then finds this one written and submits nothing."""
    from llamantino.inputs.corpus import expand

    hydra_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))  # made by Hydra's sweeper, $VARs unexpanded
    target = Path(os.path.abspath(expand(str(config.hydra.sweep.dir), "run.output_root")))
    # A refused sweep removes its own folder below; the empty parents Hydra's sweeper made on the way
    # go with the leftovers callback (hydra_plugins/llamantino_launcher/leftovers.py).
    with directory_locks((target, hydra_dir), echo):
        return _locked_sweep(target, hydra_dir, config, config_loader, job_overrides, initial_job_idx, echo)


def _same_sweep(sweep: SweepDir, job_overrides, initial_job_idx: int) -> bool:
    """Whether ``sweep`` holds exactly these points (read back: a broken record is refused, one line)."""
    points = [(point.index, list(point.overrides)) for point in sweep.record().points]
    return points == [(initial_job_idx + offset, list(overrides)) for offset, overrides in enumerate(job_overrides)]


def _locked_sweep(target: Path, hydra_dir: Path, config, config_loader, job_overrides, initial_job_idx,
                  echo) -> list:
    adopt = _hydra_only(hydra_dir)  # the folder Hydra just made for this sweep: its record moves to the sweep
    existing = SweepDir(target)
    if not adopt and existing.is_sweep() and _same_sweep(existing, job_overrides, initial_job_idx):
        job = existing.record().job_id
        echo(f"sweep {target} already holds these points" + (f" (job array {job})" if job else "")
             + f"; not written or submitted again (python -m llamantino status {target}; to run it again, name "
             "another hydra.sweep.dir)")
        echo(f"run_dir: {target}")
        return []
    fresh = not target.exists() or (adopt and target == hydra_dir)
    sweep = SweepDir(target if fresh else unique_path(target.parent, target.name))
    try:
        return _run_sweep(sweep, hydra_dir if adopt else None, config, config_loader, job_overrides,
                          initial_job_idx, echo)
    except BaseException:
        if adopt and _hydra_only(hydra_dir):  # a sweep that failed its checks leaves nothing
            shutil.rmtree(hydra_dir, ignore_errors=True)
        raise


def _run_sweep(sweep: SweepDir, hydra_dir: Path | None, config, config_loader, job_overrides, initial_job_idx,
               echo) -> list:
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import open_dict, read_write

    runs, returns = [], []
    for offset, overrides in enumerate(job_overrides):
        index = initial_job_idx + offset
        if len(job_overrides) > 1:  # a long sweep renders and validates for minutes: say where it is
            echo(f"sweep point {offset + 1}/{len(job_overrides)}: composing, rendering and checking with Axolotl")
        point = config_loader.load_sweep_config(config, list(overrides))
        with open_dict(point):
            point.hydra.job.num = index
            point.hydra.job.id = str(index)
        task_cfg = copy.deepcopy(point)  # what Hydra's run_job hands a task: the config without its hydra node
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        try:
            cfg = typed(task_cfg)
            if cfg.pipeline is not None:
                raise ConfigError("a sweep of pipelines is not supported: sweep single stages, or run one pipeline "
                                  "per setting")
            runs.append(build(cfg, sweep.point(index).path, overrides=list(overrides), choices=choices_of(point.hydra)))
        except LlamantinoError as exc:
            raise type(exc)(f"sweep point {index} ({' '.join(overrides)}): {exc}") from None
        returns.append(JobReturn(overrides=list(overrides), cfg=point, hydra_cfg=point, working_dir=os.getcwd(),
                                 task_name="llamantino", status=JobStatus.COMPLETED, _return_value=str(sweep.path)))

    def before_write() -> dict:
        if hydra_dir is not None and (hydra_dir / HYDRA_RECORD).is_file():
            record = (hydra_dir / HYDRA_RECORD).read_text()  # Hydra's record of the sweep, kept
            shutil.rmtree(hydra_dir)
            return {HYDRA_RECORD: record}
        return {}

    launch_points(sweep, runs, echo, before_write=before_write)
    echo(f"run_dir: {sweep.path}")
    return returns


def launch_points(sweep: SweepDir, runs: list, echo=print, before_write=None) -> None:
    """Write ``runs`` as the points of sweep directory ``sweep`` (its record, the launcher's array
    script) through the launcher's one sequence, which starts them together (SLURM: one job array).
    ``before_write``: called just before the directory is written; the files it returns go in too."""
    if len({run.cfg.launcher.name for run in runs}) != 1:
        raise ConfigError("every point of a sweep must use the same launcher")
    launcher = launcher_for(runs[0].cfg, echo)
    record = {"launcher": str(runs[0].cfg.launcher.name),
              "points": [{"index": int(run.run_dir.name), "run_dir": run.run_dir.name,
                          "overrides": run.provenance.overrides} for run in runs]}

    def write(launcher) -> None:
        files, links = {}, {}
        for run in runs:
            files.update({f"{run.run_dir.name}/{name}": text for name, text in run.files.items()})
            links.update({f"{run.run_dir.name}/{name}": target for name, target in run.links.items()})
        files.update(launcher.sweep_files(sweep, runs))
        files[SweepDir.RECORD] = json.dumps(record, indent=2) + "\n"
        if before_write is not None:
            files.update(before_write())
        write_atomic(sweep.path, files, links,
                     dirs=(RunDir.LOGS, *(f"{run.run_dir.name}/{RunDir.LOGS}" for run in runs)))
        echo(f"wrote {sweep.path}: {len(runs)} points")

    launcher.launch(LaunchPlan(runs=runs, write=write, home=sweep.path, sweep=sweep,
                               label=lambda index: f"point {runs[index].run_dir.name}"))
