"""The launcher type: how prepared runs start. dry, local and slurm behind one interface.

:meth:`Launcher.launch` is the one launch sequence: every command that starts runs (one run, a
pipeline, a sweep) builds a :class:`LaunchPlan` and hands it over, and the sequence is

    check -> prepare -> notices -> obligations -> write -> start the plan

Its caller (orchestrate/) holds the lock of the run, pipeline or sweep directory (records/lock.py)
from before it planned until the sequence ends, so one directory is never written or submitted by
two commands at once.

Subclasses say only what differs: how to refuse (``check``), which files they add (``prepare``),
how to start a written plan (``start_plan``), how to start a run written earlier (``start``) or a
job graph recorded earlier (``start_graph``, SLURM's) and where a run stands (``state``). :class:`InOrderLauncher` (dry, local) starts a plan here, in order:
it makes what the runs read (``prepare_inputs``), then starts each run (``submit``) or a sweep's
points (``submit_array``). The SLURM launcher writes the plan's whole job graph, then submits it
(llamantino/records/jobgraph.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from llamantino.config.schema import LauncherName
from llamantino.errors import ConfigError, LaunchError
from llamantino.records.jobstate import JobState
from llamantino.records.provenance import Provenance, SourceKind
from llamantino.records.rundir import PreparedDir, RunDir, SweepDir
from llamantino.stages import PreparedRun, Stage, stage_for


@dataclass
class LaunchPlan:
    """What one command starts: runs in order, each waiting (afterok) on the runs it names.

    ``home`` is the directory the plan writes (the run's, the pipeline's or the sweep's; its job graph
    goes there); ``write`` puts it on disk, atomically (a run, a pipeline's steps and manifest, a
    sweep's points and record); ``sweep`` starts the runs together as one array; ``jobs`` holds the
    job ids of runs already queued or running (a relaunched pipeline's steps), which later runs wait
    on; ``skip`` names runs already done. ``label`` names a run in messages.
    """

    runs: list[PreparedRun]
    write: Callable[["Launcher"], None]
    home: Path
    after: dict[int, list[int]] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    jobs: dict[int, str] = field(default_factory=dict)
    sweep: SweepDir | None = None
    label: Callable[[int], str] = lambda index: ""  # "" for a single run: its messages need no name

    def starting(self) -> list[int]:
        return [index for index in range(len(self.runs)) if index not in self.skip and index not in self.jobs]


class Launcher(ABC):
    name: ClassVar[LauncherName]

    def __init__(self, echo=print) -> None:
        self.echo = echo

    # --- the one launch sequence -----------------------------------------------------------------

    def launch(self, plan: LaunchPlan) -> None:
        """Check, prepare, write and start a plan."""
        starting = plan.starting()
        runs = [plan.runs[index] for index in starting]
        self.check(runs)
        for run in runs:
            self.prepare(run)
        for index in range(len(plan.runs)):
            prefix = f"{plan.label(index)}: " if plan.label(index) else ""
            for notice in plan.runs[index].notices:
                self.echo(f"notice: {prefix}{notice}")
        for run in runs:
            self.obligations(run)
        plan.write(self)
        self.start_plan(plan, starting)

    def start_written(self, run: RunDir) -> None:
        """Start a run directory written earlier (``llamantino launch``): its obligations, then ``start``.

        A run submitted or started before (a job record, or an outcome that is not a failure) is
        not started again: that is said in one line and nothing else happens. The caller holds the
        run's lock (orchestrate/runs.py), so two launches of one run submit it once."""
        state, job = self.state(run), run.job_id()
        if not (state.failed or (state in (JobState.WRITTEN, JobState.NEW) and job is None)):
            what = f"already submitted as job {job}" if job else "already run"
            self.echo(f"{run.path} was {what} ({state}); not started again: python -m llamantino status {run.path}")
            return
        cfg, provenance = run.config(), run.provenance()
        stage = stage_for(run)
        self.corpus_prepared(run, provenance)
        if provenance.model.kind == SourceKind.tiny_llama:
            from llamantino.inputs.tiny import ensure_tiny_model

            ensure_tiny_model()
        self.start(run, cfg, provenance, stage)

    # --- what a launcher says ---------------------------------------------------------------------

    def check(self, runs: list[PreparedRun]) -> None:
        """Refuse what cannot start; runs before anything is written."""

    def prepare(self, run: PreparedRun) -> None:
        """Add the launcher's files to a prepared run."""

    def sweep_files(self, sweep: SweepDir, runs: list[PreparedRun]) -> dict[str, str]:
        """Files the launcher adds to a sweep directory (checked before anything is written)."""
        return {}

    @abstractmethod
    def start_plan(self, plan: LaunchPlan, starting: list[int]) -> None:
        """Start the runs ``starting`` of a written plan, and what they read first."""

    def start_graph(self, home: Path, graph, only: set[str] | None = None) -> None:
        """Submit a job graph recorded earlier (``llamantino launch``); only SLURM writes them."""
        raise ConfigError(f"{home} holds a SLURM job graph ({graph.FILE}); launcher={self.name} does not submit "
                          "job graphs: launch it with --launcher slurm (or launch one run directory of it)")

    @abstractmethod
    def start(self, run: RunDir, cfg, provenance: Provenance, stage: Stage) -> None:
        """Start a run written earlier, its obligations met."""

    def state(self, run: RunDir) -> JobState:
        """The run's outcome from its status file; WRITTEN before it ran."""
        status = run.read_status()
        if status is not None:
            return status.state
        return JobState.WRITTEN if run.path.exists() else JobState.NEW

    # --- obligations: what must hold before a run is written and started ----------------------------

    def obligations(self, run: PreparedRun) -> None:
        """Storage fit for the run's checkpoints; the prepared-corpus cache's variables set."""
        self.storage_fits(run)
        if run.inputs.corpus is not None:
            run.inputs.corpus.entry_dir()  # the cache root's variables are set here (ConfigError naming it)

    def storage_fits(self, run: PreparedRun) -> None:
        """A run whose checkpoints could fill a home quota is not written under $HOME."""
        from llamantino.config.method import checkpoint_gb

        cfg = run.cfg
        if run.method is None or not run.stage.checkpoints:
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

    def ensure_model(self, runs: list[PreparedRun]) -> None:
        """Build the tiny model before any job that reads it starts."""
        if any(run.inputs.build_tiny for run in runs):
            from llamantino.inputs.tiny import ensure_tiny_model

            self.echo(f"llamantino: tiny model at {ensure_tiny_model()}")

    @staticmethod
    def corpus_prepared(run: RunDir, provenance: Provenance) -> None:
        """A written run on a prepared corpus starts only once that corpus is complete."""
        from llamantino.inputs.corpus import expand

        corpus = provenance.data.corpus if provenance.data is not None else None
        if corpus and not PreparedDir(Path(expand(corpus["entry"], "hardware.storage.cache"))).complete():
            raise ConfigError(f"{run.path} trains on corpus {corpus['key'][:12]}, which is not prepared in "
                              f"{corpus['entry']}: run the command that wrote it again (it prepares the corpus first)")


class InOrderLauncher(Launcher):
    """A launcher that starts a plan here, in order: the inputs first, then each run (dry, local)."""

    def start_plan(self, plan: LaunchPlan, starting: list[int]) -> None:
        runs = [plan.runs[index] for index in starting]
        ready = self.prepare_inputs(runs)
        if plan.sweep is not None:
            after = sorted({job for run in runs for job in waits_for(run, ready)})
            self.submit_array(plan.sweep, runs, after=after)
            return
        jobs: dict[int, str | None] = dict(plan.jobs)
        for index in starting:
            run = plan.runs[index]
            earlier = [jobs[dep] for dep in plan.after.get(index, []) if jobs.get(dep)]
            if plan.label(index):
                self.echo(f"{plan.label(index)}:")
            try:
                jobs[index] = self.submit(run, after=waits_for(run, ready, earlier))
            except LaunchError as exc:
                rest = [plan.label(later) for later in starting if later > index]
                if not rest:
                    raise
                raise LaunchError(f"{plan.label(index)} failed; the steps after it did not run ({', '.join(rest)}). "
                                  f"{exc}") from None

    def prepare_inputs(self, runs: list[PreparedRun]) -> dict[str, list[str]]:
        """Make (or start the jobs that make) what the runs read first: prepared corpora, downloads.
        Returns the job ids to wait for, by corpus key (and DOWNLOADS). By default nothing is made."""
        for plan in corpora(runs).values():
            self.echo(f"{plan.describe()}: not prepared (launcher={self.name}); entry {plan.entry}")
        return {}

    @abstractmethod
    def submit(self, run: PreparedRun, after: list[str] = ()) -> str | None:
        """Start a written run after the jobs ``after``; its job id, if it has one."""

    @abstractmethod
    def submit_array(self, sweep: SweepDir, runs: list[PreparedRun], after: list[str] = ()) -> str | None:
        """Start every point of a written sweep together; the array's job id, if it has one."""


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
