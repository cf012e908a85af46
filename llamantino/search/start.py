"""``llamantino search``: start a study (every input checked, nothing written before), or resume one.

A new study is checked whole before anything is written: the space parsed, every bound and choice
composed and typed with the shared overrides, the objective matched to what the stage logs, and the
first batch asked, rendered and validated with Axolotl. Only then is the study directory written
(study.json and the journal, atomically) with its first batch, through the launcher's one sequence.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llamantino.config.schema import LauncherName, Pruner, to_plain
from llamantino.errors import ConfigError, LaunchError, LlamantinoError
from llamantino.records.files import leftover_suffix
from llamantino.records.lock import directory_lock
from llamantino.records.manifests import StudyRecord
from llamantino.records.rundir import RunDir, StudyDir, SweepDir, unique_path, write_atomic
from llamantino.search.space import bounds, is_dimension, parse_dimension
from llamantino.search.study import (SAMPLERS, ask_batch, check_budget, drive, launch_batch, open_study,
                                     state_reader, submit_step, tell, uninterrupted)

# What a training stage's trainer logs, and which way is better. DPO's reward metrics come from TRL.
OBJECTIVES = {"loss": "minimize", "eval_loss": "minimize"}
RL_OBJECTIVES = {"eval_rewards/accuracies": "maximize", "eval_rewards/margins": "maximize"}


@dataclass(frozen=True)
class SearchRequest:
    arguments: list[str]  # shared overrides and search dimensions, as typed
    trials: int
    batch: int
    objective: str = "eval_loss"
    direction: str | None = None
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "none"
    name: str | None = None


def split(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(shared overrides, search dimensions) of the command line."""
    dimensions = [text for text in arguments if is_dimension(text)]
    return [text for text in arguments if text not in dimensions], dimensions


def _lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                raise KeyError(part)
            node = node[part]
        elif dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}:
            node = getattr(node, part)
        else:
            raise KeyError(part)
    return node


def direction_of(request: SearchRequest) -> str:
    direction = request.direction or {**OBJECTIVES, **RL_OBJECTIVES}.get(request.objective, "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"--direction {direction}: use minimize or maximize")
    return direction


def check_objective(request: SearchRequest, run) -> None:
    """ConfigError when the stage (its first trial, rendered) does not log the objective."""
    recipe = run.recipe
    if recipe is None or run.method is None:
        raise ConfigError(f"stage {run.cfg.stage.name} trains nothing, so it logs no {request.objective}: a study's "
                          "trials are training runs (stage=adapt, sft or dpo)")
    known = {**OBJECTIVES, **(RL_OBJECTIVES if recipe.get("rl") else {})}
    if request.objective not in known:
        raise ConfigError(f"--objective {request.objective}: stage {run.cfg.stage.name} does not log it; valid: "
                          f"{', '.join(known)}")
    if request.objective.startswith("eval_") and not (recipe.get("val_set_size") or recipe.get("test_datasets")):
        raise ConfigError(f"--objective {request.objective}: stage {run.cfg.stage.name} holds out no evaluation data "
                          "(stage.val_set_size=0), so nothing logs it: add stage.val_set_size=0.1 (or --objective "
                          "loss)")


def check_request(request: SearchRequest):
    """Everything that can be checked before asking: (shared overrides, space, composed config, choices)."""
    from llamantino.config.compose import compose_config, compose_with_choices

    check_budget(request.trials, request.batch)
    direction_of(request)
    if request.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {request.sampler}: valid: {', '.join(SAMPLERS)}")
    if request.pruner not in {p.value for p in Pruner}:
        raise ConfigError(f"--pruner {request.pruner}: valid: {', '.join(p.value for p in Pruner)}")
    if request.pruner != Pruner.none and not request.objective.startswith("eval_"):
        raise ConfigError(f"--pruner {request.pruner} compares trials at each evaluation: it needs an eval objective "
                          f"(--objective eval_loss), not {request.objective}")
    overrides, texts = split(request.arguments)
    if not texts:
        raise ConfigError("no search dimension: give at least one, in Hydra's sweep syntax, e.g. "
                          "'stage.learning_rate=tag(log,interval(1e-5,1e-3))' or stage.lora_r=choice(8,16,64)")
    space = [parse_dimension(text) for text in texts]
    keys = [d.key for d in space]
    for key in keys:
        if keys.count(key) > 1:
            raise ConfigError(f"search dimension {key} is given twice; give each key once")
        shared = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key]
        if shared:
            raise ConfigError(f"{key} is both searched and set ({shared[0]}); drop one")
    cfg, choices = compose_with_choices(overrides)
    if cfg.pipeline is not None:
        raise ConfigError(f"pipeline={cfg.pipeline.name}: a study's trials are single training stages; search one "
                          "stage of the pipeline (stage=..., its data and model)")
    if cfg.launcher.name not in (LauncherName.local, LauncherName.slurm):
        raise ConfigError(f"launcher={cfg.launcher.name}: a study runs its trials as it goes: use launcher=slurm "
                          "(job arrays chained by a tell-and-ask job) or launcher=local")
    if not cfg.launcher.submit:
        raise ConfigError("launcher.submit=false: a study submits each batch when the one before it ends; drop "
                          "launcher.submit=false")
    plain = to_plain(cfg)
    for dimension in space:
        try:
            value = _lookup(plain, dimension.key)
        except KeyError:
            raise ConfigError(f"search dimension {dimension.text!r}: {dimension.key} is not a config key (see "
                              "python -m llamantino --cfg job for the keys)") from None
        if isinstance(value, (dict, list)):
            raise ConfigError(f"search dimension {dimension.text!r}: {dimension.key} is a section, not a value")
        for bound in bounds(dimension):  # the space's edges compose and type, or are named now
            try:
                compose_config([*overrides, bound])
            except LlamantinoError as exc:
                raise ConfigError(f"search dimension {dimension.text!r}: {bound} is refused: {exc}") from None
    return overrides, space, cfg, choices


def new_study(request: SearchRequest, echo=print) -> StudyDir:
    """Check a search, then write the study with its first batch and start it (local: run it all)."""

    from llamantino.orchestrate.runs import output_root

    overrides, space, cfg, _ = check_request(request)
    name = request.name or cfg.run.name
    from llamantino.config.compose import check_run_name

    check_run_name(name)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = output_root(cfg) / "studies"
    while True:
        study = StudyDir(unique_path(root, f"{name}-{stamp}"))
        with directory_lock(study.path, echo):
            if study.path.exists():
                continue
            record = StudyRecord(name=study.path.name, launcher=str(cfg.launcher.name), overrides=overrides,
                                 space=space, objective=request.objective, direction=direction_of(request),
                                 trials=request.trials, batch=request.batch, sampler=request.sampler,
                                 seed=request.seed, pruner=request.pruner)
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{study.path.name}.", suffix=leftover_suffix("partial"), dir=root))
            try:
                _first_batch(study, StudyDir(staging), record, request, echo)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            break
    if record.launcher == LauncherName.local:
        with directory_lock(study.path, echo):
            concluded(study, drive(study, echo), echo)
    return study


def concluded(study: StudyDir, outcome: str, echo=print) -> str:
    """Once the budget is spent: the report written (plots, best recipe) and the best trial said. A
    local study that stopped short of its budget (a cancel, an interrupted trial) fails the command."""
    if outcome == "finished":
        from llamantino.search.report import format_report, write_report

        echo(format_report(write_report(study, echo)))
    if outcome == "stopped" and LauncherName(study.record().launcher) == LauncherName.local:
        raise LaunchError(f"the study stopped before its budget was spent; continue it with python -m llamantino "
                          f"search --resume {shlex.quote(str(study.path))}")
    return outcome


def step(path: Path, echo=print) -> str:
    """What the study's tell-and-ask job runs once a batch's array has ended: tell, then ask and
    submit the next batch with the step job that waits on it, or write the report."""
    from llamantino.search.study import advance

    study = StudyDir(Path(os.path.abspath(path)))
    study.record()  # refuses a folder that is not a study, in one line
    with directory_lock(study.path, echo):
        return concluded(study, advance(study, echo), echo)


def _first_batch(study: StudyDir, staging: StudyDir, record: StudyRecord, request: SearchRequest, echo) -> None:
    """Ask and build the first batch against a journal in ``staging``; then write the study directory
    (its record and that journal) and the batch, and start it."""
    optuna_study = open_study(staging, record, 0, create=True)
    count = min(record.batch, record.trials)
    # The trials point at the study's own journal: it is the staging journal, copied when written.
    batch, runs, numbers = ask_batch(study, record, optuna_study, 0, count, echo, strict=True)
    check_objective(request, runs[0])

    def create(first: StudyRecord) -> None:
        journal = staging.journal().read_bytes()
        write_atomic(study.path, {StudyDir.RECORD: _record_text(first), StudyDir.JOURNAL: journal},
                     dirs=(StudyDir.LOGS,))
        echo(f"wrote {study.path}: study.json, {StudyDir.JOURNAL} ({record.trials} trials in batches of "
             f"{record.batch}, {record.sampler} sampler, seed {record.seed})")

    try:
        launch_batch(study, record, batch, runs, numbers, echo, create=create)
    except BaseException:
        if study.path.exists() and not SweepDir(study.path / batch.path.name).is_sweep():
            shutil.rmtree(study.path, ignore_errors=True)  # the batch was refused: no study without it
        raise
    echo(f"run_dir: {study.path}")


def _record_text(record: StudyRecord) -> str:
    import json

    from llamantino.records.files import typed

    typed(StudyRecord, to_plain(record), Path(StudyDir.RECORD), "study")
    return json.dumps(to_plain(record), indent=2) + "\n"


def resume(path: Path, echo=print) -> StudyDir:
    """Continue a study after a cancel or a crash: tell what finished, start again the trials that
    were interrupted (from their last checkpoint), then go on asking until the budget is spent."""
    from llamantino.launchers import LAUNCHERS
    from llamantino.launchers.slurm import job_state, submit_graph
    from llamantino.records.jobgraph import read_graph

    study = StudyDir(Path(os.path.abspath(path)))
    study.record()  # refuses a folder that is not a study, in one line
    with directory_lock(study.path, echo):
        record = study.record()
        where = shlex.quote(str(study.path))
        step = record.batches[-1].step_job if record.batches else None
        if step and job_state(step).active:
            echo(f"{study.path} is running: its tell-and-ask job {step} is queued or running; nothing to resume "
                 f"(python -m llamantino status {where})")
            return study
        if study.cancelled():
            os.unlink(study.path / StudyDir.CANCELLED)
        optuna_study = open_study(study, record, len(record.batches))
        tally = tell(study, record, optuna_study, state_reader(record), echo)
        for line in tally.told:
            echo(line)
        local = LauncherName(record.launcher) == LauncherName.local
        batch = SweepDir(study.path / record.batches[-1].name) if record.batches else None
        if tally.interrupted and batch is not None and batch.is_sweep():
            numbers = sorted(tally.interrupted)
            echo(f"resuming trials {', '.join(map(str, numbers))} of {batch.path.name} (from their last checkpoint)")
            runs = {point.index: RunDir(batch.path / point.run_dir) for point in batch.record().points}
            if local:
                launcher = LAUNCHERS[LauncherName.local](echo=echo)
                for number in numbers:
                    try:
                        launcher.start_written(runs[number])
                    except LaunchError as exc:
                        echo(f"notice: trial {number}: {exc}")
                        if study.cancelled():
                            return study
            else:
                with uninterrupted():
                    submit_graph(batch.path, read_graph(batch.path), echo, points={runs[n].name for n in numbers})
                    submit_step(study, study.record(), runs[numbers[0]].config(), echo)
                return study
        elif tally.running and not local:
            with uninterrupted():
                submit_step(study, record, _any_config(study, record), echo)
            return study
        concluded(study, drive(study, echo), echo)
    return study


def _any_config(study: StudyDir, record: StudyRecord):
    for batch in reversed(record.batches):
        folder = SweepDir(study.path / batch.name)
        if folder.is_sweep():
            return RunDir(folder.path / folder.record().points[0].run_dir).config()
    raise ConfigError(f"{study.path} has no batch written yet")
