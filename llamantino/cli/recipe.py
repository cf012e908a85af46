"""``python -m llamantino recipe``: share runs as files, reproduce them, compare them.

    python -m llamantino recipe list                      # the published-model presets
    python -m llamantino recipe export <run dir> [-o F]   # one self-contained, checksummed file
    python -m llamantino recipe import F [--dest DIR]     # re-create the run directory, verified
    python -m llamantino recipe diff A B                  # resolved settings that differ
    python -m llamantino recipe presets [--write]         # re-render recipes/ (check or update)

A recipe file is data (see llamantino/orchestrate/sharing.py). Import reads it with ``yaml.safe_load``, accepts only known keys, never
instantiates ``_target_``, never evaluates ``${...}`` interpolations (they could read the
environment), refuses paths that leave the project's data folder or the destination, re-renders
the Axolotl YAML and the sbatch script from the config (the quoting renderer, never the file's own
text) and refuses when they differ from the exported ones, or when a checksum or a data hash does
not match, unless told otherwise. Nothing is overwritten: the run directory is new and atomic.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from llamantino.argparsing import ArgumentParser
from llamantino.paths import RECIPES_DIR
from llamantino.orchestrate.sharing import (config_of, diff_configs, export_to, import_record, load_record, preset_names,
                                render_preset)


def cmd_list(args) -> int:
    from llamantino.config.compose import compose_config

    for name in preset_names():
        cfg = compose_config([f"experiment={name}"])
        scores = cfg.target.scores if cfg.target else {}
        goal = f"target avg {sum(scores.values()) / len(scores):.4f} ({cfg.target.model_id})" if scores else "no published target"
        print(f"{name:26} {cfg.stage.name:6} {cfg.model.name:24} {cfg.hardware.name} x{cfg.hardware.nodes}  {goal}")
    return 0


def cmd_presets(args) -> int:
    stale = []
    for name in preset_names():
        for filename, text in render_preset(name).items():
            path = RECIPES_DIR / name / filename
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
                if args.write:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
    if stale and not args.write:
        print("out of date (run with --write, then review the diff):\n  " + "\n  ".join(stale))
        return 1
    print(f"{'updated' if stale else 'up to date'}: {len(preset_names())} presets in {RECIPES_DIR}")
    return 0


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino recipe", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the presets, one line each").set_defaults(fn=cmd_list)
    p = sub.add_parser("export", help="write a run directory as one self-contained recipe file")
    p.add_argument("run_dir", type=Path)
    p.add_argument("-o", "--output", type=Path)
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("import", help="re-create a run directory from a recipe file")
    p.add_argument("recipe", type=Path)
    p.add_argument("--dest", type=Path, default=Path("runs") / "imported")
    p.add_argument("--allow-mismatch", action="store_true", help="import despite checksum, hash or render mismatches")
    p.add_argument("--allow-version-mismatch", action="store_true")
    p.add_argument("--allow", action="append", default=[], metavar="KEY",
                   help="accept one setting outside what a shared recipe may set (named in the refusal)")
    p.set_defaults(fn=cmd_import)
    p = sub.add_parser("diff", help="resolved settings that differ between two runs, recipes or presets")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(fn=cmd_diff)
    p = sub.add_parser("presets", help="check recipes/ against the presets (--write to update)")
    p.add_argument("--write", action="store_true")
    p.set_defaults(fn=cmd_presets)
    args = parser.parse_args(argv)
    return args.fn(args)


def cmd_export(args) -> int:
    output = export_to(args.run_dir, args.output)
    print(f"exported {args.run_dir} to {output}")
    return 0


def cmd_import(args) -> int:
    run_dir = import_record(load_record(args.recipe), args.dest, allow_mismatch=args.allow_mismatch,
                            allow_version_mismatch=args.allow_version_mismatch, allow=tuple(args.allow))
    print(f"imported {args.recipe}: launch it with python -m llamantino launch {shlex.quote(str(run_dir))}")
    print(f"run_dir: {run_dir}")
    return 0


def cmd_diff(args) -> int:
    lines = diff_configs(config_of(args.a), config_of(args.b))
    print("\n".join(lines) if lines else "no differences")
    return 0

