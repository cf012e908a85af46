"""Run, pipeline and sweep directories: every file name they hold, and the one atomic writer.

Nothing else in llamantino spells a file name of a run directory: it asks a :class:`RunDir`
(``run.provenance``, ``run.read_status()``), a :class:`PipelineDir` or a :class:`SweepDir`.

A directory is written atomically: files go into a hidden staging directory beside the target,
which is renamed into place (one ``rename``, atomic on POSIX file systems). A failure on the way
removes the staging directory; a process killed on the way leaves a ``.<name>.*.partial``
directory that the next write in the same parent removes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from llamantino.errors import RunDirError

if TYPE_CHECKING:
    from llamantino.records.jobstate import RunStatus
    from llamantino.records.provenance import Provenance

STALE_PARTIAL_S = 3600  # a staging directory this old belongs to a process that died


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a file llamantino wrote; a broken file is named, not a traceback."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} not found: {what}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not readable JSON ({exc}); was it edited or cut short?") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} must hold a JSON object")
    return data


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove staging directories left by killed processes (older than STALE_PARTIAL_S)."""
    removed = []
    if not parent.is_dir():
        return removed
    for path in parent.glob(".*.partial"):
        try:
            if time.time() - path.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def write_atomic(target: Path, files: dict[str, str | bytes], links: dict[str, str] | None = None,
                 dirs: tuple[str, ...] = ()) -> Path:
    """Create directory ``target`` holding ``files`` (relative path -> content) and ``links``."""
    target = Path(target)
    if target.exists():
        raise RunDirError(f"{target} already exists; llamantino never overwrites a run directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
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
        shutil.rmtree(staging, ignore_errors=True)
        raise RunDirError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
    JOB = "job.json"
    SCRIPT = "job.sbatch"
    RESULTS_JSON = "results.json"
    RESULTS_MD = "results.md"
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
    LOSS_PNG = "loss_curve.png"
    SAMPLE = "sample.txt"
    CARD = "README.md"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, relative: str) -> Path:
        return self.path / relative

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        return (self.path / self.PROVENANCE).is_file()

    def write(self, files: dict[str, str | bytes], links: dict[str, str]) -> Path:
        return write_atomic(self.path, files, links, dirs=(self.LOGS,))  # sbatch opens its log there first

    def provenance(self) -> "Provenance":
        """The run's record, typed (llamantino/records/provenance.py); a broken file names itself."""
        from llamantino.records.provenance import Provenance

        path = self.path / self.PROVENANCE
        return Provenance.from_data(read_json(path, "not a llamantino run directory"), str(path))

    def write_provenance(self, record: "Provenance") -> None:
        write_text(self.path / self.PROVENANCE, record.to_json())

    def config(self):
        """The run's composed config, typed (read as data: nothing in it is resolved)."""
        import yaml

        from llamantino.config.schema import LlamantinoConfig, from_plain

        path = self.path / self.CONFIG
        if not path.is_file():
            raise RunDirError(f"{self.path} is not a llamantino run directory (no {self.CONFIG})")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RunDirError(f"{path} is not readable YAML: {exc}") from None
        return from_plain(LlamantinoConfig, data)

    def read_status(self) -> "RunStatus | None":
        """The run's outcome, None before its job ended."""
        from llamantino.config.schema import from_plain
        from llamantino.errors import ConfigError
        from llamantino.records.jobstate import RunStatus

        path = self.path / self.STATUS
        if not path.is_file():
            return None
        try:
            return from_plain(RunStatus, read_json(path, ""), "status")
        except ConfigError as exc:
            raise RunDirError(f"{path}: {exc}") from None

    def write_status(self, status: "RunStatus") -> None:
        from llamantino.config.schema import to_plain

        write_json(self.path / self.STATUS, to_plain(status))

    def job_record(self) -> dict:
        path = self.path / self.JOB
        return read_json(path, "") if path.is_file() else {}

    def job_id(self) -> str | None:
        status = self.read_status()
        return self.job_record().get("job_id") or (status.job_id if status else None)

    def record_job(self, job_id: str, **extra) -> None:
        """Append a submission to the job record (a run can be submitted again after a failure)."""
        from llamantino.records.provenance import now_iso

        record = self.job_record() or {"submissions": []}
        record["submissions"].append({"job_id": job_id, "submitted": now_iso(), **extra})
        record["job_id"] = job_id
        write_json(self.path / self.JOB, record)

    def existing(self, name: str) -> Path | None:
        """The path of one of the run's files, None when the run has none."""
        path = self.path / name
        return path if path.exists() else None

    def read_text(self, name: str) -> str | None:
        """A file of the run as text, None when it has none."""
        path = self.path / name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def logs(self) -> list[Path]:
        """The log files of a run: logs/*.log and logs/*.out, oldest first."""
        folder = self.path / self.LOGS
        if not folder.is_dir():
            return []
        return sorted((p for p in folder.iterdir() if p.suffix in (".log", ".out")), key=lambda p: p.stat().st_mtime)

    def output_card(self) -> Path | None:
        """The model card of a finished run's output, if it has one."""
        output = self.provenance().output.path
        card = self.path / output / self.CARD if output else None
        return card if card is not None and card.is_file() else None

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
        return (self.path / self.MANIFEST).is_file()

    def manifest(self) -> dict:
        return read_json(self.path / self.MANIFEST, "not a pipeline directory")

    def write_manifest(self, manifest: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / self.MANIFEST, manifest)


def runs_under(target: Path) -> list[tuple[str, RunDir]]:
    """(name, run) of every run in a run, pipeline (its steps) or sweep (its points) directory."""
    pipeline, sweep, run = PipelineDir(Path(target)), SweepDir(Path(target)), RunDir(Path(target))
    if pipeline.is_pipeline():
        return [(step["name"], RunDir(step["run_dir"])) for step in pipeline.manifest()["steps"]]
    if sweep.is_sweep():
        return [(SweepDir.point_name(point["index"]), RunDir(sweep.path / point["run_dir"]))
                for point in sweep.record()["points"]]
    if run.is_run():
        return [(run.name, run)]
    raise RunDirError(f"{target} is not a llamantino run, pipeline or sweep directory")


@dataclass(frozen=True)
class SweepDir:
    """``<output_root>/sweeps/<time>``: one RunDir per point, the record and the array script."""

    path: Path
    RECORD = "sweep.json"
    ARRAY_SCRIPT = "job-array.sbatch"
    COLLECT_CSV = "collect.csv"
    LOSS_PNG = "loss_curves.png"

    @staticmethod
    def point_name(index: int) -> str:
        return f"{index:03d}"

    def point(self, index: int) -> RunDir:
        return RunDir(self.path / self.point_name(index))

    def is_sweep(self) -> bool:
        return (self.path / self.RECORD).is_file()

    def record(self) -> dict:
        return read_json(self.path / self.RECORD, "not a sweep directory (collect takes the directory of a -m sweep)")

    def write_record(self, record: dict) -> None:
        write_json(self.path / self.RECORD, record)


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
        return read_json(self.path / self.REQUEST, "not an entry of the shared cache")

    def jobs(self) -> dict:
        path = self.path / self.JOBS
        return read_json(path, "") if path.is_file() else {}

    def write(self, name: str, data) -> None:
        (self.path / name).parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path / name, data)


@dataclass(frozen=True)
class PreparedDir(SharedEntry):
    """``<storage.cache>/prepared/<key>``: one prepared corpus, shared by every run with the same key.

    Each prepare task renames its ``slices/NNN.arrow`` into place when done; ``manifest.json``,
    written last by the finish job, marks the entry complete.
    """

    ROOT: ClassVar[str] = "prepared"
    # Part of every entry's key: raise it with any change to llamantino/job/prepare.py that alters the
    # blocks a sample turns into (reading, normalising, filtering, tokenising, packing).
    LAYOUT: ClassVar[int] = 1
    MANIFEST: ClassVar[str] = "manifest.json"
    MARKER: ClassVar[str] = MANIFEST
    SLICES: ClassVar[str] = "slices"
    FETCHED: ClassVar[str] = "fetched.json"

    def slice(self, index: int) -> Path:
        return self.path / self.SLICES / f"{index:03d}.arrow"

    def script(self, step: str) -> Path:
        """The sbatch script of one prepare step (fetch, task, finish)."""
        return self.path / f"prepare-{step}.sbatch"

    def slice_report(self, index: int) -> Path:
        return self.path / self.SLICES / f"{index:03d}.json"

    def manifest(self) -> dict:
        return read_json(self.path / self.MANIFEST, "the prepared corpus is not complete")


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
