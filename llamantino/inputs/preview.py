"""A registry entry's or a file's rows checked, and previewed as the model trains on them.

The library behind ``llamantino data check`` and ``llamantino data preview``: the plugin's own
readers and encoders, so a file that passes here is read the same way in training.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.config.registry import registry
from llamantino.errors import DataError
from llamantino.paths import DATASETS_DIR


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
        from llamantino.inputs.tiny import ensure_tiny_model

        name = str(ensure_tiny_model())
    return AutoTokenizer.from_pretrained(name)


def normalizes(target: str) -> bool:
    """Whether the loader normalises a target's text: its registry entry's ``normalize``; a file: yes."""
    entry = registry().get(target)
    return entry.normalize if entry is not None else True


def preview_examples(path: Path, fmt: str, mapping: dict, template: str, tokenizer, count: int,
                     system_prompt: str | None = None, sequence_len: int = 4096, normalize: bool = True,
                     script_exact: bool = False) -> list[dict]:
    """The first ``count`` training examples of a file, as the plugin encodes them (text normalised
    unless ``normalize`` is False, as a source with ``normalize: false``; ``script_exact``: as
    ``prompt.script_exact`` trains SFT conversations and DPO pairs)."""
    from llamantino_plugin.encode import canonical_row, encoding_of, tokeniser
    from llamantino_plugin.formats import Encoding, columns_for, format_spec, normalise_text
    from llamantino_plugin.formats import read_preference
    from llamantino_plugin.preferences import pair_strings, script_pair
    from llamantino_plugin.templates import template_info

    columns = columns_for(fmt, mapping)
    spec = format_spec(fmt)
    as_chat = encoding_of(fmt, template) is Encoding.chat
    if script_exact and not ((spec.pairs or as_chat) and template_info(template).family == "llama3"):
        raise DataError(f"--script-exact previews SFT conversations and DPO pairs under a Llama-3 chat template "
                        f"(anita, llama3), not {fmt} data with {template or 'no template'}: pass --template anita")
    examples = []
    for index, (_, row) in enumerate(_rows(path)):
        if len(examples) >= count:
            break
        if spec.pairs and script_exact:
            pair = script_pair(read_preference(row, columns, as_script=True), tokenizer, None, None)
            examples.append({"pair": {key: pair[key] for key in ("prompt", "chosen", "rejected")}})
            continue
        if spec.pairs:
            pair = pair_strings(spec.reader(row, columns), template, system_prompt, tokenizer.bos_token or "")
            examples.append({"pair": pair})
            continue
        canonical = canonical_row(row, index, fmt=fmt, columns=columns, as_chat=as_chat)
        if canonical["_error"]:
            raise DataError(f"{path}: {canonical['_error']}")
        if spec.corpus and normalize:  # cleaned as the loader cleans it
            canonical["text"] = normalise_text(canonical["text"])
        batch = {key: [value] for key, value in canonical.items()}
        encode = tokeniser(fmt, template, tokenizer=tokenizer, sequence_len=sequence_len,
                           system_prompt=system_prompt, train_on_inputs=script_exact, script_exact=script_exact)
        encoded = encode(batch)
        for ids, labels in zip(encoded["input_ids"], encoded["labels"]):
            examples.append({"spans": spans(tokenizer, ids, labels), "tokens": len(ids),
                             "trained": sum(label != -100 for label in labels)})
    return examples


def _rows(path: Path):
    """The file's rows; a line over the limits or unreadable ends the preview in one line naming it."""
    from llamantino_plugin.formats import DataFileError, iter_jsonl

    try:
        yield from iter_jsonl(path)
    except DataFileError as exc:
        raise DataError(str(exc)) from None


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
