"""``python -m llamantino sync <run, pipeline or sweep dir> [--dry-run]``: upload offline W&B runs.

Runs trained with ``tracking=wandb`` on hardware without network (``tracking.mode`` auto or
offline) keep their W&B records in ``<run>/wandb/offline-run-*``; run this where there is network.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino sync", description=__doc__)
    parser.add_argument("target", type=Path, help="a run, pipeline or sweep directory")
    parser.add_argument("--dry-run", action="store_true", help="list the offline runs, upload nothing")
    args = parser.parse_args(argv)
    from llamantino.reports.tracking import offline_runs, sync

    paths = offline_runs(args.target)
    for path in paths:
        print(f"{'would sync' if args.dry_run else 'syncing'} {path}")
    if not args.dry_run:
        sync(paths)
    print(f"{len(paths)} offline W&B run(s){' (dry run)' if args.dry_run else ' synced'}")
    return 0

