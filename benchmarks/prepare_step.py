"""One prepare step in a fresh process, timed in process; prints one JSON line.

    python benchmarks/prepare_step.py scan|dedup|task <entry> [index]
    python benchmarks/prepare_step.py --exec <command...>    # a command's exit code and peak RSS

Runs what ``python -m llamantino.job.prepare <step> <entry> --index <index>`` runs, with the modules
the step needs imported before the clock starts (as benchmarks/data_worker.py imports Axolotl before
timing its data path): the seconds are the step's own work, tokenizer loading and worker processes
included, and the step's peak RSS. With PYTHONPATH naming an older tree whose prepare has no units (one ``task`` writing
``slices/``), ``task`` runs that tree's task.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    if sys.argv[1] == "--exec":
        return exec_measured(sys.argv[2:])
    step, entry = sys.argv[1], Path(sys.argv[2]).resolve()
    index = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    import numpy  # noqa: F401  every step's arrays

    from llamantino.job import prepare
    from llamantino.records.rundir import PreparedDir

    if step == "task":
        import pyarrow  # noqa: F401
        from transformers import AutoTokenizer  # noqa: F401  (transformers imports its parts lazily)
    entry_dir = PreparedDir(entry)
    started = time.perf_counter()
    if not hasattr(prepare, "run_units"):  # the tree before units: one task, in-slice deduplication
        prepare.run_task(entry_dir, index)
    elif step == "dedup":
        prepare.run_dedup(entry_dir, index)
    else:
        prepare.run_units(entry_dir, step, index, echo=lambda *_: None)
    seconds = time.perf_counter() - started
    print(json.dumps({"step": step, "seconds": seconds, "rss_mb": peak_rss_mb(), "module": prepare.__file__}))


def peak_rss_mb() -> float:
    """The largest peak RSS of this process and its worker processes. Not ``ru_maxrss`` of this
    process: exec keeps the largest of it and the parent's at the fork (a benchmark that spawns the
    step from a large process would measure itself); VmHWM belongs to this process's own memory."""
    import resource

    status = Path("/proc/self/status").read_text()
    own = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))  # kB
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def exec_measured(argv: list[str]) -> None:
    """Run ``argv`` as a child of this process (small: nothing imported) and print its exit code and
    peak RSS: the child's ru_maxrss is its own, not that of whatever large process started this one."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "rss_mb": usage.ru_maxrss / 1024}), flush=True)


if __name__ == "__main__":
    main()
