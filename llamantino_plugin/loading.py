"""One dataset strategy for every SFT format: check rows, normalise, tokenise, mask, account.

Axolotl calls ``wrap_dataset`` once per dataset in the main process, so every count here is exact
(worker processes only run the batched maps). Two passes at most over the data:

1. a batched map that reads each row with its format's reader (``formats.py``) and either
   tokenises it at once (instructions: the alpaca_it prompt, or with a chat template a
   user/assistant exchange; conversations: the chat template, only assistant turns trained), or,
   for raw text, normalises it (NFC, apostrophes, quotes, whitespace) and hashes it;
2. raw text only: drop exact duplicates and too-short texts (Arrow, no Python loop), then tokenise
   into ``sequence_len`` chunks.

Bad rows fail the run (``strict``) or are dropped and counted (``skip``). Rows over
``sequence_len`` are dropped, truncated or refused as ``excess_length_strategy`` says; rows with no
trainable token are dropped; if nothing is left the run stops here, saying why. Counts are taken
from Arrow columns batch by batch, so memory stays bounded on large corpora.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
from axolotl.prompt_tokenizers import DatasetWrappingStrategy

from llamantino_plugin import report
from llamantino_plugin.encode import (
    IGNORE,
    LlamantinoDataError,
    encode_rows,
    prepare_text,
    tokenise_text_counted,
    tokeniser,
)
from llamantino_plugin.formats import columns_for
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
        columns = self.spec["columns"]
        if self.fmt == "text":
            dataset = dataset.map(partial(prepare_text, columns=columns), batched=True, with_indices=True,
                                  remove_columns=dataset.column_names, desc="llamantino: checking and normalising",
                                  **map_kwargs)
            self._check_errors(dataset, counts)
            counts["normalised"] = int(_column(dataset, "_changed").sum())
            dataset = self._clean_text(dataset, counts)
            dataset = dataset.map(partial(tokenise_text_counted, tokenizer=self.tokenizer, sequence_len=self.cfg.sequence_len),
                                  batched=True, remove_columns=dataset.column_names, desc="llamantino: tokenising text",
                                  **map_kwargs)
        else:
            encode = tokeniser(self.fmt, self.template, tokenizer=self.tokenizer, sequence_len=self.cfg.sequence_len,
                               system_prompt=self.cfg.get("llamantino_system_prompt"),
                               train_on_inputs=bool(self.cfg.train_on_inputs))
            dataset = dataset.map(partial(encode_rows, fmt=self.fmt, columns=columns, as_chat=self.as_chat, encode=encode),
                                  batched=True, with_indices=True, remove_columns=dataset.column_names,
                                  desc=f"llamantino: checking and tokenising {self.fmt}", **map_kwargs)
            self._check_errors(dataset, counts)
        dataset = self._fit_length(dataset, counts, map_kwargs)
        counts["kept"] = len(dataset)
        counts["tokens"] = int(_column(dataset, "_tokens").sum())
        counts["trainable_tokens"] = int(_column(dataset, "_trainable").sum())
        dataset = dataset.remove_columns([c for c in ("_error", "_tokens", "_trainable") if c in dataset.column_names])
        report.record(self.cfg, self.name, self.fmt, counts)
        if counts["kept"] == 0:
            raise LlamantinoDataError(f"dataset {self.name}: no trainable row left ({report.describe(counts)})")
        return dataset

    def _check_errors(self, dataset, counts) -> None:
        errors = _column(dataset, "_error")
        bad = np.flatnonzero(errors != "")
        counts["invalid"] = len(bad)
        if len(bad) and self.policy == "strict":
            raise LlamantinoDataError(
                f"dataset {self.name}: {len(bad)} bad row(s); first: {errors[bad[0]]} "
                "(set llamantino_bad_rows: skip to drop and count them)"
            )

    def _clean_text(self, dataset, counts):
        """Drop bad rows, exact duplicates (after normalisation) and too-short texts in one selection."""
        keep = _column(dataset, "_error") == ""
        if self.cfg.get("llamantino_text_dedup", True) is not False:
            digests = _column(dataset, "_digest")
            rows = np.arange(len(digests))
            firsts = pa.table({"d": pa.array(digests, type=pa.binary(16)), "i": rows}).group_by("d").aggregate([("i", "min")])
            first = np.zeros(len(digests), dtype=bool)
            first[firsts.column("i_min").to_numpy()] = True
            counts["duplicates"] = int((keep & ~first).sum())
            keep &= first
        min_chars = self.cfg.get("llamantino_text_min_chars")
        short = _column(dataset, "_chars") < (20 if min_chars is None else min_chars)
        counts["too_short"] = int((keep & short).sum())
        keep &= ~short
        dataset = _select(dataset, keep)
        return dataset.remove_columns(["_changed", "_digest", "_chars", "_error"])

    def _fit_length(self, dataset, counts, map_kwargs):
        limit = self.cfg.sequence_len
        strategy = (self.cfg.get("excess_length_strategy") or "drop").lower()
        tokens = _column(dataset, "_tokens")
        valid = _column(dataset, "_error") == "" if "_error" in dataset.column_names else np.ones(len(tokens), bool)
        too_long = valid & (tokens > limit)
        longest = int(tokens.max()) if len(tokens) else 0
        if too_long.any() and strategy == "raise":
            raise LlamantinoDataError(
                f"dataset {self.name}: {int(too_long.sum())} row(s) exceed sequence_len={limit} "
                f"(longest {longest} tokens) and excess_length_strategy is raise"
            )
        if strategy == "truncate":
            counts["truncated"] = int(too_long.sum())
            if too_long.any():
                dataset = dataset.map(partial(_truncate, sequence_len=limit), **map_kwargs)
            keep = valid
        else:
            counts["too_long"] = int(too_long.sum())
            if too_long.any():
                counts["longest_tokens"] = longest
            keep = valid & ~too_long
        no_trainable = keep & (_column(dataset, "_trainable") == 0)
        counts["no_trainable_tokens"] = int(no_trainable.sum())
        return _select(dataset, keep & ~no_trainable)


# --- helpers (module level so worker processes can unpickle them) -------------------------------


def _column(dataset, name: str) -> np.ndarray:
    """One scalar column as a numpy array, read batch by batch from Arrow (no Python row objects)."""
    parts = [table.column(0).to_numpy(zero_copy_only=False)
             for table in dataset.select_columns([name]).with_format("arrow").iter(batch_size=100_000)]
    return np.concatenate(parts) if parts else np.array([])


def _select(dataset, keep: np.ndarray):
    return dataset if keep.all() else dataset.select(np.flatnonzero(keep))


def _truncate(row, *, sequence_len: int) -> dict:
    out = {key: row[key][:sequence_len] for key in ("input_ids", "attention_mask", "labels")}
    out["_tokens"] = len(out["input_ids"])
    out["_trainable"] = sum(1 for label in out["labels"] if label != IGNORE)
    return out


def loader(fmt: str):
    """The ``load(tokenizer, cfg, ds_cfg)`` entry point Axolotl calls for one format."""

    def load(tokenizer, cfg, ds_cfg=None):
        return ItalianDataset(tokenizer, cfg, ds_cfg or {}, fmt)

    return load
