"""The launcher type: how prepared runs start. dry, local and slurm behind one interface.

    check(runs)              refuse before anything is written (a sweep or pipeline is checked whole)
    prepare(run)             add the launcher's own files to a run (slurm: job.sbatch)
    submit(run, after)       start one written run, after another job (returns a job id, if any)
    submit_array(sweep, runs) start a sweep's written points together (slurm: one job array)
    state(run)               where a run stands (COMPLETED, FAILED, RUNNING, ...)

The main command, pipelines, sweeps and ``python -m llamantino.launch`` all go through it.
"""

from __future__ import annotations

from typing import ClassVar

from llamantino.rundir import RunDir, SweepDir
from llamantino.schema import LauncherName
from llamantino.stages import PreparedRun


class Launcher:
    name: ClassVar[LauncherName]

    def __init__(self, echo=print) -> None:
        self.echo = echo

    def check(self, runs: list[PreparedRun]) -> None:
        """Refuse what cannot start; runs before anything is written."""

    def prepare(self, run: PreparedRun) -> None:
        """Add the launcher's files to a prepared run."""

    def sweep_files(self, sweep: SweepDir, runs: list[PreparedRun]) -> dict[str, str]:
        """Files the launcher adds to a sweep directory (checked before anything is written)."""
        return {}

    def submit(self, run: PreparedRun, after: str | None = None) -> str | None:
        """Start a written run; ``after``: the job id it must wait for."""
        return None

    def submit_array(self, sweep: SweepDir, runs: list[PreparedRun]) -> str | None:
        """Start every point of a written sweep."""
        for run in runs:
            self.submit(run)
        return None

    def start_written(self, run: RunDir, cfg) -> None:
        """Start a run directory written earlier (``python -m llamantino.launch``)."""
        from llamantino.errors import ConfigError

        raise ConfigError(f"{run.path} was rendered with launcher={cfg.launcher.name}: pass --local or --slurm")

    def state(self, run: RunDir) -> str:
        """The run's outcome from its status file; WRITTEN before it ran."""
        state = run.read_status().get("state")
        return state or ("WRITTEN" if run.path.exists() else "NEW")

    def ensure_model(self, runs: list[PreparedRun]) -> None:
        """Build the tiny model before any job that reads it starts."""
        if any(run.inputs.build_tiny for run in runs):
            from llamantino.tiny import ensure_tiny_model

            self.echo(f"llamantino: tiny model at {ensure_tiny_model()}")
