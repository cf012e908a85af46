"""``python -m llamantino.data``: the Italian dataset registry, file checks, previews, offline prep.

    python -m llamantino.data list
    python -m llamantino.data check my.jsonl --format conversations --column messages=data
    python -m llamantino.data preview it_ultrachat_sample --template llamantino2_chat -n 2
    python -m llamantino.data prepare runs/adapt-llama2_7b-clean_mc4_it/<run>   # on a machine with network
    python -m llamantino.data pin clean_mc4_it                                  # pin the hub revision

``preview`` encodes rows with the plugin's own code and prints every example as alternating
``[masked]`` and ``[trained]`` spans, so you see exactly what the model will learn from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from llamantino.errors import DataError, run_command
from llamantino.paths import DATASETS_DIR, REGISTRY_DIR
from llamantino.schema import DataConfig


def registry() -> dict[str, dict]:
    """Every registry entry by name, checked against the data schema."""
    entries = {}
    for path in sorted(REGISTRY_DIR.glob("*.yaml")):
        node = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.create(yaml.safe_load(path.read_text())))
        entries[path.stem] = OmegaConf.to_container(node)
    return entries


def source_of(target: str, fmt: str | None, columns: list[str]) -> tuple[Path, str, dict]:
    """(file, format, columns) of a registry name or a file path plus command-line options."""
    entries = registry()
    if target in entries:
        entry = entries[target]
        if not entry["path"]:
            raise DataError(f"data {target} lives on the hub ({entry['hub_id']}); check and preview read local files")
        path = Path(entry["path"])
        mapping = dict(entry["columns"])
        fmt = fmt or entry["format"]
        path = path if path.is_absolute() else DATASETS_DIR / path
    else:
        path, mapping = Path(target), {}
        if not fmt:
            raise DataError(f"{target} is not a registry name ({', '.join(entries)}); give --format for a file")
    for item in columns:
        if "=" not in item:
            raise DataError(f"--column {item!r}: write logical=column, e.g. messages=data")
        logical, column = item.split("=", 1)
        mapping[logical] = column
    return path, fmt, mapping


def cmd_list(args) -> int:
    for name, entry in registry().items():
        where = entry["path"] or f"{entry['hub_id']}{'/' + entry['subset'] if entry['subset'] else ''}"
        pinned = "" if entry["path"] else ("  revision " + entry["revision"] if entry["revision"] else "  (revision not pinned)")
        print(f"{name:28} {entry['format']:13} {','.join(entry['purpose']):6} {where}{pinned}")
    return 0


def cmd_check(args) -> int:
    from llamantino_plugin.formats import DataFileError, check_file, columns_for

    path, fmt, mapping = source_of(args.target, args.format, args.column)
    try:
        report = check_file(path, fmt, columns_for(fmt, mapping), args.policy)
    except DataFileError as exc:
        raise DataError(str(exc)) from None
    except ValueError as exc:
        raise DataError(str(exc)) from None
    print(f"{path}: {report.rows} rows, {report.kept} good, {report.skipped} bad ({fmt})")
    for error in report.errors[:20]:
        print(f"  {error}")
    return 0


def load_tokenizer(name: str | None):
    from transformers import AutoTokenizer

    if name is None:
        from llamantino.tiny import ensure_tiny_model

        name = str(ensure_tiny_model())
    return AutoTokenizer.from_pretrained(name)


def preview_examples(path: Path, fmt: str, mapping: dict, template: str, tokenizer, count: int,
                     system_prompt: str | None = None, sequence_len: int = 4096) -> list[dict]:
    """The first ``count`` training examples of a file, as the plugin encodes them."""
    from llamantino_plugin.encode import canonical_row, tokeniser
    from llamantino_plugin.formats import columns_for, iter_jsonl, normalise_text, read_preference
    from llamantino_plugin.preferences import pair_strings
    from llamantino_plugin.templates import template_info

    columns = columns_for(fmt, mapping)
    as_chat = fmt == "instructions" and template_info(template).kind == "chat"
    examples = []
    for index, (_, row) in enumerate(iter_jsonl(path)):
        if len(examples) >= count:
            break
        if fmt == "preferences":
            pair = pair_strings(read_preference(row, columns), template, system_prompt, tokenizer.bos_token or "")
            examples.append({"pair": pair})
            continue
        canonical = canonical_row(row, index, fmt=fmt, columns=columns, as_chat=as_chat)
        if canonical["_error"]:
            raise DataError(f"{path}: {canonical['_error']}")
        if fmt == "text":
            canonical["text"] = normalise_text(canonical["text"])
        batch = {key: [value] for key, value in canonical.items()}
        encode = tokeniser(fmt, template, tokenizer=tokenizer, sequence_len=sequence_len,
                           system_prompt=system_prompt, train_on_inputs=False)
        encoded = encode(batch)
        for ids, labels in zip(encoded["input_ids"], encoded["labels"]):
            examples.append({"spans": spans(tokenizer, ids, labels), "tokens": len(ids),
                             "trained": sum(label != -100 for label in labels)})
    return examples


def spans(tokenizer, ids: list[int], labels: list[int]) -> list[tuple[str, str]]:
    """Consecutive runs of masked / trained tokens, decoded: [("masked", text), ("trained", text), ...]."""
    runs: list[tuple[str, list[int]]] = []
    for token, label in zip(ids, labels):
        kind = "masked" if label == -100 else "trained"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(token)
        else:
            runs.append((kind, [token]))
    return [(kind, tokenizer.decode(tokens)) for kind, tokens in runs]


def cmd_preview(args) -> int:
    path, fmt, mapping = source_of(args.target, args.format, args.column)
    template = args.template or ("alpaca_it" if fmt == "instructions" else "anita")
    tokenizer = load_tokenizer(args.tokenizer)
    for number, example in enumerate(preview_examples(path, fmt, mapping, template, tokenizer, args.n,
                                                      args.system_prompt), start=1):
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
    """Download a run's model and data (or eval task data) into the HF cache; pre-tokenise training data."""
    run_dir = Path(args.run_dir)
    if not (run_dir / "provenance.json").is_file():
        raise DataError(f"{run_dir} is not a run directory written by llamantino (no provenance.json)")
    provenance = json.loads((run_dir / "provenance.json").read_text())
    lock = {"model": provenance.get("model"), "data": provenance.get("data"), "resolved": {}}
    env = {**os.environ, **provenance.get("env", {})}
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    if args.local_only:
        env.update({key: "1" for key in offline})
    else:  # downloads happen here, so this step runs online even for offline clusters
        for key in offline:
            env.pop(key, None)
            os.environ.pop(key, None)
        from huggingface_hub import snapshot_download

        model = provenance.get("model") or {}
        if model.get("kind") == "hub":
            lock["resolved"]["model"] = snapshot_download(model["hub_id"], revision=model.get("revision"))
        data = provenance.get("data") or {}
        if data.get("hub_id"):
            lock["resolved"]["data"] = snapshot_download(data["hub_id"], repo_type="dataset", revision=data.get("revision"))
    if (provenance.get("model") or {}).get("kind") == "tiny_llama":
        from llamantino.tiny import ensure_tiny_model

        ensure_tiny_model()
    prepared = run_dir / "prepared"
    log = run_dir / "logs" / "prepare.log"
    log.parent.mkdir(exist_ok=True)
    if (run_dir / "eval.json").is_file():
        plan = json.loads((run_dir / "eval.json").read_text())
        tasks = [task for group in plan["groups"] for task in group["tasks"]]
        code = ("import sys; from lm_eval.tasks import TaskManager, get_task_dict; "
                "get_task_dict(sys.argv[2:], TaskManager(include_path=sys.argv[1] or None))")
        command = [sys.executable, "-c", code, plan["include_path"] or "", *tasks]
        lock["eval_tasks"] = tasks
    elif (run_dir / "axolotl.yaml").is_file():
        command = [sys.executable, "-m", "axolotl.cli.preprocess", "axolotl.yaml"]
    else:
        raise DataError(f"{run_dir} has neither axolotl.yaml nor eval.json: nothing to prepare")
    with open(log, "w") as handle:
        rc = subprocess.run(command, cwd=run_dir, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise DataError(f"preparing {run_dir} failed (exit {rc}); log: {log}")
    prepared.mkdir(exist_ok=True)
    lock["prepared"] = sorted(p.name for p in prepared.iterdir() if p.name != "llamantino_lock.json")
    (prepared / "llamantino_lock.json").write_text(json.dumps(lock, indent=2) + "\n")
    print(f"prepared {run_dir} ({', '.join(lock['prepared']) or 'task data cached'}); the job can now run offline")
    return 0


def cmd_pin(args) -> int:
    """Resolve a hub dataset's current commit and write it into its registry entry."""
    entry_path = REGISTRY_DIR / f"{args.name}.yaml"
    entries = registry()
    if args.name not in entries:
        raise DataError(f"unknown data {args.name!r}; registry entries: {', '.join(entries)}")
    entry = entries[args.name]
    if not entry["hub_id"]:
        raise DataError(f"data {args.name} is a local file; nothing to pin")
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(entry["hub_id"]).sha
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise DataError(f"could not reach the hub to pin {entry['hub_id']} ({exc.__class__.__name__}: {exc}); "
                        "run `pin` on a machine with network") from None
    lines = entry_path.read_text().splitlines()
    lines = [f"revision: {sha}" if line.startswith("revision:") else line for line in lines]
    if not any(line.startswith("revision:") for line in lines):
        lines.append(f"revision: {sha}")
    entry_path.write_text("\n".join(lines) + "\n")
    print(f"pinned {args.name} to {sha}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the dataset registry, one line each").set_defaults(fn=cmd_list)
    for name, fn, text in (("check", cmd_check, "check every row of a JSONL file"),
                           ("preview", cmd_preview, "show the first encoded examples with the masked spans")):
        p = sub.add_parser(name, help=text)
        p.add_argument("target", help="a registry name (see `list`) or a .jsonl file")
        p.add_argument("--format", choices=("text", "instructions", "conversations", "preferences"))
        p.add_argument("--column", action="append", default=[], metavar="LOGICAL=COLUMN")
        p.set_defaults(fn=fn)
        if name == "check":
            p.add_argument("--policy", choices=("strict", "skip"), default="skip",
                           help="skip (default here): report every bad row; strict: stop at the first")
        else:
            p.add_argument("-n", type=int, default=3, help="how many examples")
            p.add_argument("--template", help="prompt template (default: alpaca_it for instructions, else anita)")
            p.add_argument("--system-prompt", default=None)
            p.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: the tiny model's)")
    p = sub.add_parser("prepare", help="download and pre-tokenise a run's data for an offline cluster")
    p.add_argument("run_dir")
    p.add_argument("--local-only", action="store_true", help="no downloads: pre-tokenise local inputs only")
    p.set_defaults(fn=cmd_prepare)
    p = sub.add_parser("pin", help="pin a hub dataset's revision in its registry entry (needs network)")
    p.add_argument("name")
    p.set_defaults(fn=cmd_pin)
    args = parser.parse_args(argv)
    return run_command(args.fn, args)


if __name__ == "__main__":
    raise SystemExit(main())
