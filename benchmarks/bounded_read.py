"""Bounded reading of data (issue 20): what the limits cost on the normal corpus path, and what they
save on a gzip bomb. Numbers go into BENCHMARKS.md by hand ("Bounded reading of data").

    git archive <commit before> | tar -x -C /tmp/before
    .venv/bin/python benchmarks/bounded_read.py --before /tmp/before

Each tree prepares with its own steps: this one scan, dedup and task (units), a tree before the
units one task (``slices/``); each tree's planner writes its entry's request.

1. Throughput: tokens/s of one prepare task (the corpus benchmark's mirror, 8 files x 1000
   documents; the task step alone and every step), this tree against the ``--before`` tree,
   alternating, median of ``--repeats``.
2. A gzip bomb (about 1 MB of gzip, one 1 GiB line): peak RSS and exit code of the prepare steps
   (``python -m llamantino.job.prepare``, up to the first that fails) under an address-space cap
   (``--cap-gib``), both trees, and what they leave in the entry.
"""

from __future__ import annotations

import gzip
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import corpus  # noqa: E402

from llamantino.argparsing import ArgumentParser  # noqa: E402


def capped_steps(entry: Path, tree: Path | None, cap: int) -> dict:
    """The tree's prepare steps through its command line under an address-space cap, up to the first
    that fails: its exit code, the largest peak RSS, the last line it wrote to stderr."""
    corpus.clear(entry)
    steps = ["scan", "dedup", "task"] if corpus.uses_units(tree) else ["task"]
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # noqa: E731
    result = {"exit": 0, "rss_mb": 0.0, "error": "", "step": None}
    for step in steps:
        # through prepare_step.py --exec: the step's peak RSS is its own, not this process's
        proc = subprocess.run([sys.executable, str(corpus.STEP), "--exec", sys.executable, "-m",
                               "llamantino.job.prepare", step, str(entry), "--index", "0"], cwd=entry,
                              env=corpus.tree_env(tree), capture_output=True, text=True, preexec_fn=limit)
        measured = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
        lines = proc.stderr.strip().splitlines()
        result.update(exit=measured["exit"], rss_mb=max(result["rss_mb"], measured["rss_mb"]), step=step,
                      error=lines[-1] if lines else "")
        if measured["exit"]:
            break
    return result


def leftovers(entry: Path) -> list[str]:
    """Files the steps left in the entry (its request aside)."""
    return sorted(str(path.relative_to(entry)) for path in entry.rglob("*")
                  if path.is_file() and path.name != "request.json")


def main() -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the tree before the change")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap-gib", type=float, default=3.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bounded-read-"))
    root = corpus.mirror(work, "mirror", 8, 1000)
    trees = {"after": None, "before": args.before}
    entries = {"after": corpus.prepare_entry(work, root, work / "cache"),
               "before": corpus.tree_entry(work, root, work / "cache-before", args.before)}
    runs: dict[str, list[dict]] = {"after": [], "before": []}
    for _ in range(args.repeats):
        for side, tree in trees.items():
            runs[side].append(corpus.task_measure(entries[side], tree))
    for side, measured in runs.items():
        task = statistics.median(m["tokens_per_s"] for m in measured)
        every = statistics.median(m["all_tokens_per_s"] for m in measured)
        print(f"throughput {side}: task step {task:,.0f} tokens/s, all steps ({', '.join(measured[0]['steps'])}) "
              f"{every:,.0f} tokens/s, peak RSS {max(m['rss_mb'] for m in measured):,.0f} MB "
              f"({measured[0]['tokens']:,} tokens, medians of {args.repeats})")

    bomb = work / "bomb"
    shard = bomb / "datasets/gsarti/clean_mc4_it/clean/c4-it.tfrecord-00000-of-01024.json.gz"
    shard.parent.mkdir(parents=True)
    with open(shard, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as out:
        out.write(b'{"text": "')
        for _ in range(1024):
            out.write(b"a" * (1 << 20))
        out.write(b'"}\n')
    bomb_entries = {"after": corpus.prepare_entry(work, bomb, work / "cache-bomb"),
                    "before": corpus.tree_entry(work, bomb, work / "cache-bomb-before", args.before)}
    cap = int(args.cap_gib * (1 << 30))
    for side, tree in trees.items():
        got = capped_steps(bomb_entries[side], tree, cap)
        print(f"gzip bomb ({shard.stat().st_size:,} bytes of gzip, 1 GiB line), cap {args.cap_gib} GiB, {side}: "
              f"step {got['step']} exit {got['exit']}, peak RSS {got['rss_mb']:,.0f} MB, last stderr line "
              f"{got['error'][:200]!r}, left in the entry: {leftovers(bomb_entries[side]) or 'nothing'}")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    from llamantino.errors import entry

    sys.exit(entry(lambda argv: main()))
