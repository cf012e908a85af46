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

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Callable, ClassVar

from llamantino.config.schema import LauncherName
from llamantino.errors import ConfigError, LaunchError
from llamantino.records.jobstate import JobState
from llamantino.records.provenance import Provenance, SourceKind
from llamantino.records.rundir import PreparedDir, RunDir, SweepDir, runs_under
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
        if plan.sweep is not None:  # each distinct notice once, with the points it applies to
            points: dict[str, list[str]] = {}
            for run in plan.runs:
                for notice in dict.fromkeys(run.notices):
                    points.setdefault(notice, []).append(run.run_dir.name)
            for notice, names in points.items():
                which = "" if len(names) == len(plan.runs) else ": " + ", ".join(
                    names[:8] + ([f"{len(names) - 8} more"] if len(names) > 8 else []))
                self.echo(f"notice: ({len(names)} of {len(plan.runs)} points{which}) {notice}")
        else:  # a single run's notices, or each pipeline step's under its label
            for index in range(len(plan.runs)):
                prefix = f"{plan.label(index)}: " if plan.label(index) else ""
                for notice in plan.runs[index].notices:
                    self.echo(f"notice: {prefix}{notice}")
        for run in runs:
            self.obligations(run)
        plan.write(self)
        self.start_plan(plan, starting)

    def start_written(self, run: RunDir, dry_run: bool = False, made: dict[str, str] | None = None) -> None:
        """Start a run directory written earlier (``llamantino launch``): its obligations, then ``start``.

        A COMPLETED run is never started again (``launch --again`` writes a new run from it); a run
        queued or running is not submitted twice (one line says so); a failed, cancelled or timed-out
        run resumes from its last complete checkpoint. ``made``: runs started before it by the same
        command (a dry run's earlier steps). The caller holds the run's lock (orchestrate/runs.py), so
        two launches of one run submit it once."""
        state = self.state(run)
        if not self.startable(run, state):
            return
        cfg, provenance = run.config(), run.provenance()
        stage = stage_for(run)
        self.data_prepared(run, provenance, dry_run)
        check_inputs(run, provenance, made)
        if dry_run:
            self.echo(f"would {'resume' if state.failed else 'start'} {run.path} with launcher={self.name}")
            return
        if provenance.model.kind == SourceKind.built:
            from llamantino.inputs.tiny import ensure_tiny_model

            ensure_tiny_model(provenance.model.builder)
        self.start(run, cfg, provenance, stage)

    def startable(self, run: RunDir, state: JobState) -> bool:
        """Whether a written run starts: refused when COMPLETED, said in one line when queued or running."""
        job = run.job_id()
        refuse_completed(run, state, job)
        if state.failed or (state in (JobState.WRITTEN, JobState.NEW) and job is None):
            return True
        what = f"already submitted as job {job}" if job else "already run"
        self.echo(f"{run.path} was {what} ({state}); not started again: python -m llamantino status "
                  f"{shlex.quote(str(run.path))}")
        return False

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

    def start_members(self, home: Path, dry_run: bool = False) -> None:
        """A pipeline's steps or a sweep's points with no recorded job graph (written by launcher=local or
        dry), started here in order: the COMPLETED ones skipped (their outputs reused), the rest
        started (a failed one resumes); the first that fails stops the steps after it."""
        started: dict[str, str] = {}
        for name, run in runs_under(home):
            if self.state(run).done:
                self.echo(f"{name}: COMPLETED; skipped, its output reused")
                continue
            self.echo(f"{name}:")
            self.start_written(run, dry_run=dry_run, made=started)
            started[os.path.abspath(run.path)] = name

    def start_graph(self, home: Path, graph, only: set[str] | None = None, dry_run: bool = False) -> None:
        """Submit a job graph recorded earlier (``llamantino launch``); only SLURM writes them."""
        raise ConfigError(f"{home} holds a SLURM job graph ({graph.FILE}); launcher={self.name} does not submit "
                          "job graphs: launch it with --launcher slurm (or launch one run directory of it)")

    @abstractmethod
    def start(self, run: RunDir, cfg, provenance: Provenance, stage: Stage) -> None:
        """Start a run written earlier, its obligations met."""

    def push(self, run: RunDir, repo_id: str, private: bool = False, revision: str | None = None) -> None:
        """Upload a finished release to the Hub from here (llamantino/job/push.py)."""
        from llamantino.job.push import push_release

        push_release(run, repo_id, private, revision, self.echo)

    def state(self, run: RunDir) -> JobState:
        """The run's outcome from its status file; WRITTEN before it ran."""
        status = run.read_status()
        if status is not None:
            return status.state
        return JobState.WRITTEN if run.path.exists() else JobState.NEW

    # --- obligations: what must hold before a run is written and started ----------------------------

    def obligations(self, run: PreparedRun) -> None:
        """Storage fit for the run's checkpoints; the prepared cache's variables set."""
        self.storage_fits(run)
        if run.inputs.prepared is not None:
            run.inputs.prepared.entry_dir()  # the cache root's variables are set here (ConfigError naming it)

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
        """Build the tiny models before any job that reads one starts."""
        builders = dict.fromkeys(run.inputs.model_source.builder for run in runs if run.inputs.build_tiny)
        if builders:
            from llamantino.inputs.tiny import ensure_tiny_model

            for builder in builders:
                self.echo(f"llamantino: tiny model at {ensure_tiny_model(builder)}")

    def data_prepared(self, run: RunDir, provenance: Provenance, dry_run: bool = False) -> None:
        """A written run on prepared data (a corpus, rows) starts only once its entry is complete."""
        prepared_complete(run, provenance)


def prepared_of(provenance: Provenance) -> tuple[str, dict] | None:
    """(what, record) of the prepared data a written run reads: ("corpus", ...) or ("rows", ...)."""
    return provenance.data.prepared() if provenance.data is not None else None


def prepared_entry(record: dict) -> PreparedDir:
    from llamantino.inputs.corpus import expand

    return PreparedDir(Path(expand(str(record["entry"]), "hardware.storage.cache")))


def prepared_complete(run: RunDir, provenance: Provenance) -> None:
    """Refuse a written run whose prepared data is not complete."""
    found = prepared_of(provenance)
    if found and not prepared_entry(found[1]).complete():
        what, record = found
        raise ConfigError(f"{run.path} trains on {what} {str(record['key'])[:12]}, which is not prepared in "
                          f"{record['entry']}: run the command that wrote it again (it prepares the data first)")


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
        for plan in prepared_entries(runs).values():
            self.echo(f"{plan.describe()}: not prepared (launcher={self.name}); entry {plan.entry}")
        return {}

    @abstractmethod
    def submit(self, run: PreparedRun, after: list[str] = ()) -> str | None:
        """Start a written run after the jobs ``after``; its job id, if it has one."""

    @abstractmethod
    def submit_array(self, sweep: SweepDir, runs: list[PreparedRun], after: list[str] = ()) -> str | None:
        """Start every point of a written sweep together; the array's job id, if it has one."""


def prepared_entries(runs: list[PreparedRun]) -> dict:
    """The distinct entries of the prepared cache (corpora, rows) the runs read, by key (sweep points
    and pipeline steps share them)."""
    return {run.inputs.prepared.key: run.inputs.prepared for run in runs if run.inputs.prepared is not None}


DOWNLOADS = "downloads"  # the key of prepare_inputs' answer for the download job


def waits_for(run: PreparedRun, ready: dict[str, list[str]], after: list[str] = ()) -> list[str]:
    """The job ids a run starts after: ``after``, the jobs preparing its data, the download job
    when the run reads the hub."""
    prepared = run.inputs.prepared
    jobs = [*after, *(ready.get(prepared.key, []) if prepared is not None else [])]
    if run.stage.hub_reads(run.cfg, run.inputs):
        jobs += ready.get(DOWNLOADS, [])
    return jobs


def refuse_completed(run: RunDir, state: JobState, job: str | None = None) -> None:
    """A COMPLETED run is never started again: its output, card and scores would be overwritten."""
    if state.done:
        where = shlex.quote(str(run.path))
        raise ConfigError(f"{run.path} is COMPLETED{f' (job {job})' if job else ''}; a finished run is never started "
                          f"again (its output and card would be overwritten): python -m llamantino launch --again "
                          f"{where} writes a new run directory from it")


def input_runs(provenance: Provenance) -> list[str]:
    """The earlier runs whose output a run reads (its model, its adapter), as recorded."""
    model = provenance.model
    return [path for path in (model.run_dir, model.adapter_run) if path]


def check_inputs(run: RunDir, provenance: Provenance, made: dict[str, str] | None = None) -> None:
    """Refuse a run whose inputs are neither present and complete nor made by a job it waits on
    (``made``: run directory -> the node of the same submission that makes it)."""
    for path in input_runs(provenance):
        source = RunDir(Path(path))
        if made and os.path.abspath(path) in made:
            continue
        status = source.read_status() if source.is_run() else None
        output = source.output_path() if status is not None and status.state.done else None
        if output is not None and output.exists():
            continue
        state = status.state if status is not None else (JobState.MISSING if not source.path.exists()
                                                          else JobState.WRITTEN)
        raise ConfigError(f"{run.path} reads the output of {path}, which is {state} (no complete output): start "
                          f"that run first (python -m llamantino launch {shlex.quote(path)}), or launch the whole "
                          f"pipeline (python -m llamantino launch {shlex.quote(str(Path(path).parent))}), which "
                          "submits the steps in order")
