"""Offline clusters without a download partition: a written run is prepared where there is network.

``llamantino data prepare <run dir>`` downloads the run's model and data (or eval task data) into the
HF cache, runs what its stage type needs so the job finds everything ready (Axolotl's preprocess,
lm-eval's task loader), and writes the lock file that records what was resolved. A run on a prepared
corpus gets its cache entry made here, every step in this process (only the sampled files are
fetched from the hub), never a download of the whole data repository; so do prepared SFT/DPO rows
(their sources downloaded first); ``llamantino launch`` then finds the entry complete and submits no
preparation.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from llamantino.errors import DataError
from llamantino.records.jobgraph import graph_home, read_graph, shared_dir
from llamantino.records.lock import directory_lock
from llamantino.records.provenance import SourceKind, compact
from llamantino.records.rundir import PreparedDir, RunDir, write_json
from llamantino.stages import stage_for

_KEY = re.compile(r"[0-9a-f]{32}", re.ASCII)


def prepare_run_dir(run_dir: Path, local_only: bool = False) -> dict:
    """Download a run's model and data into the HF cache; pre-process what its job reads."""
    run = RunDir(Path(run_dir))
    run_dir = run.path
    if not run.is_run():
        raise DataError(f"{run_dir} is not a run directory written by llamantino (no {RunDir.PROVENANCE})")
    provenance = run.provenance()
    model, data = provenance.model, provenance.data
    prepared = data.prepared() if data is not None else None
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
        if data is not None and data.hub_id and data.corpus is None:  # a corpus fetches only its sample, below
            lock["resolved"]["data"] = snapshot_download(data.hub_id, repo_type="dataset", revision=data.revision)
        elif data is not None and data.rows and not data.hub_id:  # a mixture: each hub source
            for source in data.rows.get("sources") or []:
                if isinstance(source, dict) and isinstance(source.get("hub_id"), str):
                    lock["resolved"][f"data:{source['hub_id']}"] = snapshot_download(
                        source["hub_id"], repo_type="dataset", revision=source.get("revision"))
    if model.kind == SourceKind.built:
        from llamantino.inputs.tiny import ensure_tiny_model

        ensure_tiny_model(model.builder)
    if prepared is not None:
        what, record = prepared
        lock["resolved"][what] = str(prepare_entry(run, what, str(record.get("key")), local_only))
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


def prepare_entry(run: RunDir, what: str, key: str, local_only: bool = False, echo=print) -> Path:
    """Make the prepared corpus or rows (``what``) a written run reads, here (unless complete); its folder.

    What to make is the request its submission recorded (the job graph of the run, pipeline or
    sweep; else the entry's own request.json). An entry that SLURM jobs are making is not made twice."""
    from llamantino.inputs.corpus import expand
    from llamantino.inputs.rows import recorded_request
    from llamantino.job.prepare import prepare_here
    from llamantino.launchers.slurm import made_or_making

    if not _KEY.fullmatch(key):
        raise DataError(f"{run.path / RunDir.PROVENANCE}: data.{what}.key={key!r} is not a prepared {what} key")
    cfg = run.config()
    entry = shared_dir(Path(expand(cfg.hardware.storage.cache, "hardware.storage.cache")), f"{PreparedDir.ROOT}/{key}")
    home = graph_home(run.path)
    graph = read_graph(home)
    recorded = next((item for item in graph.entries if item.id == f"{PreparedDir.ROOT}/{key}"), None) if graph else None
    with directory_lock(entry.path, echo):
        last = PreparedDir.ROWS_STEP if what == "rows" else "finish"
        made = made_or_making(entry, last, f"{what} {key[:12]}", echo)
        if made:
            raise DataError(f"{what} {key[:12]} is being prepared by job {made[0]}: wait for it, then launch the run")
        if made == []:
            return entry.path
        if recorded is not None:
            entry.write(entry.REQUEST, recorded.request)
        elif what == "rows" and not (entry.path / entry.REQUEST).is_file():  # its run records the request
            record = run.provenance().data.rows
            entry.write(entry.REQUEST, recorded_request(record))
        elif not (entry.path / entry.REQUEST).is_file():
            raise DataError(f"{run.path} reads {what} {key[:12]}, which has no request in {entry.path}: write the run "
                            "again with launcher=slurm launcher.submit=false (it records what to prepare)")
        sources = entry.request().get("sources", [])
        if local_only and any(isinstance(s, dict) and (s.get("origin") == "hub" if what == "corpus" else bool(s.get("hub_id")))
                              for s in sources):
            raise DataError(f"{what} {key[:12]} reads data from the hub: run this without --local-only where "
                            "there is network")
        prepare_here(entry, f"{what} {key[:12]}", echo=echo)
    return entry.path
