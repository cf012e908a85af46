"""Offline clusters without a download partition: a written run is prepared where there is network.

``llamantino data prepare <run dir>`` downloads the run's model and data (or eval task data) into the
HF cache, runs what its stage type needs so the job finds everything ready (Axolotl's preprocess,
lm-eval's task loader), and writes the lock file that records what was resolved.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from llamantino.errors import DataError
from llamantino.records.provenance import SourceKind, compact
from llamantino.records.rundir import RunDir, write_json
from llamantino.stages import stage_for


def prepare_run_dir(run_dir: Path, local_only: bool = False) -> dict:
    """Download a run's model and data into the HF cache; pre-process what its job reads."""
    run = RunDir(Path(run_dir))
    run_dir = run.path
    if not run.is_run():
        raise DataError(f"{run_dir} is not a run directory written by llamantino (no {RunDir.PROVENANCE})")
    provenance = run.provenance()
    model, data = provenance.model, provenance.data
    lock = {"model": compact(model), "data": compact(data), "resolved": {}}
    env = {**os.environ, **provenance.env}
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    if local_only:
        env.update({key: "1" for key in offline})
    else:  # downloads happen here, so this step runs online even for offline clusters
        for key in offline:
            env.pop(key, None)
            os.environ.pop(key, None)
        from huggingface_hub import snapshot_download

        if model.kind == SourceKind.hub:
            lock["resolved"]["model"] = snapshot_download(model.hub_id, revision=model.revision)
        if data is not None and data.hub_id:
            lock["resolved"]["data"] = snapshot_download(data.hub_id, repo_type="dataset", revision=data.revision)
    if model.kind == SourceKind.tiny_llama:
        from llamantino.inputs.tiny import ensure_tiny_model

        ensure_tiny_model()
    command, recorded = stage_for(run).prepare_command(run)  # no command: the downloads are all its job reads
    lock.update(recorded)
    if command is not None:
        log = run / RunDir.PREPARE_LOG
        log.parent.mkdir(exist_ok=True)
        with open(log, "w") as handle:
            rc = subprocess.run(command, cwd=run_dir, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise DataError(f"preparing {run_dir} failed (exit {rc}); log: {log}")
    prepared = run / RunDir.PREPARED
    prepared.mkdir(exist_ok=True)
    lock["prepared"] = sorted(p.name for p in prepared.iterdir() if p.name != Path(RunDir.LOCK).name)
    write_json(run / RunDir.LOCK, lock)
    return lock

