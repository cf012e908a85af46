"""The Italian dataset registry and what ``python -m llamantino.data`` does with it.

Registry entries (``datasets_ita/registry``), file checks, previews of what the model trains on,
offline preparation of a run directory, and pinning hub revisions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from llamantino.errors import DataError
from llamantino.paths import DATASETS_DIR, REGISTRY_DIR
from llamantino.rundir import RunDir, read_json, write_json
from llamantino.schema import DataConfig, from_plain


def registry() -> dict[str, DataConfig]:
    """Every registry entry by name, checked against the data schema."""
    entries = {}
    for path in sorted(REGISTRY_DIR.glob("*.yaml")):
        entries[path.stem] = from_plain(DataConfig, yaml.safe_load(path.read_text()), f"data ({path.name})")
    return entries


def source_of(target: str, fmt: str | None, columns: list[str]) -> tuple[Path, str, dict]:
    """(file, format, columns) of a registry name or a file path plus command-line options."""
    entries = registry()
    if target in entries:
        entry = entries[target]
        if not entry.path:
            raise DataError(f"data {target} lives on the hub ({entry.hub_id}); check and preview read local files")
        path = Path(entry.path)
        mapping = dict(entry.columns)
        fmt = fmt or str(entry.format)
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


def check(path: Path, fmt: str, mapping: dict, policy: str):
    """Every row of a local file checked against its format (the plugin's own reader)."""
    from llamantino_plugin.formats import DataFileError, check_file, columns_for

    try:
        return check_file(path, fmt, columns_for(fmt, mapping), policy)
    except (DataFileError, ValueError) as exc:
        raise DataError(str(exc)) from None


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


def prepare_run_dir(run_dir: Path, local_only: bool = False) -> dict:
    """Download a run's model and data (or eval task data) into the HF cache; pre-tokenise training data."""
    run = RunDir(Path(run_dir))
    run_dir = run.path
    if not run.is_run():
        raise DataError(f"{run_dir} is not a run directory written by llamantino (no {RunDir.PROVENANCE})")
    provenance = run.provenance()
    lock = {"model": provenance.get("model"), "data": provenance.get("data"), "resolved": {}}
    env = {**os.environ, **provenance.get("env", {})}
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    if local_only:
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
    prepared = run / RunDir.PREPARED
    log = run / RunDir.PREPARE_LOG
    log.parent.mkdir(exist_ok=True)
    if (run / RunDir.EVAL_PLAN).is_file():
        plan = read_json(run / RunDir.EVAL_PLAN, "")
        tasks = [task for group in plan["groups"] for task in group["tasks"]]
        code = ("import sys; from lm_eval.tasks import TaskManager, get_task_dict; "
                "get_task_dict(sys.argv[2:], TaskManager(include_path=sys.argv[1] or None))")
        command = [sys.executable, "-c", code, plan["include_path"] or "", *tasks]
        lock["eval_tasks"] = tasks
    elif (run / RunDir.RECIPE).is_file():
        command = [sys.executable, "-m", "axolotl.cli.preprocess", RunDir.RECIPE]
    else:
        raise DataError(f"{run_dir} has neither axolotl.yaml nor eval.json: nothing to prepare")
    with open(log, "w") as handle:
        rc = subprocess.run(command, cwd=run_dir, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise DataError(f"preparing {run_dir} failed (exit {rc}); log: {log}")
    prepared.mkdir(exist_ok=True)
    lock["prepared"] = sorted(p.name for p in prepared.iterdir() if p.name != Path(RunDir.LOCK).name)
    write_json(run / RunDir.LOCK, lock)
    return lock


def pin(name: str) -> str:
    """Resolve a hub dataset's current commit and write it into its registry entry."""
    entry_path = REGISTRY_DIR / f"{name}.yaml"
    entries = registry()
    if name not in entries:
        raise DataError(f"unknown data {name!r}; registry entries: {', '.join(entries)}")
    entry = entries[name]
    if not entry.hub_id:
        raise DataError(f"data {name} is a local file; nothing to pin")
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(entry.hub_id).sha
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise DataError(f"could not reach the hub to pin {entry.hub_id} ({exc.__class__.__name__}: {exc}); "
                        "run `pin` on a machine with network") from None
    lines = entry_path.read_text().splitlines()
    lines = [f"revision: {sha}" if line.startswith("revision:") else line for line in lines]
    if not any(line.startswith("revision:") for line in lines):
        lines.append(f"revision: {sha}")
    entry_path.write_text("\n".join(lines) + "\n")
    return sha
