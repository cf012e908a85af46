"""Where every job of a run, pipeline or sweep stands (``llamantino status``).

One row per job: the jobs making the shared cache entries the runs wait on (a download, each step
preparing a corpus; from the job graph the submission recorded, llamantino/records/jobgraph.py),
then each run, step or point. A failed job's reason is the last ``error:`` line of its log; a run
cancelled because a job it waited on failed names that job.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
import unicodedata
from pathlib import Path

from llamantino.config.schema import SLURM_TIME, time_seconds
from llamantino.launchers.accounting import true_state, usage
from llamantino.launchers.slurm import entry_dir, slurm_job
from llamantino.launchers.stop import here, is_running, latest_process
from llamantino.records.curves import loss_curve
from llamantino.records.files import read_bytes
from llamantino.records.jobgraph import ancestors, graph_home, node_of, read_graph, run_of
from llamantino.records.jobstate import JobState, LocalProcess, RunStatus
from llamantino.records.progress import format_eta, run_progress
from llamantino.errors import ConfigError, RunDirError
from llamantino.records.rundir import RunDir, SharedEntry, StudyDir, SweepDir, runs_under

LOG_TAIL_BYTES = 64 * 1024  # where a failed job's last error line is looked for
ERROR_CHARS = 600
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def _reason(job) -> str:
    reason = job.reason if job is not None else ""
    return f" ({reason})" if reason and reason not in ("None", "(null)") else ""


def seconds_of(elapsed: str | None) -> int | None:
    """SLURM's elapsed time (``[D-]HH:MM:SS``, ``MM:SS``) in seconds; None when it is not one."""
    text = (elapsed or "").split(".")[0]
    return time_seconds(text) if SLURM_TIME.fullmatch(text) else None


def format_seconds(seconds: float | None) -> str:
    """``HH:MM:SS`` (``D-HH:MM:SS`` past a day), as SLURM writes elapsed times; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def format_bytes(size: int | None) -> str:
    if not size:
        return "-"
    for unit in ("K", "M", "G", "T"):
        size /= 1024
        if size < 1024 or unit == "T":
            break
    return f"{size:.1f}{unit}"


def _timestamp(iso: str | None) -> float | None:
    try:
        return _dt.datetime.fromisoformat(iso).timestamp() if iso else None
    except (TypeError, ValueError):  # an edited record: no time from it
        return None


def _gpus_per_node(run: RunDir) -> int:
    """The GPUs of each node the run asked for (its hardware option); 0 on CPU."""
    hardware = run.config().hardware
    return hardware.gpus_per_node if hardware.gpu else 0


def _local_state(run: RunDir, process: LocalProcess, status: RunStatus | None) -> tuple[JobState, float | None, str]:
    """A local run's state, elapsed seconds and a note: its status.json once written, RUNNING while its
    recorded process lives (verified: launchers/stop.py), else UNKNOWN saying why."""
    alive = is_running(run, process)
    started = _timestamp(process.started)
    if status is not None:
        state, end, note = status.state, _timestamp(status.finished), ""
    elif alive:
        state, end, note = JobState.RUNNING, time.time(), ""
    elif process.host != here():
        state, end, note = JobState.UNKNOWN, None, f"its process runs (or ran) on host {shown(process.host)}: ask there"
    else:
        state, end, note = JobState.UNKNOWN, None, "its process ended without a status (killed?)"
    return state, (end - started if end is not None and started is not None else None), note


def run_row(name: str, run: RunDir, curve: list[tuple[int, float]] | None = None) -> dict:
    """Status of one run directory: SLURM's view while it knows the job, else the run's own; a local
    run's from its recorded process while that lives."""
    status = run.read_status()
    process = latest_process(run)
    job_id = run.job_id() if process is None else None
    job = slurm_job(job_id) if job_id else None
    note = ""
    if process is not None:
        state, elapsed_s, note = _local_state(run, process, status)
    else:
        if status is None and job is not None and job.state.failed:
            # Killed before its own last step (time limit, memory, cancel, node failure): the record says so.
            status = RunStatus(state=job.state, exit_code=job.exit_code, job_id=job_id, finished=job.end,
                               source=job.source)
            run.write_status(status)
        if job is not None:
            state = job.state
        elif status is not None:
            state = status.state
        else:
            state = JobState.WRITTEN if run.path.exists() else JobState.MISSING
        elapsed_s = seconds_of(job.elapsed) if job is not None else None
    if status is not None and status.state == JobState.FAILED and state.done:
        state = JobState.FAILED  # the batch script exited 0 after the stage failed: trust the stage
    used = usage(job_id) if job_id else None
    elapsed_s = used.seconds if used is not None and elapsed_s is None else elapsed_s
    gpu_hours = None
    if elapsed_s is not None:
        gpus = used.gpus if used is not None and used.gpus is not None else (
            (used.nodes if used is not None else 1) * _gpus_per_node(run))
        gpu_hours = round(elapsed_s * gpus / 3600, 4)
    if curve is None and status is not None and status.losses:
        last_loss = status.losses["last"]
    else:
        losses = [loss for _, loss in (loss_curve(run) if curve is None else curve)]
        last_loss = losses[-1] if losses else None
    progress = run_progress(run)
    return {
        "name": name,
        "job": job_id or (f"pid {process.pid}" if process is not None else "-"),
        "state": state + _reason(job),
        "elapsed": format_seconds(elapsed_s) if elapsed_s is not None else (job.elapsed if job is not None else "-"),
        "elapsed_s": elapsed_s,
        "restarts": job.restarts if job is not None else "0",
        "last_loss": f"{last_loss:.4f}" if isinstance(last_loss, (int, float)) else "-",
        "step": progress.fraction if progress is not None else "-",
        "eta": format_eta(progress.eta_seconds) if progress is not None and state.active else "-",
        "gpu_hours": gpu_hours,
        "max_rss": format_bytes(used.max_rss) if used is not None else "-",
        "run_dir": str(run.path),
        "error": "",
        "note": note,
    }


def shown(text: str) -> str:
    """A line of an untrusted log as one printable line: escape sequences and control or format
    characters (bidirectional overrides included) removed, at most ERROR_CHARS characters."""
    text = _ANSI.sub("", text)
    text = "".join(" " if char == "\t" else char for char in text
                   if unicodedata.category(char) not in ("Cc", "Cf") or char == "\t")
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 3] + "..."


def last_error(entry: SharedEntry, job_id: str) -> str:
    """The last ``error:`` line in the logs of one job (each task's, for an array) of a shared entry."""
    pattern = re.compile(rf"-{re.escape(job_id)}(_\d+)?\.out")
    folder = entry.path / entry.LOGS
    logs = sorted(path for path in folder.iterdir() if pattern.search(path.name)) if folder.is_dir() else []
    found = ""
    for log in logs:
        try:
            text = read_bytes(log, LOG_TAIL_BYTES, tail=True).decode("utf-8", errors="replace")
        except (OSError, RunDirError):  # gone, or not a regular file: no reason from it
            continue
        for line in text.splitlines():
            stripped = shown(line)
            if stripped.startswith("error:") or "llamantino: error" in stripped:
                found = f"{stripped} (log {shown(str(log))})"
    return found


def _entry_rows(home: Path, graph, names: set[str]) -> list[dict]:
    """Rows of the graph's jobs making shared entries, among ``names``."""
    rows = []
    configs: dict[str, object] = {}
    for entry in graph.entries:
        nodes = [node for node in graph.nodes if node.entry == entry.id and node.name in names]
        if not nodes:
            continue
        if entry.config not in configs:
            configs[entry.config] = run_of(home, entry.config).config()
        try:
            folder = entry_dir(configs[entry.config], entry)
        except ConfigError:  # the cache names a variable not set on this machine: its jobs are not seen here
            continue
        recorded = folder.jobs() if folder.path.is_dir() else {}
        for node in nodes:
            job_id = recorded.get(node.step)
            job = slurm_job(job_id) if job_id else None
            if job_id:  # an array's worst task (sacct), else what scontrol says of it
                state = true_state(job_id) or (job.state if job is not None else JobState.UNKNOWN)
            else:
                state = JobState.COMPLETED if folder.complete() else JobState.WRITTEN
            rows.append({"name": node.name, "job": job_id or "-", "state": state + _reason(job),
                         "elapsed": job.elapsed if job is not None else "-", "restarts": "0", "last_loss": "-",
                         "run_dir": str(folder.path),
                         "error": last_error(folder, job_id) if job_id and state.failed else ""})
    return rows


def _study_rows(study: StudyDir) -> list[dict]:
    """A study's rows: each batch's (its jobs preparing data once, then its trials), then each
    tell-and-ask job, its error the last ``error:`` line of its log when it failed."""
    rows, seen = [], set()
    for batch in study.batches():
        for row in status_rows(batch.path):
            key = (row["name"], row["job"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    for batch in study.record().batches:
        if not batch.step_job:
            continue
        job = slurm_job(batch.step_job)
        state = true_state(batch.step_job) or (job.state if job is not None else JobState.UNKNOWN)
        log = study.path / StudyDir.LOGS
        logs = sorted(log.glob(f"*-{batch.step_job}.out")) if log.is_dir() else []
        error = _last_error_line(logs[-1]) if logs and state.failed else ""
        rows.append({"name": f"tell {batch.name}", "job": batch.step_job, "state": state + _reason(job),
                     "elapsed": job.elapsed if job is not None else "-", "restarts": "0", "last_loss": "-",
                     "run_dir": str(study.path), "error": error})
    return rows


def _last_error_line(path: Path) -> str:
    text = read_bytes(path, tail=True).decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return shown((errors or lines or [""])[-1])


def status_rows(target: Path) -> list[dict]:
    """Rows for a run, pipeline, sweep or study directory."""
    if StudyDir(Path(target)).is_study():
        return _study_rows(StudyDir(Path(target)))
    members = runs_under(target)
    rows = [run_row(name, run) for name, run in members]
    sweep = SweepDir(Path(target))
    array = sweep.record().job_id if sweep.is_sweep() else None
    for row in rows:
        if array and row["job"] == "-":  # a point whose task has not started has no job record of its own
            job_id = f"{array}_{int(row['name'])}"
            job = slurm_job(job_id)
            row.update(job=job_id, state=job.state if job else JobState.UNKNOWN, elapsed=job.elapsed if job else "-")
    home = graph_home(Path(target))
    graph = read_graph(home)
    if graph is None:
        return rows
    in_sweep = SweepDir(home).is_sweep()  # its points start together, as the graph's one array job
    runs = {name: "array" if in_sweep else node_of(graph, home, run) for name, run in members}
    shared = _entry_rows(home, graph, ancestors(graph, {node for node in runs.values() if node}))
    failed = {row["name"]: row for row in shared if row["error"] or JobState.parse(row["state"]).failed}
    for row in rows:  # a run cancelled because a job it waited on failed: which one
        state = JobState.parse(row["state"])
        cause = [name for name in ancestors(graph, {runs[row["name"]]}) if name in failed] if runs[row["name"]] else []
        if cause and not (state.done or state.active and "Dependency" not in row["state"]):
            row["error"] = f"waited on {cause[0]} (job {failed[cause[0]]['job']}), which failed"
    return shared + rows


def format_table(rows: list[dict], columns=("name", "job", "state", "elapsed", "restarts", "last_loss")) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    lines += [f"{row['name']}: {row['error']}" for row in rows if row.get("error")]
    return "\n".join(lines)


def with_gpu_hours(rows: list[dict]) -> list[dict]:
    """The rows with their GPU hours shown as ``gpu_h``: two decimals, ``-`` when unknown."""
    return [{**row, "gpu_h": f"{row['gpu_hours']:.2f}" if row.get("gpu_hours") is not None else "-"} for row in rows]


STATUS_COLUMNS = ("name", "job", "state", "step", "eta", "elapsed", "gpu_h", "max_rss", "restarts", "last_loss")


def status_table(rows: list[dict]) -> str:
    """``status``'s table: the rows of every job, GPU hours as a number of two decimals, then each
    row's error and note."""
    shown = [{column: row.get(column, "-") for column in STATUS_COLUMNS} for row in with_gpu_hours(rows)]
    table = format_table(shown, columns=STATUS_COLUMNS)
    notes = [f"{row['name']}: {row[key]}" for row in rows for key in ("error", "note") if row.get(key)]
    return "\n".join([table, *notes])
