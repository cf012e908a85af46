"""Run, pipeline and sweep directories: every file name they hold, and the one atomic writer.

Nothing else in llamantino spells a file name of a run directory: it asks a :class:`RunDir`
(``run.provenance``, ``run.read_status()``), a :class:`PipelineDir` or a :class:`SweepDir`.

A directory is written atomically: files go into a hidden staging directory beside the target,
which is renamed into place (one ``rename``, atomic on POSIX file systems). A failure on the way
removes the staging directory (SIGTERM included); one left by a process killed outright is removed by
the next write in the same parent once that process is gone (llamantino/records/files.py).

Every record read back is untrusted: bounded, typed and checked field by field (records/files.py),
and the paths it names are kept inside the directory that holds it.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from llamantino.errors import RunDirError
from llamantino.records.files import (  # noqa: F401 - read_bytes and the writers, re-exported for every layer
    inside,
    leftover_suffix,
    load_object,
    load_record,
    load_yaml,
    plain_name,
    read_bytes,
    remove_leftovers,
    removed_unless_finished,
    typed,
    write_json,
    write_text,
)

if TYPE_CHECKING:
    from llamantino.records.jobstate import LocalProcess, RunStatus
    from llamantino.records.manifests import (EvalPlan, EvalResults, PipelineManifest, ReleasePlan, StudyRecord,
                                              Submissions, SweepRecord)
    from llamantino.records.provenance import Provenance


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove the staging directories and temporary files of processes that are gone."""
    return remove_leftovers(Path(parent))


def write_atomic(target: Path, files: dict[str, str | bytes], links: dict[str, str] | None = None,
                 dirs: tuple[str, ...] = ()) -> Path:
    """Create directory ``target`` holding ``files`` (relative path -> content) and ``links``."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        raise RunDirError(f"{target} already exists; llamantino never overwrites a run directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=leftover_suffix("partial"), dir=target.parent))
    try:
        with removed_unless_finished(staging):
            for relative, content in files.items():
                path = staging / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content, encoding="utf-8")
            for relative, destination in (links or {}).items():
                path = staging / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(destination, path)
            for relative in dirs:
                (staging / relative).mkdir(parents=True, exist_ok=True)
            os.chmod(staging, 0o755)
            os.rename(staging, target)
    except OSError as exc:  # a full or read-only disk: named, and nothing half-written stays
        raise RunDirError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def unique_path(parent: Path, stem: str) -> Path:
    """``parent/<stem>-<4 hex>``: unique even for runs started in the same second."""
    while True:
        candidate = Path(parent) / f"{stem}-{secrets.token_hex(2)}"
        if not candidate.exists():
            return candidate


@dataclass(frozen=True)
class RunDir:
    """One stage's directory: its recipe, config, provenance, job, logs, output and status."""

    path: Path

    RECIPE = "axolotl.yaml"
    EVAL_PLAN = "eval.json"
    CONFIG = "config.yaml"
    PROVENANCE = "provenance.json"
    STATUS = "status.json"
    PROCESS = "process.json"  # launcher=local: the stage's process (records/jobstate.py LocalProcess)
    JOB = "job.json"
    SCRIPT = "job.sbatch"
    RESULTS_JSON = "results.json"
    RESULTS_MD = "results.md"
    RELEASE_PLAN = "release.json"  # stage=release: what is released, from which runs (stages/release.py)
    RELEASE = "release"  # stage=release: the folder laid out as a Hub model repository
    PUSH_SCRIPT = "push.sbatch"  # llamantino release --push on SLURM: the job that uploads the release
    LOGS = "logs"
    TRAIN_LOG = "logs/train.log"
    PREPARE_LOG = "logs/prepare.log"
    OUTPUT = "output"
    INPUTS = "inputs"
    MODEL_LINK = "inputs/base_model"
    ADAPTER_LINK = "inputs/adapter"
    PREPARED = "prepared"
    LOCK = "prepared/llamantino_lock.json"
    EVAL_TASKS = "eval_tasks"
    EVAL_RESULTS = "eval_results"
    DATA_REPORT = "output/llamantino_data_report.json"
    TRAINER_STATE = "trainer_state.json"  # in each output/checkpoint-N
    CHECKPOINT_COMPLETE = "llamantino_complete.json"  # in each output/checkpoint-N, written last (the plugin's)
    PREVIOUS_STATUS = "logs/status.attempt-{attempt}.json"  # the outcome of an attempt a relaunch resumed
    TRIAL = "output/llamantino_trial.json"  # a study's trial: its objective at each evaluation, pruned or not (the plugin's)
    LOSS_PNG = "loss_curve.png"
    SAMPLE = "sample.txt"
    CARD = "README.md"
    TRACKING_RUN = "tracking_run.json"  # tracking=wandb/mlflow: the tracker's run id, reused on requeue (the plugin's)
    TENSORBOARD = "output/runs"  # tracking=tensorboard: the trainer's event folders, one per attempt; HParams here

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, relative: str) -> Path:
        return self.path / relative

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        return os.path.lexists(self.path / self.PROVENANCE)

    def write(self, files: dict[str, str | bytes], links: dict[str, str]) -> Path:
        return write_atomic(self.path, files, links, dirs=(self.LOGS,))  # sbatch opens its log there first

    def provenance(self) -> "Provenance":
        """The run's record, typed (llamantino/records/provenance.py); a broken file names itself."""
        from llamantino.records.provenance import Provenance

        path = self.path / self.PROVENANCE
        return Provenance.from_data(load_object(path, "not a llamantino run directory"), str(path))

    def write_provenance(self, record: "Provenance") -> None:
        write_text(self.path / self.PROVENANCE, record.to_json())

    def output_path(self, provenance: "Provenance | None" = None) -> Path | None:
        """Where the run's output is, kept inside the run directory (None when it records none)."""
        output = (provenance or self.provenance()).output.path
        return inside(self.path, output, self.path / self.PROVENANCE, "output.path") if output else None

    def config(self):
        """The run's composed config, typed (read as data: nothing in it is resolved)."""
        from llamantino.config.schema import LlamantinoConfig

        path = self.path / self.CONFIG
        try:
            data = load_yaml(path)
        except FileNotFoundError:
            raise RunDirError(f"{self.path} is not a llamantino run directory (no {self.CONFIG})") from None
        return typed(LlamantinoConfig, data, path, "")

    def read_status(self) -> "RunStatus | None":
        """The run's outcome, None before its job ended."""
        from llamantino.records.jobstate import RunStatus

        path = self.path / self.STATUS
        if not os.path.lexists(path):
            return None
        return load_record(RunStatus, path, "status")

    def write_status(self, status: "RunStatus") -> None:
        from llamantino.config.schema import to_plain

        write_json(self.path / self.STATUS, to_plain(status))

    def local_process(self) -> "LocalProcess | None":
        """The local process running (or that ran) the stage; None for runs never run here."""
        from llamantino.records.jobstate import LocalProcess

        path = self.path / self.PROCESS
        if not os.path.lexists(path):
            return None
        return load_record(LocalProcess, path, "process")

    def record_process(self, process: "LocalProcess") -> None:
        from llamantino.config.schema import to_plain

        write_json(self.path / self.PROCESS, to_plain(process))

    def checkpoints(self) -> list[tuple[int, Path, bool]]:
        """(step, folder, complete) of every ``output/checkpoint-N``, oldest first."""
        found = []
        output = self.path / self.OUTPUT
        for folder in output.glob("checkpoint-*") if output.is_dir() and not output.is_symlink() else ():
            step = folder.name.removeprefix("checkpoint-")
            if step.isdigit() and folder.is_dir() and not folder.is_symlink():
                found.append((int(step), folder, (folder / self.CHECKPOINT_COMPLETE).is_file()))
        return sorted(found)

    def keep_outcome(self) -> Path | None:
        """Move the last attempt's status.json under logs/ before the run starts again (a stale FAILED
        must not stand for the attempt now running); None when it has none."""
        if not os.path.lexists(self.path / self.STATUS):
            return None
        attempt = 1
        while os.path.lexists(self.path / self.PREVIOUS_STATUS.format(attempt=attempt)):
            attempt += 1
        kept = self.path / self.PREVIOUS_STATUS.format(attempt=attempt)
        kept.parent.mkdir(exist_ok=True)
        os.replace(self.path / self.STATUS, kept)
        return kept

    def begin_attempt(self) -> tuple[int, str | None]:
        """Make a written run ready to start again here: the last attempt's outcome kept under logs/,
        checkpoints cut short moved aside (``auto_resume_from_checkpoints`` takes the newest
        folder, complete or not). Returns (this attempt's number, the checkpoint it resumes from)."""
        previous = self.local_process()
        attempt = previous.attempt + 1 if previous is not None else 1
        self.keep_outcome()
        resumed = None
        for step, folder, complete in self.checkpoints():
            if complete:
                resumed = f"{self.OUTPUT}/{folder.name}"
            else:
                os.rename(folder, folder.with_name(f"incomplete-{folder.name}.attempt-{attempt}"))
        return attempt, resumed

    def job_record(self) -> "Submissions":
        """The run's submissions (job.json); none before it was submitted."""
        from llamantino.records.manifests import Submissions

        path = self.path / self.JOB
        if not os.path.lexists(path):
            return Submissions()
        return load_record(Submissions, path, "job")

    def job_id(self) -> str | None:
        status = self.read_status()
        return self.job_record().job_id or (status.job_id if status else None)

    def record_job(self, job_id: str, **extra) -> None:
        """Append a submission to the job record (a run can be submitted again after a failure)."""
        from llamantino.config.schema import to_plain
        from llamantino.records.manifests import Submission, Submissions
        from llamantino.records.provenance import now_iso

        record = self.job_record()
        submission = Submission(job_id=job_id, submitted=now_iso(), **extra)
        write_json(self.path / self.JOB, to_plain(Submissions(job_id=job_id,
                                                              submissions=[*record.submissions, submission])))

    def eval_plan(self) -> "EvalPlan":
        """What the run's eval job runs (eval.json), typed."""
        from llamantino.records.manifests import EvalPlan

        return load_record(EvalPlan, self.path / self.EVAL_PLAN, "eval", "not an eval run directory (written by "
                                                                          "stage=eval)")

    def release_plan(self) -> "ReleasePlan":
        """What the run's release job writes (release.json), typed."""
        from llamantino.records.manifests import ReleasePlan

        return load_record(ReleasePlan, self.path / self.RELEASE_PLAN, "release", "not a release run directory "
                                                                                 "(written by stage=release)")

    def results(self) -> "EvalResults":
        """An eval run's scores (results.json), typed."""
        from llamantino.records.manifests import EvalResults

        return load_record(EvalResults, self.path / self.RESULTS_JSON, "results", "not an eval run")

    def existing(self, name: str) -> Path | None:
        """The path of one of the run's files, None when the run has none."""
        path = self.path / name
        return path if os.path.lexists(path) else None

    def read_text(self, name: str) -> str | None:
        """A file of the run as text (bounded, never through a link), None when it has none."""
        path = self.path / name
        try:
            return read_bytes(path).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def logs(self) -> list[Path]:
        """The log files of a run: logs/*.log and logs/*.out (regular files), oldest first."""
        folder = self.path / self.LOGS
        if not folder.is_dir():
            return []
        found = [(p, p.lstat()) for p in folder.iterdir() if p.suffix in (".log", ".out")]
        return [p for p, info in sorted(found, key=lambda item: item[1].st_mtime) if stat.S_ISREG(info.st_mode)]

    def output_card(self) -> Path | None:
        """The model card of a finished run's output, if it has one."""
        output = self.output_path()
        card = output / self.CARD if output is not None else None
        return card if card is not None and card.is_file() and not card.is_symlink() else None

    def retire(self) -> Path:
        """Move a failed attempt aside as ``<name>.attempt-N`` so the step can be written afresh."""
        attempt = 1
        while (self.path.parent / f"{self.name}.attempt-{attempt}").exists():
            attempt += 1
        destination = self.path.parent / f"{self.name}.attempt-{attempt}"
        os.rename(self.path, destination)
        return destination


@dataclass(frozen=True)
class PipelineDir:
    """``<output_root>/pipelines/<name>``: one RunDir per step and the manifest."""

    path: Path
    MANIFEST = "pipeline.json"

    def step(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def is_pipeline(self) -> bool:
        return os.path.lexists(self.path / self.MANIFEST)

    def manifest(self) -> "PipelineManifest":
        from llamantino.records.manifests import PipelineManifest

        return _with_plain_names(load_record(PipelineManifest, self.path / self.MANIFEST, "pipeline",
                                             "not a pipeline directory"), "steps", self.path / self.MANIFEST, "pipeline")

    def write_manifest(self, manifest) -> None:
        """Write pipeline.json from a PipelineManifest or its plain form (checked as a reader will)."""
        from llamantino.config.schema import to_plain
        from llamantino.records.manifests import PipelineManifest

        self.path.mkdir(parents=True, exist_ok=True)
        typed(PipelineManifest, to_plain(manifest), self.path / self.MANIFEST, "pipeline")
        write_json(self.path / self.MANIFEST, to_plain(manifest))


def _with_plain_names(record, members: str, path: Path, key: str):
    """``record``, once the ``name`` of each of its ``members`` is an entry of its own folder."""
    for index, member in enumerate(getattr(record, members)):
        plain_name(member.name, path, f"{key}.{members}[{index}].name")
    return record


def _member(parent: Path, name: str, record: str) -> RunDir:
    """The run folder ``name`` of a pipeline or sweep directory, refused when it is a link."""
    if (Path(parent) / name).is_symlink():
        raise RunDirError(f"{Path(parent) / name} (named in {record}) is a symbolic link; a step or point of "
                          f"{parent} is a folder inside it: remove the link")
    return RunDir(Path(parent) / name)


def runs_under(target: Path) -> list[tuple[str, RunDir]]:
    """(name, run) of every run in a run, pipeline (its steps) or sweep (its points) directory.

    A step or point is the folder its record names inside the pipeline or sweep directory: a record
    pointing elsewhere is refused, so nothing is read or written outside it."""
    pipeline, sweep, run = PipelineDir(Path(target)), SweepDir(Path(target)), RunDir(Path(target))
    study = StudyDir(Path(target))
    if study.is_study():
        return [(name, run) for batch in study.batches() for name, run in runs_under(batch.path)]
    if pipeline.is_pipeline():
        return [(step.name, _member(pipeline.path, step.name, pipeline.MANIFEST)) for step in pipeline.manifest().steps]
    if sweep.is_sweep():
        return [(SweepDir.point_name(point.index), _member(sweep.path, point.run_dir, sweep.RECORD))
                for point in sweep.record().points]
    if run.is_run():
        return [(run.name, run)]
    raise RunDirError(f"{target} is not a llamantino run, pipeline, sweep or study directory")


@dataclass(frozen=True)
class SweepDir:
    """``<output_root>/sweeps/<time>``: one RunDir per point, the record and the array script."""

    path: Path
    RECORD = "sweep.json"
    ARRAY_SCRIPT = "job-array.sbatch"
    COLLECT_CSV = "collect.csv"
    LOSS_PNG = "loss_curves.png"
    SCORES_CSV = "scores.csv"  # an eval sweep's scores (LOSS_PNG holds a training sweep's curves)
    SCORES_PNG = "scores.png"

    @staticmethod
    def point_name(index: int) -> str:
        return f"{index:03d}"

    def point(self, index: int) -> RunDir:
        return RunDir(self.path / self.point_name(index))

    def is_sweep(self) -> bool:
        return os.path.lexists(self.path / self.RECORD)

    def record(self) -> "SweepRecord":
        from llamantino.records.manifests import SweepRecord

        path = self.path / self.RECORD
        record = load_record(SweepRecord, path, "sweep",
                             "not a sweep directory (collect takes the directory of a -m sweep)")
        for index, point in enumerate(record.points):
            plain_name(point.run_dir, path, f"sweep.points[{index}].run_dir")
            if point.index < 0:
                raise RunDirError(f"{path}: sweep.points[{index}].index={point.index} must not be negative")
        return record

    def write_record(self, record) -> None:
        """Write sweep.json from a SweepRecord or its plain form (checked as a reader will)."""
        from llamantino.config.schema import to_plain
        from llamantino.records.manifests import SweepRecord

        typed(SweepRecord, to_plain(record), self.path / self.RECORD, "sweep")
        write_json(self.path / self.RECORD, to_plain(record))


@dataclass(frozen=True)
class StudyDir:
    """``<output_root>/studies/<name>-<time>``: an Optuna study (``llamantino search``).

    Its record (study.json: the space, the objective, the budget, the batches), Optuna's journal
    (journal.log, JournalStorage's file backend: safe on a shared file system, no database server),
    and one sweep directory per batch (``batch-NNN``, its points named by trial number, one SLURM job
    array) with the tell-and-ask job's script beside it. ``cancelled`` marks a study stopped by
    ``llamantino cancel`` until ``search --resume``."""

    path: Path
    RECORD = "study.json"
    JOURNAL = "journal.log"
    OPTUNA_STUDY = "llamantino"  # the one Optuna study in each journal
    STEP_SCRIPT = "search-step.sbatch"  # the tell-and-ask job: tells the batch's results, asks and submits the next
    CANCELLED = "cancelled"
    REPORT = "report"  # search --report: the plots, the best trial's overrides and recipe
    LOGS = "logs"

    @staticmethod
    def batch_name(index: int) -> str:
        return f"batch-{index:03d}"

    def is_study(self) -> bool:
        return os.path.lexists(self.path / self.RECORD)

    def record(self) -> "StudyRecord":
        from llamantino.records.manifests import StudyRecord

        return _with_plain_names(load_record(StudyRecord, self.path / self.RECORD, "study", "not a study directory "
                                             "(written by llamantino search)"), "batches", self.path / self.RECORD, "study")

    def write_record(self, record) -> None:
        """Write study.json from a StudyRecord or its plain form (checked as a reader will)."""
        from llamantino.config.schema import to_plain
        from llamantino.records.manifests import StudyRecord

        typed(StudyRecord, to_plain(record), self.path / self.RECORD, "study")
        write_json(self.path / self.RECORD, to_plain(record))

    def batches(self) -> list[SweepDir]:
        """The batches written so far (a batch recorded but not written yet, by a command cut short, is skipped)."""
        found = []
        for batch in self.record().batches:
            sweep = SweepDir(_member(self.path, batch.name, self.RECORD).path)
            if sweep.is_sweep():
                found.append(sweep)
        return found

    def journal(self) -> Path:
        """The journal file, refused when it is not a regular file (a link would make Optuna write elsewhere)."""
        path = self.path / self.JOURNAL
        if os.path.lexists(path) and not stat.S_ISREG(path.lstat().st_mode):
            raise RunDirError(f"{path} is not a regular file: a study's journal is the file search wrote")
        return path

    def cancelled(self) -> bool:
        return os.path.lexists(self.path / self.CANCELLED)


@dataclass(frozen=True)
class SharedEntry:
    """A folder of the shared cache that jobs make: what to make (``request.json``), the jobs making
    it, their logs, and a marker written last that says it is complete."""

    path: Path
    REQUEST: ClassVar[str] = "request.json"
    JOBS: ClassVar[str] = "jobs.json"
    LOGS: ClassVar[str] = "logs"
    MARKER: ClassVar[str] = ""

    def complete(self) -> bool:
        return (self.path / self.MARKER).is_file()

    def request(self) -> dict:
        return load_object(self.path / self.REQUEST, "not an entry of the shared cache")

    def jobs(self) -> dict[str, str]:
        """The jobs making the entry, by step (none before any was submitted)."""
        path = self.path / self.JOBS
        if not os.path.lexists(path):
            return {}
        jobs = load_object(path, "")
        if not all(isinstance(job, str) for job in jobs.values()):
            raise RunDirError(f"{path}: every job id must be a string")
        return jobs

    def write(self, name: str, data) -> None:
        (self.path / name).parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path / name, data)


@dataclass(frozen=True)
class PreparedDir(SharedEntry):
    """``<storage.cache>/prepared/<key>``: one prepared corpus (or prepared rows, ``kind`` rows in
    the request and manifest: one step, ``rows/`` written by datasets), shared by every run with the same key.

    The corpus is made of **units** (one sampled file of a source, or a sliced split read whole):
    each unit's blocks depend on that unit and the units before it only (duplicates are dropped in
    favour of their first occurrence), never on how units were dealt to tasks, so the task count is
    not part of the key and a smaller budget reads a prefix of a larger entry. Each unit is renamed
    into ``units/<unit>.arrow`` when done, after its report ``units/<unit>.json``; ``manifest.json``,
    written last by the finish step, marks the entry complete.
    """

    ROOT: ClassVar[str] = "prepared"
    # Part of every entry's key: raise it with any change to llamantino/job/prepare.py that alters the
    # blocks a sample turns into (reading, normalising, filtering, deduplicating, tokenising, packing).
    LAYOUT: ClassVar[int] = 2
    MANIFEST: ClassVar[str] = "manifest.json"
    MARKER: ClassVar[str] = MANIFEST
    UNITS: ClassVar[str] = "units"
    SCAN: ClassVar[str] = "scan"  # document keys of each unit, by shard (removed by finish)
    DEDUP: ClassVar[str] = "dedup"  # the documents each shard drops (removed by finish)
    FETCHED: ClassVar[str] = "fetched.json"
    LAST_USED: ClassVar[str] = "last_used"  # touched by the training plugin: its mtime is the entry's last use
    # The steps of a preparation, in order: fetch (hub sources; needs network), scan (document
    # keys, sharded), dedup (one shard of keys each: what to drop), task (tokenise), finish.
    # Steps in ARRAY_STEPS run as SLURM arrays of ``tasks`` (one process per index, --index i).
    # Prepared rows (SFT, DPO: llamantino/job/prepare_rows.py) have one step, rows.
    ROWS_STEP: ClassVar[str] = "rows"
    ROWS: ClassVar[str] = "rows"  # the rows' Arrow files (datasets' save_to_disk)
    WORK: ClassVar[str] = "work"  # the rows step's scratch (removed when it ends)
    STEPS: ClassVar[tuple[str, ...]] = ("fetch", "scan", "dedup", "task", "finish", ROWS_STEP)
    ARRAY_STEPS: ClassVar[frozenset[str]] = frozenset({"scan", "dedup", "task"})

    def unit(self, name: str) -> Path:
        return self.path / self.UNITS / f"{name}.arrow"

    def unit_report(self, name: str) -> Path:
        return self.path / self.UNITS / f"{name}.json"

    def scan(self, name: str) -> Path:
        return self.path / self.SCAN / f"{name}.npy"

    def drops(self, shard: int) -> Path:
        return self.path / self.DEDUP / f"{shard:03d}.npy"

    def script(self, step: str) -> Path:
        """The sbatch script of one prepare step."""
        return self.path / f"prepare-{step}.sbatch"

    def manifest(self) -> dict:
        return load_object(self.path / self.MANIFEST, "the prepared corpus is not complete")


@dataclass(frozen=True)
class DownloadDir(SharedEntry):
    """``<storage.cache>/downloads/<key>``: one download job fetching a command's hub reads into HF_HOME.

    Keyed by what it downloads and into which HF_HOME, so commands that need the same reads share
    one job (or find it done).
    """

    ROOT: ClassVar[str] = "downloads"
    DONE: ClassVar[str] = "done.json"
    MARKER: ClassVar[str] = DONE
    SCRIPT: ClassVar[str] = "download.sbatch"
