"""``python -m llamantino data``: the Italian dataset registry, file checks, previews, offline prep.

    python -m llamantino data list
    python -m llamantino data check my.jsonl --format conversations --column messages=data
    python -m llamantino data preview it_ultrachat_sample --template llamantino2_chat -n 2
    python -m llamantino data prepare runs/adapt-llama2_7b-clean_mc4_it/<run>   # on a machine with network
    python -m llamantino data pin clean_mc4_it                                  # pin the hub revision
    python -m llamantino data cache --remove --dry-run                          # cache entries no run names

``preview`` encodes rows with the plugin's own code and prints every example as alternating
``[masked]`` and ``[trained]`` spans, so you see exactly what the model will learn from.
"""

from __future__ import annotations

import argparse

from llamantino.argparsing import ArgumentParser
from llamantino.cli.cache import add_cache_parser
from llamantino.errors import DataError
from llamantino_plugin.formats import FORMATS, shown_path
from llamantino_plugin.templates import default_template


def cmd_list(args) -> int:
    from llamantino.config.registry import registry

    for name, entry_ in registry().items():
        where = entry_.path or f"{entry_.hub_id}{'/' + entry_.subset if entry_.subset else ''}"
        pinned = "" if entry_.path else ("  revision " + entry_.revision if entry_.revision else "  (revision not pinned)")
        print(f"{name:28} {entry_.format:13} {','.join(entry_.purpose):6} {where}{pinned}")
    return 0


def cmd_check(args) -> int:
    from llamantino.inputs.preview import check, source_of

    path, fmt, mapping = source_of(args.target, args.format, args.column)
    report = check(path, fmt, mapping, args.policy)
    shown = shown_path(path)  # a name that is not UTF-8 is shown as the repr of its bytes
    print(f"{shown}: {report.rows} rows, {report.kept} good, {report.skipped} bad ({fmt})")
    for error in report.errors[:20]:
        print(f"  {error}")
    if report.skipped:  # a check that finds bad rows fails, so it can guard a CI pipeline
        raise DataError(f"{shown}: {report.skipped} bad row(s) of {report.rows}")
    return 0


def cmd_preview(args) -> int:
    from llamantino.inputs.preview import (
        load_tokenizer,
        normalizes,
        preview_examples,
        source_of,
    )

    path, fmt, mapping = source_of(args.target, args.format, args.column)
    template = args.template or default_template(fmt)
    normalize = normalizes(args.target) if args.normalize is None else args.normalize == "true"
    tokenizer = load_tokenizer(args.tokenizer)
    for number, example in enumerate(preview_examples(path, fmt, mapping, template, tokenizer, args.n,
                                                      args.system_prompt, normalize=normalize,
                                                      script_exact=args.script_exact), start=1):
        if "pair" in example:
            print(f"--- pair {number} ({template}) ---")
            for key in ("prompt", "chosen", "rejected"):
                print(f"[{key}] {example['pair'][key]!r}")
            continue
        print(f"--- example {number}: {example['tokens']} tokens, {example['trained']} trained ({template}) ---")
        for kind, text in example["spans"]:
            print(f"[{kind}] {text!r}")
    return 0


def cmd_prepare(args) -> int:
    from llamantino.orchestrate.offline import prepare_run_dir

    lock = prepare_run_dir(args.run_dir, args.local_only)
    print(f"prepared {args.run_dir} ({', '.join(lock['prepared']) or 'task data cached'}); the job can now run offline")
    return 0


def cmd_pin(args) -> int:
    from llamantino.config.registry import pin

    print(f"pinned {args.name} to {pin(args.name)}")
    return 0


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino data", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the dataset registry, one line each").set_defaults(fn=cmd_list)
    for name, fn, text in (("check", cmd_check, "check every row of a JSONL file (exit 2 if any is bad)"),
                           ("preview", cmd_preview, "show the first encoded examples with the masked spans")):
        p = sub.add_parser(name, help=text)
        p.add_argument("target", help="a registry name (see `list`) or a .jsonl file")
        p.add_argument("--format", choices=[str(fmt) for fmt in FORMATS])
        p.add_argument("--column", action="append", default=[], metavar="LOGICAL=COLUMN")
        p.set_defaults(fn=fn)
        if name == "check":
            p.add_argument("--policy", choices=("strict", "skip"), default="skip",
                           help="skip (default here): report every bad row; strict: stop at the first")
        else:
            p.add_argument("-n", type=int, default=3, help="how many examples")
            p.add_argument("--template", help="prompt template (default: the format's, e.g. alpaca_it for instructions)")
            p.add_argument("--system-prompt", default=None)
            p.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: the tiny model's)")
            p.add_argument("--normalize", choices=("true", "false"), default=None,
                           help="text: normalise the documents as the loader does (default: the registry entry's "
                                "normalize, true for a file); false: as read")
            p.add_argument("--script-exact", action="store_true",
                           help="the ANITA scripts' text and ids (prompt.script_exact): SFT conversations and DPO "
                                "pairs under a Llama-3 chat template")
    p = sub.add_parser("prepare", help="download and pre-tokenise a run's data for an offline cluster")
    p.add_argument("run_dir")
    p.add_argument("--local-only", action="store_true", help="no downloads: pre-tokenise local inputs only")
    p.set_defaults(fn=cmd_prepare)
    p = sub.add_parser("pin", help="pin a hub dataset's revision in its registry entry (needs network)")
    p.add_argument("name")
    p.set_defaults(fn=cmd_pin)
    add_cache_parser(sub)
    args = parser.parse_args(argv)
    return args.fn(args)

