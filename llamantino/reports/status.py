"""Where every job of a run, pipeline or sweep stands (``llamantino status``).

One row per job: the jobs making the shared cache entries the runs wait on (a download, each step
preparing a corpus; from the job graph the submission recorded, llamantino/records/jobgraph.py),
then each run, step or point. A failed job's reason is the last ``error:`` line of its log; a run
cancelled because a job it waited on failed names that job.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from llamantino.launchers.accounting import true_state
from llamantino.launchers.slurm import entry_dir, slurm_job
from llamantino.records.curves import loss_curve
from llamantino.records.files import read_bytes
from llamantino.records.jobgraph import ancestors, graph_home, node_of, read_graph, run_of
from llamantino.records.jobstate import JobState, RunStatus
from llamantino.errors import ConfigError, RunDirError
from llamantino.records.rundir import RunDir, SharedEntry, SweepDir, runs_under

LOG_TAIL_BYTES = 64 * 1024  # where a failed job's last error line is looked for
ERROR_CHARS = 600
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def _reason(job) -> str:
    reason = job.reason if job is not None else ""
    return f" ({reason})" if reason and reason not in ("None", "(null)") else ""


def run_row(name: str, run: RunDir, curve: list[tuple[int, float]] | None = None) -> dict:
    """Status of one run directory: SLURM's view while it knows the job, else the run's own."""
    status = run.read_status()
    job_id = run.job_id()
    job = slurm_job(job_id) if job_id else None
    if status is None and job is not None and job.state.failed:
        # Killed before its own last step (time limit, memory, cancel, node failure): the record says so.
        status = RunStatus(state=job.state, exit_code=job.exit_code, job_id=job_id, finished=job.end, source=job.source)
        run.write_status(status)
    if job is not None:
        state = job.state
    elif status is not None:
        state = status.state
    else:
        state = JobState.WRITTEN if run.path.exists() else JobState.MISSING
    if status is not None and status.state == JobState.FAILED and state.done:
        state = JobState.FAILED  # the batch script exited 0 after the stage failed: trust the stage
    losses = [loss for _, loss in (loss_curve(run) if curve is None else curve)]
    return {
        "name": name,
        "job": job_id or "-",
        "state": state + _reason(job),
        "elapsed": job.elapsed if job is not None else "-",
        "restarts": job.restarts if job is not None else "0",
        "last_loss": f"{losses[-1]:.4f}" if losses else "-",
        "run_dir": str(run.path),
        "error": "",
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


def status_rows(target: Path) -> list[dict]:
    """Rows for a run, pipeline or sweep directory."""
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
