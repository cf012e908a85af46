"""The launcher type: how prepared runs start. dry, local and slurm behind one interface.

    check(runs)              refuse before anything is written (a sweep or pipeline is checked whole)
    prepare(run)             add the launcher's own files to a run (slurm: job.sbatch)
    submit(run, after)       start one written run, after another job (returns a job id, if any)
    submit_array(sweep, runs) start a sweep's written points together (slurm: one job array)
    state(run)               where a run stands (COMPLETED, FAILED, RUNNING, ...)
    prepare_inputs(runs)     make (or start the jobs that make) what the runs read first: prepared
                             corpora, and (slurm, offline) downloads; returns the job ids to wait for

The main command, pipelines, sweeps and ``python -m llamantino.launch`` all go through it.
"""

from __future__ import annotations

from pathlib import Path
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

    def submit(self, run: PreparedRun, after: list[str] = ()) -> str | None:
        """Start a written run; ``after``: the job ids it must wait for."""
        return None

    def submit_array(self, sweep: SweepDir, runs: list[PreparedRun], after: list[str] = ()) -> str | None:
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

    def prepare_inputs(self, runs: list[PreparedRun]) -> dict[str, list[str]]:
        """Prepare what the runs read from the shared corpus cache; nothing for launchers that start nothing."""
        for plan in corpora(runs).values():
            self.echo(f"{plan.describe()}: not prepared (launcher={self.name}); entry {plan.entry}")
        return {}

    def ensure_model(self, runs: list[PreparedRun]) -> None:
        """Build the tiny model before any job that reads it starts."""
        if any(run.inputs.build_tiny for run in runs):
            from llamantino.tiny import ensure_tiny_model

            self.echo(f"llamantino: tiny model at {ensure_tiny_model()}")


def corpora(runs: list[PreparedRun]) -> dict:
    """The distinct prepared corpora the runs read, by key (sweep points and steps share them)."""
    return {run.inputs.corpus.key: run.inputs.corpus for run in runs if run.inputs.corpus is not None}


DOWNLOADS = "downloads"  # the key of prepare_inputs' answer for the download job


def waits_for(run: PreparedRun, ready: dict[str, list[str]], after: list[str] = ()) -> list[str]:
    """The job ids a run starts after: ``after``, the jobs preparing its corpus, the download job
    when the run reads the hub."""
    corpus = run.inputs.corpus
    jobs = [*after, *(ready.get(corpus.key, []) if corpus is not None else [])]
    if run.stage.hub_reads(run.cfg, run.inputs):
        jobs += ready.get(DOWNLOADS, [])
    return jobs


def check_corpus_prepared(run: RunDir) -> None:
    """A written run on a prepared corpus starts only once that corpus is complete."""
    from llamantino.corpus import expand
    from llamantino.errors import ConfigError
    from llamantino.rundir import PreparedDir

    corpus = (run.provenance().get("data") or {}).get("corpus")
    if corpus and not PreparedDir(Path(expand(corpus["entry"], "hardware.storage.cache"))).complete():
        raise ConfigError(f"{run.path} trains on corpus {corpus['key'][:12]}, which is not prepared in {corpus['entry']}: "
                          "run the command that wrote it again (it prepares the corpus first)")


def check_storage(run: PreparedRun) -> None:
    """A training run whose checkpoints could fill a home quota is not written under $HOME."""
    from llamantino.errors import ConfigError
    from llamantino.method import checkpoint_gb

    cfg = run.cfg
    if run.method is None or not run.stage.trains:
        return
    home = Path.home().resolve()
    where = run.run_dir.path.resolve()
    if where != home and home not in where.parents:
        return
    kept = (cfg.stage.save_total_limit or 3) * checkpoint_gb(cfg.model.params_b, run.method.adapter, cfg.stage.lora_r)
    final = cfg.model.params_b * 2 if run.method.adapter is None else 0.0  # bf16 weights of a full fine-tune
    limit = cfg.hardware.storage.home_limit_gb
    if kept + final > limit:
        raise ConfigError(f"{where} is under $HOME and this run's checkpoints may take {kept + final:,.0f} GB "
                          f"(hardware.storage.home_limit_gb={limit:g}): set run.output_root (or "
                          "hardware.storage.runs) to a work or scratch folder")
