"""A study's one step: tell Optuna what finished, ask the next batch, write it as a sweep and start it.

The same :func:`advance` runs in three places: ``llamantino search`` (the first batch), the
tell-and-ask job SLURM starts once a batch's array has ended (``afterany``, so a failed trial is told
too), and, with ``launcher=local``, the command's own loop. Nothing waits on the login node: each
step submits the next batch's array and the step job that waits on it, then ends.

Each step holds the study directory's lock (records/lock.py), so a step job and ``search --resume``
never ask at once. A batch is recorded in study.json before it is written and submitted, and SIGTERM
and SIGINT (``scancel``, Ctrl-C) wait until the submission is recorded, so an interrupted step leaves
no array running unrecorded. Trials the journal holds as running but no batch ran (a command cut
short between asking and writing) are told failed and marked ``never_ran``: they do not count against
the budget.

Outcomes: a trial whose run COMPLETED is told its final objective (PRUNED when the plugin's pruner
stopped it); a run that FAILED (or ran out of memory), or logged no finite objective, is told FAIL;
a run cancelled, timed out or never started is not an outcome of its values: the study stops there
and ``search --resume`` starts those runs again (from their last checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shlex
import signal
from dataclasses import dataclass, field

from llamantino.config.schema import LauncherName, Pruner, TrialConfig
from llamantino.errors import ConfigError, LaunchError, LlamantinoError, RunDirError
from llamantino.records.jobstate import JobState
from llamantino.records.manifests import StudyBatch, StudyRecord
from llamantino.records.rundir import RunDir, StudyDir, SweepDir
from llamantino.search.space import suggest, trial_overrides

STUDY_NAME = StudyDir.OPTUNA_STUDY
SAMPLERS = ("tpe", "random", "cmaes", "gp")
MAX_JOURNAL_BYTES = 64 * 2**20  # a journal of thousands of trials is a few MB
FAILED_RUN = frozenset({JobState.FAILED, JobState.OUT_OF_MEMORY})  # the trial's values made it fail


def sampler_for(record: StudyRecord, batch_index: int):
    """The study's sampler, seeded per batch: every step runs in a new process, and the same seed in
    each would draw the same values again."""
    import numpy as np
    import optuna

    seed = int(np.random.SeedSequence([record.seed, batch_index]).generate_state(1)[0])
    if record.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if record.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if record.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    # constant_liar: the trials of one batch are asked together; each sees the others as running
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def storage_of(study: StudyDir):
    """The study's JournalStorage (file backend), refused when the journal is not a regular file or is
    larger than any study writes (it is a file read back)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = study.journal()
    if path.exists() and path.stat().st_size > MAX_JOURNAL_BYTES:
        raise RunDirError(f"{path} is {path.stat().st_size} bytes, more than a study writes ({MAX_JOURNAL_BYTES}); "
                          "it is not this study's journal")
    return JournalStorage(JournalFileBackend(str(path)))


def check_record(study: StudyDir, record: StudyRecord) -> None:
    """study.json is read back, so untrusted: each dimension must be what its own text parses to (the
    key rules, plain-word choices, bounds), and every other field one of its valid values."""
    from llamantino.config.schema import Pruner
    from llamantino.search.space import parse_dimension

    path = study.path / StudyDir.RECORD

    def refuse(what: str) -> RunDirError:
        return RunDirError(f"{path}: {what}; it is not the record llamantino search wrote")

    for index, dimension in enumerate(record.space):
        try:
            parsed = parse_dimension(dimension.text)
        except ConfigError as exc:
            raise refuse(f"study.space[{index}]: {exc}") from None
        if parsed != dimension:
            raise refuse(f"study.space[{index}] differs from its own text {dimension.text!r}")
    if not record.space or len({d.key for d in record.space}) != len(record.space):
        raise refuse("study.space must name each key once")
    if record.sampler not in SAMPLERS or record.pruner not in {p.value for p in Pruner}:
        raise refuse(f"study.sampler={record.sampler!r} or study.pruner={record.pruner!r} is not valid")
    if record.direction not in ("minimize", "maximize") or record.launcher not in {n.value for n in LauncherName}:
        raise refuse(f"study.direction={record.direction!r} or study.launcher={record.launcher!r} is not valid")
    if record.trials < 1 or record.batch < 1 or not OBJECTIVE.fullmatch(record.objective):
        raise refuse("study.trials and study.batch must be at least 1 and study.objective a metric name")


OBJECTIVE = re.compile(r"[a-z][a-z0-9_]*(/[a-z][a-z0-9_]*)?")


def open_study(study: StudyDir, record: StudyRecord, batch_index: int, create: bool = False):
    import optuna

    check_record(study, record)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if create:
            return optuna.create_study(study_name=STUDY_NAME, storage=storage_of(study), direction=record.direction,
                                       sampler=sampler_for(record, batch_index))
        found = optuna.load_study(study_name=STUDY_NAME, storage=storage_of(study),
                                  sampler=sampler_for(record, batch_index))
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise RunDirError(f"{study.journal()}: not a journal this study can read ({exc})") from None
    if [d.name for d in found.directions] != [record.direction.upper()]:
        raise RunDirError(f"{study.journal()}: its study's direction is not study.json's {record.direction}")
    return found


# --- outcomes ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a step found: trials told now, still running, interrupted, and the study's totals."""

    told: list[str] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    interrupted: dict[int, str] = field(default_factory=dict)  # trial -> the state its run is in
    counted: int = 0  # trials asked that count against the budget


def trial_runs(study: StudyDir, record: StudyRecord) -> dict[int, RunDir]:
    """Each trial's run directory, from study.json and the batches written (never from the journal)."""
    runs: dict[int, RunDir] = {}
    for batch in record.batches:
        folder = SweepDir(study.path / batch.name)
        if not folder.is_sweep():
            continue
        names = {point.index: point.run_dir for point in folder.record().points}
        for number in batch.trials:
            if number in names:
                runs[number] = RunDir(folder.path / names[number])
    return runs


def trial_record(run: RunDir, metric: str) -> tuple[list[tuple[int, float]], bool] | None:
    """(the objective at each evaluation, pruned) from the trial's own record (the plugin's), None when
    it has none. A file read back: bounded, and each field's type checked."""
    from llamantino.records.files import load_json

    path = run / RunDir.TRIAL
    if run.existing(RunDir.TRIAL) is None:
        return None
    data = load_json(path)
    values = data.get("values") if isinstance(data, dict) else None
    if not isinstance(values, list) or data.get("metric") != metric or not isinstance(data.get("pruned"), bool):
        raise RunDirError(f"{path}: not a trial record of {metric} (values, pruned)")
    points = []
    for item in values:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and not isinstance(item[0], bool)
                and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
            raise RunDirError(f"{path}: values must be [step, value] pairs")
        points.append((item[0], float(item[1])))
    return sorted(points), data["pruned"]


def objective_of(run: RunDir, metric: str) -> tuple[float | None, bool, str]:
    """(final value, pruned, why there is no value) of the objective of a finished run: from the
    trial's own record, else from the trainer's logs (an objective no evaluation reports)."""
    from llamantino.records.curves import run_metrics

    found = trial_record(run, metric)
    points, pruned = found if found is not None else (run_metrics(run).get(metric, []), False)
    if not points:
        return None, pruned, f"the run logged no {metric}"
    if not math.isfinite(points[-1][1]):
        return None, pruned, f"the run's last {metric} is not a finite number ({points[-1][1]})"
    return points[-1][1], pruned, ""


def tell(study: StudyDir, record: StudyRecord, optuna_study, state_of, echo=print) -> Tally:
    """Tell the journal the outcome of every trial it holds as running; ``state_of(run)`` is the
    launcher's view of a run (SLURM asks the scheduler)."""
    from optuna.trial import TrialState

    tally = Tally()
    runs = trial_runs(study, record)
    for trial in optuna_study.get_trials(deepcopy=False):
        if trial.state != TrialState.RUNNING:
            if not trial.user_attrs.get("never_ran"):
                tally.counted += 1
            continue
        run = runs.get(trial.number)
        if run is None:
            _attr(optuna_study, trial.number, "never_ran", True)  # attributes before tell: a told trial is final
            optuna_study.tell(trial.number, state=TrialState.FAIL)
            tally.told.append(f"trial {trial.number}: never written (a command was cut short); not counted")
            continue
        tally.counted += 1
        state = state_of(run)
        if state.active:
            tally.running.append(trial.number)
            continue
        if state.done:
            value, pruned, why = objective_of(run, record.objective)
            if pruned:
                optuna_study.tell(trial.number, state=TrialState.PRUNED)
                tally.told.append(f"trial {trial.number}: PRUNED by the {record.pruner} pruner")
            elif value is None:
                _attr(optuna_study, trial.number, "error", why)
                optuna_study.tell(trial.number, state=TrialState.FAIL)
                tally.told.append(f"trial {trial.number}: FAIL ({why})")
            else:
                optuna_study.tell(trial.number, value)
                tally.told.append(f"trial {trial.number}: {record.objective}={value:.6g}")
        elif state in FAILED_RUN:
            _attr(optuna_study, trial.number, "error", f"its run {state} (logs: {run.path / RunDir.LOGS})")
            optuna_study.tell(trial.number, state=TrialState.FAIL)
            tally.told.append(f"trial {trial.number}: FAIL (its run {state})")
        else:
            tally.interrupted[trial.number] = str(state)
    return tally


def _attr(optuna_study, number: int, key: str, value) -> None:
    trial_id = optuna_study._storage.get_trial_id_from_study_id_trial_number(optuna_study._study_id, number)
    optuna_study._storage.set_trial_user_attr(trial_id, key, value)


# --- one batch -----------------------------------------------------------------------------------


def trial_config(record: StudyRecord, study: StudyDir, number: int, values: list[str]):
    """A trial's composed config and group choices: the shared overrides, then its values; marked as
    the study's trial (the plugin reports to the journal, and prunes)."""
    from llamantino.config.compose import compose_with_choices
    from llamantino.orchestrate.sweep import GROUPS

    cfg, choices = compose_with_choices([*record.overrides, *values])
    trial = TrialConfig(study=str(study.path), number=number, metric=record.objective, direction=record.direction,
                        pruner=Pruner(record.pruner), startup_trials=max(1, record.batch))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, trial=trial))
    return cfg, {group: value for group, value in choices.items() if group in GROUPS and value is not None}


def ask_batch(study: StudyDir, record: StudyRecord, optuna_study, index: int, count: int, echo=print,
              strict: bool = False) -> tuple[SweepDir, list, list[int]]:
    """Ask ``count`` trials and build each as a point of batch ``index`` (rendered and checked; nothing
    written). A trial the config refuses is told FAIL with the reason (``strict``, the first batch:
    the command fails instead, nothing written)."""
    from optuna.trial import TrialState

    from llamantino.orchestrate.runs import build

    batch = SweepDir(study.path / StudyDir.batch_name(index))
    runs, numbers = [], []
    for position in range(count):
        trial = optuna_study.ask()
        values = trial_overrides(record.space, {d.key: suggest(trial, d) for d in record.space},
                                 f"trial {trial.number}")
        echo(f"trial {trial.number} ({position + 1}/{count} of {batch.path.name}): {' '.join(values)}: composing, "
             "rendering and checking with Axolotl")
        try:
            cfg, choices = trial_config(record, study, trial.number, values)
            runs.append(build(cfg, batch.point(trial.number).path, overrides=[*record.overrides, *values],
                              choices=choices))
            numbers.append(trial.number)
        except LlamantinoError as exc:
            if strict:
                raise type(exc)(f"trial {trial.number} ({' '.join(values)}): {exc}") from None
            _attr(optuna_study, trial.number, "error", str(exc)[:2000])
            optuna_study.tell(trial.number, state=TrialState.FAIL)
            echo(f"trial {trial.number}: FAIL before it ran ({exc})")
    return batch, runs, numbers


@contextlib.contextmanager
def uninterrupted():
    """SIGTERM and SIGINT wait until the block ends (a submission and its record stay together)."""
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def launch_batch(study: StudyDir, record: StudyRecord, batch: SweepDir, runs: list, numbers: list[int], echo=print,
                 create=None) -> StudyRecord:
    """Record the batch in study.json, write it as a sweep and start it (SLURM: its array, then the
    step job waiting on it), through the launcher's one sequence: its checks come first, so a refused
    batch is neither recorded nor written. ``create(record)``: the first batch's, writes the study
    directory itself (atomically) in place of updating study.json. Returns the record as written."""
    from llamantino.orchestrate.sweep import launch_points

    record = dataclasses.replace(record, batches=[*record.batches, StudyBatch(name=batch.path.name, trials=numbers)])

    def recorded() -> dict:
        if create is not None:
            create(record)
        else:
            study.write_record(record)
        return {}

    local = LauncherName(record.launcher) == LauncherName.local
    with contextlib.nullcontext() if local else uninterrupted():
        try:
            launch_points(batch, runs, echo, before_write=recorded)
        except LaunchError as exc:
            if not local or not batch.is_sweep():
                raise
            echo(f"notice: {exc}")  # a trial that failed is told FAIL by the next step
        if not local:
            record = submit_step(study, record, runs[0].cfg, echo)
    return record


def submit_step(study: StudyDir, record: StudyRecord, cfg, echo=print) -> StudyRecord:
    """Submit the tell-and-ask job after the last batch's array (afterany: failed trials are told
    too) and record it."""
    from llamantino.launchers.slurm import sbatch
    from llamantino.records.files import write_text
    from llamantino.render.sbatch import search_step_script

    from llamantino.launchers.slurm import job_state

    last = record.batches[-1]
    folder = SweepDir(study.path / last.name)
    # The array just submitted, and any older array of the batch still running some of its trials (a
    # resumed batch). Ended ones are left out: SLURM refuses a dependency on a job it has forgotten.
    latest = folder.record().job_id
    jobs = [RunDir(folder.path / point.run_dir).job_id() for point in folder.record().points]
    arrays = {latest} if latest else set()
    arrays |= {job.split("_", 1)[0] for job in jobs if job and not job.startswith(f"{latest}_")
               and job_state(job).active}
    if not arrays:
        raise LaunchError(f"{folder.path} has no job array recorded; the study cannot wait on it: "
                          f"python -m llamantino search --resume {shlex.quote(str(study.path))}")
    script = study.path / StudyDir.STEP_SCRIPT
    write_text(script, search_step_script(cfg, study.path))
    dependency = "afterany:" + ":".join(sorted(arrays))
    job_id = sbatch(script, dependency=dependency)
    batches = [*record.batches[:-1], dataclasses.replace(last, step_job=job_id)]
    record = dataclasses.replace(record, batches=batches)
    study.write_record(record)
    echo(f"submitted the study's tell-and-ask job {job_id} ({dependency}): it tells the batch's results and "
         f"submits the next; python -m llamantino status {shlex.quote(str(study.path))}")
    return record


# --- the step ------------------------------------------------------------------------------------


def state_reader(record: StudyRecord):
    from llamantino.launchers import LAUNCHERS

    launcher = LAUNCHERS[LauncherName(record.launcher)]()
    return launcher.state


def advance(study: StudyDir, echo=print) -> str:
    """Tell what finished, then ask and start the next batch; the caller holds the study's lock.
    Returns ``launched``, ``waiting`` (trials still running), ``stopped`` (interrupted trials or a
    cancel: ``search --resume``) or ``finished`` (the budget is spent)."""
    record = study.record()
    optuna_study = open_study(study, record, len(record.batches))
    tally = tell(study, record, optuna_study, state_reader(record), echo)
    for line in tally.told:
        echo(line)
    where = shlex.quote(str(study.path))
    if study.cancelled():
        echo(f"the study was cancelled; continue it with python -m llamantino search --resume {where}")
        return "stopped"
    if tally.running:
        echo(f"trials {', '.join(map(str, tally.running))} are still queued or running; nothing asked yet")
        return "waiting"
    if tally.interrupted:
        states = ", ".join(f"trial {number} {state}" for number, state in sorted(tally.interrupted.items()))
        echo(f"the study stops here: {states} (not an outcome of their values); continue it with "
             f"python -m llamantino search --resume {where}")
        return "stopped"
    remaining = record.trials - tally.counted
    while remaining > 0:
        count = min(record.batch, remaining)
        batch, runs, numbers = ask_batch(study, record, optuna_study, len(record.batches), count, echo)
        if runs:
            launch_batch(study, record, batch, runs, numbers, echo)
            return "launched"
        # every trial of the batch was refused by the config: told FAIL (they count); ask again
        record = dataclasses.replace(record, batches=[*record.batches, StudyBatch(name=batch.path.name, trials=[])])
        study.write_record(record)
        remaining -= count
    echo(f"the study is finished: its {record.trials} trials ran")
    return "finished"


def drive(study: StudyDir, echo=print) -> str:
    """Advance until the study waits on jobs (SLURM) or ends (local: every batch runs here)."""
    while True:
        outcome = advance(study, echo)
        if outcome != "launched" or LauncherName(study.record().launcher) != LauncherName.local:
            return outcome


def check_budget(trials: int, batch: int) -> None:
    if trials < 1:
        raise ConfigError(f"--trials {trials}: a study needs a budget of at least one trial")
    if batch < 1:
        raise ConfigError(f"--batch {batch}: a batch holds at least one trial")


__all__ = ["SAMPLERS", "STUDY_NAME", "advance", "drive", "open_study", "tell"]
