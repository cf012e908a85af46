"""One tracker run per llamantino run, across requeues and resumes.

The recipe names a record in the run directory (``llamantino_tracking_record``); the job runs there.
W&B: the first start picks the run id and records it; every start sets ``WANDB_RUN_ID`` from the record
(the job's environment has ``WANDB_RESUME=allow``), so a requeued job appends to the same run.
MLflow: the first start records the id of the run transformers' MLflowCallback opened; a later start
sets ``MLFLOW_RUN_ID`` to reattach, and ``MLFLOW_MAX_LOG_PARAMS=0`` when the run already holds its
parameters (MLflow refuses a parameter logged again with another value: params are logged once).
Only global rank 0 talks to the trackers, so only it reads and writes the record.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def _rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


RECORD_MAX_BYTES = 64 * 1024  # two run ids; anything larger was not written here


def read_record(path: Path) -> dict:
    """The record, read as untrusted: bounded, never through a link; none or garbled means a new run."""
    try:
        if path.is_symlink():
            return {}
        with path.open("rb") as handle:
            record = json.loads(handle.read(RECORD_MAX_BYTES + 1).decode("utf-8"))  # cut: invalid
    except (OSError, ValueError):  # none yet, cut short by a kill, or too large: a new run
        return {}
    return record if isinstance(record, dict) else {}


def write_record(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def tracking_callbacks(cfg, record_path: str | None) -> list:
    """Set the tracker's run id for this start; the callbacks that record a new one."""
    if not record_path or not _rank_zero():
        return []
    path = Path(record_path)
    record = read_record(path)
    callbacks = []
    if cfg.use_wandb:
        run_id = record.get("wandb_run_id")
        if not isinstance(run_id, str) or not run_id.isalnum():
            run_id = secrets.token_hex(8)
            write_record(path, {**record, "wandb_run_id": run_id})
        os.environ["WANDB_RUN_ID"] = run_id
        os.environ.setdefault("WANDB_RESUME", "allow")
    if cfg.use_mlflow:
        run_id = record.get("mlflow_run_id")
        if isinstance(run_id, str) and run_id.isalnum():
            os.environ["MLFLOW_RUN_ID"] = run_id
            if _mlflow_has_params(run_id):
                os.environ["MLFLOW_MAX_LOG_PARAMS"] = "0"
        else:
            _sqlite_experiment(cfg.mlflow_tracking_uri, cfg.mlflow_experiment_name)
            callbacks.append(_RecordMlflowRun(path))
    return callbacks


def _sqlite_experiment(uri: str | None, name: str | None) -> None:
    """In a SQLite store, the experiment made with its artifacts beside the store (<root>/mlartifacts):
    MLflow would put them under the working directory of whichever run came first. A server keeps its own."""
    if not (uri and name and uri.startswith("sqlite:///")):
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name, artifact_location=(Path(uri[len("sqlite:///"):]).parent
                                                              / "mlartifacts").as_uri())
        except MlflowException:  # made meanwhile by a run that started at the same time
            pass


def _mlflow_has_params(run_id: str) -> bool:
    from mlflow import MlflowClient

    return bool(MlflowClient().get_run(run_id).data.params)


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _RecordMlflowRun(_callback_base()):
    """After MLflowCallback opened the run (it comes first: report_to callbacks are the trainer's own),
    record its id once."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        import mlflow

        run = mlflow.active_run()
        if run is not None and state.is_world_process_zero:
            write_record(self.path, {**read_record(self.path), "mlflow_run_id": run.info.run_id})
        return control
