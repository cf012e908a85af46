"""``python -m llamantino data cache``: the shared cache's entries, and removing the ones no run names.

    python -m llamantino data cache                                 # every entry: size, last use, runs
    python -m llamantino data cache hardware=leonardo_booster       # that option's cache and runs
    python -m llamantino data cache --remove --dry-run              # what would go, and how many bytes
    python -m llamantino data cache --remove                        # remove the entries no run names

The cache is ``hardware.storage.cache`` and the runs are read under ``run.output_root``
(``hardware.storage.runs``) and ./runs, composed from the overrides given; ``--cache`` and
``--runs`` (repeatable) name them instead. An entry whose jobs are queued or running, held by
another command, or used or written in the last hour is kept (llamantino/reports/cache.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_cache_parser(sub) -> None:
    """The ``cache`` subcommand of ``data``."""
    p = sub.add_parser("cache", help="the shared cache: size, last use and runs of each entry; --remove the unnamed",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides choosing the hardware option (its storage)")
    p.add_argument("--cache", type=Path, help="the cache folder (default: hardware.storage.cache)")
    p.add_argument("--runs", type=Path, action="append", default=[],
                   help="a folder of runs to read (repeatable; default: run.output_root and ./runs)")
    p.add_argument("--remove", action="store_true", help="remove the entries no run names")
    p.add_argument("--dry-run", action="store_true", help="with --remove: list what would go, remove nothing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(fn=cmd_cache)


def cmd_cache(args) -> int:
    from llamantino.errors import ConfigError
    from llamantino.reports.cache import (
        as_plain,
        cache_report,
        format_report,
        storage_roots,
    )

    if args.dry_run and not args.remove:
        raise ConfigError("data cache: --dry-run goes with --remove (python -m llamantino data cache --remove --dry-run)")
    cache, roots = storage_roots(args.overrides, args.cache, args.runs)
    report = cache_report(cache, roots, remove=args.remove, dry_run=args.dry_run)
    print(json.dumps(as_plain(report), indent=2) if args.json else format_report(report))
    return 0
