"""A SLURM job's true state, from the accounting database (``sacct``).

``squeue``/``scontrol`` forget a job MinJobAge (300 s by default) after it ends; ``sacct`` keeps
its final state, exit code and peak memory for good. Every function here answers "unknown"
([] or None) when there is no ``sacct`` or it does not answer: callers fall back on what
``scontrol`` still knows instead of failing.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

from llamantino.records.jobstate import JobState, worst

# Columns that exist in SLURM 22.05's sacct (Debian 12) and later.
FIELDS = ("JobID", "JobName", "State", "ExitCode", "Elapsed", "Start", "End", "NodeList", "NNodes", "MaxRSS",
          "ReqMem", "Timelimit", "ElapsedRaw", "AllocTRES")
TIMEOUT_S = 30


def _sacct(*args: str) -> subprocess.CompletedProcess | None:
    if shutil.which("sacct") is None:
        return None
    try:
        return subprocess.run(["sacct", *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None


def sacct_available() -> bool:
    """True when ``sacct`` is on PATH and its database answers (an unknown job id is an answer)."""
    proc = _sacct("--noheader", "--parsable2", "--allocations", "-j", "1", "-o", "JobID")
    return proc is not None and proc.returncode == 0


def rss_bytes(text: str) -> int:
    """sacct's ``524316K`` as bytes (0 when empty): to keep the largest of several steps."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip()
    if not text:
        return 0
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


def job_states(job_id: str) -> list[dict]:
    """One dict per job, or per array task (``<array>_<index>``), keyed by :data:`FIELDS`.

    ``State`` is a :class:`JobState`; ``MaxRSS`` is the largest of the job's steps (sacct measures memory
    per step, so the allocation's own row never has it). [] when sacct does not know the job,
    is missing, or does not answer.
    """
    # Without --allocations: the steps' rows (<job>.batch, <job>.0, ...) carry MaxRSS, which is
    # folded into their job's dict; a step's State is not the job's and is left out.
    proc = _sacct("--noheader", "--parsable2", "-j", str(job_id), "-o", ",".join(FIELDS))
    if proc is None or proc.returncode != 0:
        return []
    jobs: dict[str, dict] = {}
    peaks: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        values = line.split("|")
        if len(values) != len(FIELDS):  # a stray warning line, not a record
            continue
        row = dict(zip(FIELDS, values))
        job, _, step = row["JobID"].partition(".")
        if not step:
            row["State"] = JobState.parse(row["State"])
            jobs[job] = row
        elif rss_bytes(row["MaxRSS"]) > rss_bytes(peaks.get(job, "")):
            peaks[job] = row["MaxRSS"]
    for job, row in jobs.items():
        row["MaxRSS"] = peaks.get(job, row["MaxRSS"])
    return list(jobs.values())


def true_state(job_id: str) -> JobState | None:
    """The final (or current) state of a job; for an array job, of its worst task. None if unknown."""
    return worst(row["State"] for row in job_states(job_id))


@dataclass(frozen=True)
class Usage:
    """What a job used so far (sacct counts a running job's time too)."""

    seconds: int
    nodes: int
    gpus: Optional[int]  # all the job's GPUs (AllocTRES gres/gpu); None when accounting does not track GPUs
    max_rss: int  # bytes, the largest step's peak; 0 when not measured yet


def usage(job_id: str) -> Usage | None:
    """The job's elapsed time, nodes, GPUs and peak memory; None when sacct does not know it."""
    row = next((r for r in job_states(job_id) if r["JobID"] == str(job_id)), None)
    if row is None or not row["ElapsedRaw"].isdigit():
        return None
    tres = dict(item.partition("=")[::2] for item in row["AllocTRES"].split(",") if "=" in item)
    gpus = tres.get("gres/gpu")
    return Usage(seconds=int(row["ElapsedRaw"]), nodes=int(row["NNodes"]) if row["NNodes"].isdigit() else 1,
                 gpus=int(gpus) if gpus is not None and gpus.isdigit() else None, max_rss=rss_bytes(row["MaxRSS"]))
