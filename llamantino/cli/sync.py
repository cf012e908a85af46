"""``python -m llamantino sync <run, pipeline or sweep dir> [--dry-run] [--timeout S]``: upload offline W&B runs.

Runs trained with ``tracking=wandb`` on hardware without network (``tracking.mode`` auto or
offline) keep their W&B records in ``<run>/wandb/offline-run-*``; run this where there is network.
Each upload may take ``--timeout`` seconds (default 600): without network ``wandb sync`` never
ends on its own. Nothing to sync, or a run not synced, is an error (exit 2).
"""

from __future__ import annotations

from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    from llamantino.reports.tracking import SYNC_TIMEOUT_S, offline_runs, sync

    parser = ArgumentParser(prog="python -m llamantino sync", description=__doc__)
    parser.add_argument("target", type=Path, help="a run, pipeline or sweep directory")
    parser.add_argument("--dry-run", action="store_true", help="list the offline runs, upload nothing")
    parser.add_argument("--timeout", type=float, default=SYNC_TIMEOUT_S, metavar="SECONDS",
                        help=f"time limit of each run's upload (default {SYNC_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    paths = offline_runs(args.target)
    if args.dry_run:
        print("\n".join(f"would sync {path}" for path in paths))
        print(f"{len(paths)} offline W&B run(s) (dry run)")
        return 0
    sync(paths, args.timeout)
    print(f"{len(paths)} offline W&B run(s) synced")
    return 0
