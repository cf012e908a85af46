"""One dataset strategy for every SFT format: check rows, normalise, tokenise, mask, account.

Axolotl calls ``wrap_dataset`` once per dataset in the main process, so every count here is exact
(workers only run the per-row maps). Steps, each counted in the data report:

1. read each row with the format's reader (``formats.py``): a bad row fails the run (``strict``)
   or is dropped and counted (``skip``);
2. raw text only: Italian normalisation, exact-duplicate removal, minimum length;
3. tokenise: raw text is chunked to ``sequence_len``; instructions use the alpaca_it prompt or,
   with a chat template, become a user/assistant exchange; conversations are rendered with the
   chat template and only assistant turns are trained (system and user spans get label -100);
4. length: rows over ``sequence_len`` are dropped, truncated or refused as ``excess_length_strategy``
   says, rows left with no trainable token are dropped; if nothing is left the run stops here.
"""

from __future__ import annotations

import hashlib
from functools import partial

from axolotl.prompt_tokenizers import DatasetWrappingStrategy

from llamantino_plugin import report
from llamantino_plugin.encode import IGNORE, LlamantinoDataError, canonical_row, tokeniser
from llamantino_plugin.formats import columns_for, normalise_text
from llamantino_plugin.templates import template_info


def find_spec(cfg, ds_cfg, fmt: str) -> dict:
    """The ``llamantino_datasets`` entry describing ``ds_cfg`` (matched by path and name)."""
    for spec in cfg.get("llamantino_datasets") or []:
        if spec.get("path") == ds_cfg.get("path") and spec.get("name") == ds_cfg.get("name"):
            if spec.get("format") != fmt:
                raise LlamantinoDataError(
                    f"dataset {ds_cfg.get('path')!r} is described as format {spec.get('format')!r} "
                    f"but its type loads {fmt!r}"
                )
            return {"format": fmt, "columns": columns_for(fmt, spec.get("columns"))}
    return {"format": fmt, "columns": columns_for(fmt)}


def _truncate(row, *, sequence_len: int) -> dict:
    return {key: row[key][:sequence_len] for key in ("input_ids", "attention_mask", "labels")}


class ItalianDataset(DatasetWrappingStrategy):
    """The Axolotl dataset strategy behind ``type: llamantino_plugin.<format>``."""

    def __init__(self, tokenizer, cfg, ds_cfg, fmt: str):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.ds_cfg = ds_cfg
        self.spec = find_spec(cfg, ds_cfg, fmt)
        self.fmt = fmt
        self.template = cfg.get("llamantino_template") or ("alpaca_it" if fmt == "instructions" else None)
        if fmt == "conversations" and (self.template is None or template_info(self.template).kind != "chat"):
            raise LlamantinoDataError(
                f"dataset {ds_cfg.get('path')!r}: conversations need a chat template "
                "(llamantino_template: llamantino2_chat, anita or llama3)"
            )
        self.as_chat = fmt == "instructions" and template_info(self.template).kind == "chat"
        self.policy = cfg.get("llamantino_bad_rows") or "strict"

    @property
    def name(self) -> str:
        return str(self.ds_cfg.get("path")) + (f" ({self.ds_cfg.get('name')})" if self.ds_cfg.get("name") else "")

    def wrap_dataset(self, dataset, process_count=None, keep_in_memory=False, **kwargs):
        counts = {"rows": len(dataset)}
        map_kwargs = {"num_proc": process_count, "keep_in_memory": keep_in_memory}
        dataset = dataset.map(
            partial(canonical_row, fmt=self.fmt, columns=self.spec["columns"], as_chat=self.as_chat),
            with_indices=True, remove_columns=dataset.column_names, desc="llamantino: checking rows", **map_kwargs,
        )
        bad = dataset.filter(lambda row: bool(row["_error"]), **map_kwargs)
        counts["invalid"] = len(bad)
        if len(bad) and self.policy == "strict":
            raise LlamantinoDataError(
                f"dataset {self.name}: {len(bad)} bad row(s); first: {bad[0]['_error']} "
                "(set llamantino_bad_rows: skip to drop and count them)"
            )
        if len(bad):
            dataset = dataset.filter(lambda row: not row["_error"], **map_kwargs)
        if self.fmt == "text":
            dataset = self._clean_text(dataset, counts, map_kwargs)
        dataset = self._tokenise(dataset, map_kwargs)
        dataset = self._fit_length(dataset, counts, map_kwargs)
        counts["kept"] = len(dataset)
        counts["tokens"] = sum(len(ids) for ids in dataset["input_ids"])
        counts["trainable_tokens"] = sum(sum(1 for label in labels if label != IGNORE) for labels in dataset["labels"])
        report.record(self.cfg, self.name, self.fmt, counts)
        if counts["kept"] == 0:
            raise LlamantinoDataError(f"dataset {self.name}: no trainable row left ({report.describe(counts)})")
        return dataset

    def _clean_text(self, dataset, counts, map_kwargs):
        normalised = dataset.map(lambda row: {"text": normalise_text(row["text"])}, **map_kwargs)
        counts["normalised"] = sum(a != b for a, b in zip(dataset["text"], normalised["text"]))
        dataset = normalised
        if self.cfg.get("llamantino_text_dedup", True) is not False:
            seen: set[bytes] = set()
            keep = []
            for index, text in enumerate(dataset["text"]):
                digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                if digest not in seen:
                    seen.add(digest)
                    keep.append(index)
            counts["duplicates"] = len(dataset) - len(keep)
            dataset = dataset.select(keep)
        min_chars = self.cfg.get("llamantino_text_min_chars")
        min_chars = 20 if min_chars is None else min_chars
        before = len(dataset)
        dataset = dataset.filter(lambda row: len(row["text"]) >= min_chars, **map_kwargs)
        counts["too_short"] = before - len(dataset)
        return dataset

    def _tokenise(self, dataset, map_kwargs):
        cfg = self.cfg
        fn = tokeniser(self.fmt, self.template, tokenizer=self.tokenizer, sequence_len=cfg.sequence_len,
                       system_prompt=cfg.get("llamantino_system_prompt"), train_on_inputs=bool(cfg.train_on_inputs))
        return dataset.map(fn, batched=True, remove_columns=dataset.column_names,
                           desc=f"llamantino: tokenising {self.fmt}", **map_kwargs)

    def _fit_length(self, dataset, counts, map_kwargs):
        limit = self.cfg.sequence_len
        strategy = (self.cfg.get("excess_length_strategy") or "drop").lower()
        too_long = dataset.filter(lambda row: len(row["input_ids"]) > limit, **map_kwargs)
        if len(too_long) and strategy == "raise":
            raise LlamantinoDataError(
                f"dataset {self.name}: {len(too_long)} row(s) exceed sequence_len={limit} "
                f"(longest {max(len(ids) for ids in too_long['input_ids'])} tokens) and excess_length_strategy is raise"
            )
        if strategy == "truncate":
            counts["truncated"] = len(too_long)
            dataset = dataset.map(partial(_truncate, sequence_len=limit), **map_kwargs)
        else:
            counts["too_long"] = len(too_long)
            if len(too_long):
                counts["longest_tokens"] = max(len(ids) for ids in too_long["input_ids"])
                dataset = dataset.filter(lambda row: len(row["input_ids"]) <= limit, **map_kwargs)
        before = len(dataset)
        dataset = dataset.filter(lambda row: any(label != IGNORE for label in row["labels"]), **map_kwargs)
        counts["no_trainable_tokens"] = before - len(dataset)
        return dataset


def loader(fmt: str):
    """The ``load(tokenizer, cfg, ds_cfg)`` entry point Axolotl calls for one format."""

    def load(tokenizer, cfg, ds_cfg=None):
        return ItalianDataset(tokenizer, cfg, ds_cfg or {}, fmt)

    return load
