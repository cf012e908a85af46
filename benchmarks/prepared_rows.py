"""SFT/DPO rows prepared once (issue 25): the three ratios of BENCHMARKS.md section "Prepared rows".

    python benchmarks/prepared_rows.py [--only sweep|first_step|memory] [--points 8] [--rows 4000]

- sweep: an N-point SFT sweep on the local SLURM cluster (launcher=slurm, a fresh cache); the time
  spent preparing rows across the whole sweep (every rows job's manifest ``seconds``) over the time
  to prepare one point's rows alone (the same request, another fresh cache). Target <= 1.1.
- first_step: from the start of a local command to its first training step, warm cache (the entry
  made) over cold (made by the command). Measured in turns, median of 3.
- memory: peak RSS of the rows step (``python -m llamantino.job.prepare rows``: the largest process
  of its tree, sampled from /proc; also its anonymous and file-backed parts) on an instruction file of
  R rows and of 8 x R rows. Target <= 1.1.
"""

from __future__ import annotations


import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SFT = ["model=tiny_llama", "stage=sft", "data=it_instructions_sample"]


def llamantino(*args, cwd: Path, env=None) -> str:
    proc = subprocess.run([PY, "-m", "llamantino", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"llamantino {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def run_dir_of(out: str) -> Path:
    return Path(out.strip().splitlines()[-1].split("run_dir: ", 1)[1])


def _tree(pid: int) -> list[int]:
    """A process and its descendants (forked workers, spawned helpers)."""
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found += _tree(int(child))
    return found


def _memory(pid: int) -> dict[str, int]:
    """VmHWM, RssAnon and RssFile of a process, in KiB (empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.partition(":") for line in lines)
    return {key: int(value.split()[0]) for key, _, value in fields if key in ("VmHWM", "RssAnon", "RssFile")}


def prepare_alone(record: dict, cache: Path) -> tuple[float, dict]:
    """(seconds the rows step reports, its memory) for a request, in ``cache``. Memory: the largest
    process of the step's tree, sampled every 20 ms: its high-water mark (VmHWM), and its resident
    anonymous memory (heap: what grows with data held) and file-backed memory (memory-mapped Arrow
    files and libraries: pages the kernel can drop) at their peaks."""
    entry = cache / "prepared" / record["key"]
    entry.mkdir(parents=True)
    from llamantino.inputs.rows import recorded_request
    from llamantino.records.rundir import PreparedDir

    (entry / PreparedDir.REQUEST).write_text(json.dumps(recorded_request(record)))
    step = subprocess.Popen([PY, "-m", "llamantino.job.prepare", "rows", str(entry)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    while step.poll() is None:
        for pid in _tree(step.pid):
            for key, value in _memory(pid).items():
                peak[key] = max(peak[key], value)
        time.sleep(0.02)
    if step.returncode != 0:
        raise SystemExit(f"the rows step failed:\n{step.stderr.read()[-3000:]}")
    memory = {"peak_rss_mib": peak["VmHWM"] / 1024, "peak_anon_mib": peak["RssAnon"] / 1024,
              "peak_file_mib": peak["RssFile"] / 1024}
    return json.loads((entry / "manifest.json").read_text())["seconds"], memory


def rows_record(work: Path, *overrides: str) -> dict:
    """The rows request of a run written with launcher=dry (nothing prepared)."""
    out = llamantino(*SFT, "hardware=cpu", "launcher=dry", f"hardware.storage.cache={work / 'unused'}",
                     f"run.output_root={work / 'runs'}", *overrides, cwd=work)
    return json.loads((run_dir_of(out) / "provenance.json").read_text())["data"]["rows"]


def bench_sweep(points: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rows-sweep-"))
    cache = work / "cache"
    rates = ",".join(f"{(i + 1) * 1e-4:.0e}" for i in range(points))
    out = llamantino("-m", f"stage.learning_rate={rates}", *SFT, "hardware=local_slurm", "hardware.nodes=1",
                     "launcher=slurm", "stage.max_steps=1", "stage.saves_per_epoch=null",
                     f"hardware.storage.cache={cache}", f"run.output_root={work / 'runs'}", cwd=work)
    sweep = run_dir_of(out)
    array = json.loads((sweep / "sweep.json").read_text())["job_id"]
    deadline = time.time() + 1800
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip()
        if not queued:
            break
        time.sleep(5)
    entries = sorted(p for p in (cache / "prepared").iterdir() if (p / "manifest.json").is_file())
    total = sum(json.loads((p / "manifest.json").read_text())["seconds"] for p in entries)
    keys = {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("rows ")}
    logs = [(sweep / f"{i:03d}" / "logs" / "train.log").read_text(errors="replace") for i in range(points)]
    read = sum("prepared rows from" in log for log in logs)
    tokenised = sum("tokenising" in log for log in logs)
    record = json.loads((sweep / "000" / "provenance.json").read_text())["data"]["rows"]
    alone = [prepare_alone(record, work / f"alone-{i}")[0] for i in range(3)]
    one = statistics.median(alone)
    return {"points": points, "entries": len(entries), "keys_printed": sorted(keys), "sweep_prepare_s": total,
            "one_point_prepare_s": one, "one_point_runs_s": alone, "ratio": total / one,
            "points_reading_the_entry": read, "points_tokenising": tokenised}


def first_step_seconds(work: Path, cache: Path) -> float:
    """Seconds from starting a local command to its first training step (the progress line it echoes)."""
    started = time.time()
    child = subprocess.Popen([PY, "-m", "llamantino", *SFT, "hardware=cpu", "stage.max_steps=2",
                              f"hardware.storage.cache={cache}", f"run.output_root={work / 'runs'}"],
                             cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = None
    for line in child.stdout:
        if first is None and re.search(r"\bstep 1/\d+", line):
            first = time.time() - started
    if child.wait() != 0 or first is None:
        raise SystemExit("the local run failed or printed no first step")
    return first


def bench_first_step() -> dict:
    work = Path(tempfile.mkdtemp(prefix="rows-first-"))
    warm_cache = work / "warm"
    first_step_seconds(work, warm_cache)  # makes the warm entry
    cold, warm = [], []
    for turn in range(3):
        cold.append(first_step_seconds(work, work / f"cold-{turn}"))
        warm.append(first_step_seconds(work, warm_cache))
    return {"cold_s": cold, "warm_s": warm, "ratio": statistics.median(warm) / statistics.median(cold)}


def instructions_file(path: Path, rows: int) -> None:
    from llamantino.paths import SAMPLES_DIR

    lines = (SAMPLES_DIR / "it_istruzioni.jsonl").read_text().splitlines()
    with open(path, "w") as out:
        for index in range(rows):
            row = json.loads(lines[index % len(lines)])
            row["istruzione"] = f"{row['istruzione']} (n. {index})"  # distinct rows
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def bench_memory(rows: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rows-memory-"))
    result = {}
    for scale in (1, 8):
        data = work / f"rows-{scale}x.jsonl"
        instructions_file(data, rows * scale)
        record = rows_record(work, f"data.path={data}", f"data.num_rows={rows * scale}")
        seconds, memory = prepare_alone(record, work / f"cache-{scale}")
        result[f"{scale}x"] = {"rows": rows * scale, "file_mib": data.stat().st_size / 2**20, "seconds": seconds,
                               **memory}
    result["ratio"] = result["8x"]["peak_rss_mib"] / result["1x"]["peak_rss_mib"]
    result["anon_ratio"] = result["8x"]["peak_anon_mib"] / result["1x"]["peak_anon_mib"]
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    from llamantino.argparsing import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["sweep", "first_step", "memory"])
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()
    results = {}
    if args.only in (None, "memory"):
        results["memory"] = bench_memory(args.rows)
    if args.only in (None, "first_step"):
        results["first_step"] = bench_first_step()
    if args.only in (None, "sweep"):
        results["sweep"] = bench_sweep(args.points)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
