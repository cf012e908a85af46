"""``python -m llamantino cancel <run, pipeline or sweep dir> [--dry-run]``: end exactly its jobs.

Each run's latest job still queued or running: a SLURM job by its id (``scancel <id>``, never by
name; a sweep's points by the array's id), a local run's process group (SIGTERM, SIGKILL after 30 s;
only when process.json names this host and the run's own live process). Each run cancelled says
CANCELLED in its status.json, and its launching command exits saying it was cancelled. Nothing
queued or running is said in one line (exit 0).
"""

from __future__ import annotations

from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino cancel", description=__doc__)
    parser.add_argument("target", type=Path, help="a run, pipeline, sweep or study directory")
    parser.add_argument("--dry-run", action="store_true", help="say what would be cancelled; signal nothing")
    args = parser.parse_args(argv)
    from llamantino.orchestrate.cancel import cancel

    cancel(args.target, dry_run=args.dry_run)
    return 0
