"""Bounded reading of data (issue 20): what the limits cost on the normal corpus path, and what they
save on a gzip bomb. Numbers go into BENCHMARKS.md by hand ("Bounded reading of data").

    git archive <commit before> | tar -x -C /tmp/before
    .venv/bin/python benchmarks/bounded_read.py --before /tmp/before

1. Throughput: tokens/s of one prepare task (the corpus benchmark's mirror, 8 files x 1000
   documents), this tree against the ``--before`` tree, alternating, median of ``--repeats``.
2. A gzip bomb (about 1 MB of gzip, one 1 GiB line): peak RSS and exit code of one prepare task
   under an address-space cap (``--cap-gib``), both trees.
"""

from __future__ import annotations

import gzip
import json
import os
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


def task(entry: Path, tree: Path | None, cap: int | None = None) -> tuple[int, float, dict | None]:
    """(exit code, peak RSS MB, slice report) of one prepare task in a fresh process."""
    shutil.rmtree(entry / "slices", ignore_errors=True)
    env = {**os.environ, **({"PYTHONPATH": str(tree)} if tree else {})}
    limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))) if cap else None
    proc = subprocess.Popen([sys.executable, "-m", "llamantino.job.prepare", "task", str(entry), "--index", "0"],
                            cwd=entry, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit)
    proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    report = entry / "slices" / "000.json"
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, json.loads(report.read_text()) if report.is_file() else None


def main() -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the tree before the change")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap-gib", type=float, default=3.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bounded-read-"))
    entry = corpus.prepare_entry(work, corpus.mirror(work, "mirror", 8, 1000), work / "cache")
    rates: dict[str, list[float]] = {"after": [], "before": []}
    for _ in range(args.repeats):
        for side, tree in (("after", None), ("before", args.before)):
            code, _, report = task(entry, tree)
            counts = report["sources"]["clean_mc4_it"]
            rates[side].append(counts["tokens"] / report["seconds"])
    after, before = statistics.median(rates["after"]), statistics.median(rates["before"])
    print(f"throughput tokens/s: after {after:,.0f}, before {before:,.0f}, ratio {after / before:.2f} "
          f"({counts['tokens']:,} tokens, medians of {args.repeats})")

    bomb = work / "bomb"
    shard = bomb / "datasets/gsarti/clean_mc4_it/clean/c4-it.tfrecord-00000-of-01024.json.gz"
    shard.parent.mkdir(parents=True)
    with open(shard, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as out:
        out.write(b'{"text": "')
        for _ in range(1024):
            out.write(b"a" * (1 << 20))
        out.write(b'"}\n')
    bomb_entry = corpus.prepare_entry(work, bomb, work / "cache-bomb")
    cap = int(args.cap_gib * (1 << 30))
    for side, tree in (("after", None), ("before", args.before)):
        code, rss, _ = task(bomb_entry, tree, cap)
        leftovers = sorted(p.name for p in (bomb_entry / "slices").iterdir()) if (bomb_entry / "slices").is_dir() else []
        print(f"gzip bomb ({shard.stat().st_size:,} bytes of gzip, 1 GiB line), cap {args.cap_gib} GiB, {side}: "
              f"exit {code}, peak RSS {rss:,.0f} MB, left in slices/: {leftovers or 'nothing'}")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    from llamantino.errors import entry

    sys.exit(entry(lambda argv: main()))
