"""One dataset strategy for every SFT format: check rows, normalise, tokenise, mask, account.

Axolotl calls ``wrap_dataset`` once per dataset in the main process, so every count here is exact
(worker processes only run the batched map). One pass over the data (``encode.py``): each row is
read with its format's reader (``formats.py``) and tokenised at once: instructions with the
alpaca_it prompt or, with a chat template, as a user/assistant exchange; conversations through the
chat template, only assistant turns trained; raw text normalised (NFC, apostrophes, quotes,
whitespace; not where its ``llamantino_datasets`` entry says ``normalize: false``), hashed and
chunked to ``sequence_len``. Everything after that is Arrow arithmetic on
helper columns: exact duplicates and too-short documents, over-long rows, rows with nothing to
train, all dropped with one selection.

Bad rows fail the run (``strict``) or are dropped and counted (``skip``). Rows over
``sequence_len`` are dropped, truncated or refused as ``excess_length_strategy`` says; rows with no
trainable token are dropped; if nothing is left the run stops here, saying why. Counts are taken
from Arrow columns batch by batch, so memory stays bounded on large corpora.
"""

from __future__ import annotations

from functools import partial
from itertools import chain

import numpy as np
import pyarrow as pa
from axolotl.prompt_tokenizers import DatasetWrappingStrategy

from llamantino_plugin import report
from llamantino_plugin.args import LlamantinoArgs, find_spec, plugin_args
from llamantino_plugin.encode import IGNORE, LlamantinoDataError, encode_rows, encode_text, encoding_of, tokeniser
from llamantino_plugin.formats import Encoding, columns_for, format_spec
from llamantino_plugin.templates import default_template, template_info


def spec_of(args: LlamantinoArgs, ds_cfg, fmt: str) -> dict:
    """Format, columns and whether text is normalised, of ``ds_cfg`` from its ``llamantino_datasets`` entry."""
    spec = find_spec(args, ds_cfg)
    if spec is None:
        return {"format": fmt, "columns": columns_for(fmt), "normalize": True}
    if spec.format != fmt:
        raise LlamantinoDataError(f"dataset {ds_cfg.get('path')!r} is described as format {spec.format!r} "
                                  f"but its type loads {fmt!r}")
    return {"format": fmt, "columns": columns_for(fmt, spec.columns), "normalize": spec.normalize}


class ItalianDataset(DatasetWrappingStrategy):
    """The Axolotl dataset strategy behind ``type: llamantino_plugin.<format>``."""

    def __init__(self, tokenizer, cfg, ds_cfg, fmt: str):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.args = plugin_args(cfg)
        self.ds_cfg = ds_cfg
        self.spec = spec_of(self.args, ds_cfg, fmt)
        self.fmt = fmt
        self.format_spec = format_spec(fmt)
        self.template = self.args.llamantino_template or default_template(fmt)
        chat_template = self.template is not None and template_info(self.template).kind == "chat"
        if self.format_spec.needs_chat_template and not chat_template:
            raise LlamantinoDataError(
                f"dataset {ds_cfg.get('path')!r}: {fmt} need a chat template "
                "(llamantino_template: llamantino2_chat, anita or llama3)"
            )
        self.as_chat = encoding_of(fmt, self.template) is Encoding.chat
        self.policy = self.args.llamantino_bad_rows

    @property
    def name(self) -> str:
        return str(self.ds_cfg.get("path")) + (f" ({self.ds_cfg.get('name')})" if self.ds_cfg.get("name") else "")

    def wrap_dataset(self, dataset, process_count=None, keep_in_memory=False, **kwargs):
        counts = {"rows": len(dataset)}
        map_kwargs = {"num_proc": process_count, "keep_in_memory": keep_in_memory}
        columns, cfg, args = self.spec["columns"], self.cfg, self.args
        if self.format_spec.corpus:
            encode = partial(encode_text, columns=columns, tokenizer=self.tokenizer, sequence_len=cfg.sequence_len,
                             fmt=self.fmt, normalize=self.spec["normalize"])
        else:
            encode = partial(encode_rows, fmt=self.fmt, columns=columns, as_chat=self.as_chat,
                             encode=tokeniser(self.fmt, self.template, tokenizer=self.tokenizer,
                                              sequence_len=cfg.sequence_len,
                                              system_prompt=args.llamantino_system_prompt,
                                              train_on_inputs=bool(cfg.train_on_inputs),
                                              script_exact=args.llamantino_script_exact))
        dataset = dataset.map(partial(_encode_to_arrow, encode=encode), batched=True, with_indices=True,
                              remove_columns=dataset.column_names,
                              desc=f"llamantino: checking and tokenising {self.fmt}", **map_kwargs)
        keep = self._valid(dataset, counts)
        if self.format_spec.corpus:
            keep = self._clean_text(dataset, keep, counts)
        dataset, keep = self._fit_length(dataset, keep, counts, map_kwargs)
        counts["kept"] = int(keep.sum())
        counts["tokens"] = int(_column(dataset, "_tokens")[keep].sum())
        counts["trainable_tokens"] = int(_column(dataset, "_trainable")[keep].sum())
        dataset = _select(dataset, keep)
        dataset = dataset.remove_columns([c for c in dataset.column_names if c.startswith("_")])
        report.record(cfg, self.name, self.fmt, counts)
        if counts["kept"] == 0:
            raise LlamantinoDataError(f"dataset {self.name}: no trainable row left ({report.describe(counts)})")
        return dataset

    def _valid(self, dataset, counts) -> np.ndarray:
        """Rows without an error; ``strict`` stops at the first bad row."""
        errors = _column(dataset, "_error")
        bad = np.flatnonzero(errors != "")
        counts["invalid"] = len(bad)
        if len(bad) and self.policy == "strict":
            raise LlamantinoDataError(
                f"dataset {self.name}: {len(bad)} bad row(s); first: {errors[bad[0]]} "
                "(set llamantino_bad_rows: skip to drop and count them)"
            )
        return errors == ""

    def _clean_text(self, dataset, keep, counts) -> np.ndarray:
        """Drop exact duplicates (after normalisation, where the dataset is normalised) and too-short
        documents, counted per document."""
        first = _column(dataset, "_first") & keep  # one row per valid document
        docs = _column(dataset, "_doc")
        counts["normalised"] = int((_column(dataset, "_changed") & first).sum())
        kept_docs = docs[first]
        if self.args.llamantino_text_dedup:
            table = pa.table({"d": pa.array(_column(dataset, "_digest")[first], type=pa.binary(16)), "i": kept_docs})
            unique = table.group_by("d").aggregate([("i", "min")]).column("i_min").to_numpy()
            counts["duplicates"] = len(kept_docs) - len(unique)
            kept_docs = unique
        long_enough = _column(dataset, "_chars") >= self.args.llamantino_text_min_chars
        keep = keep & np.isin(docs, kept_docs)
        counts["too_short"] = int((keep & first & ~long_enough).sum())
        return keep & long_enough

    def _fit_length(self, dataset, keep, counts, map_kwargs):
        limit = self.cfg.sequence_len
        strategy = (self.cfg.get("excess_length_strategy") or "drop").lower()
        tokens = _column(dataset, "_tokens")
        too_long = keep & (tokens > limit)
        longest = int(tokens[keep].max()) if keep.any() else 0
        if too_long.any() and strategy == "raise":
            raise LlamantinoDataError(
                f"dataset {self.name}: {int(too_long.sum())} row(s) exceed sequence_len={limit} "
                f"(longest {longest} tokens) and excess_length_strategy is raise"
            )
        if strategy == "truncate":
            counts["truncated"] = int(too_long.sum())
            if too_long.any():
                dataset = dataset.map(partial(_truncate, sequence_len=limit), **map_kwargs)
        else:
            counts["too_long"] = int(too_long.sum())
            if too_long.any():
                counts["longest_tokens"] = longest
            keep = keep & ~too_long
        no_trainable = keep & (_column(dataset, "_trainable") == 0)
        counts["no_trainable_tokens"] = int(no_trainable.sum())
        return dataset, keep & ~no_trainable


# --- helpers (module level so worker processes can unpickle them) -------------------------------


# Arrow types of what the encoders return; the token columns match what datasets itself would infer.
_TYPES = {"input_ids": pa.int32(), "attention_mask": pa.int8(), "labels": pa.int64(),
          "_doc": pa.int64(), "_digest": pa.binary(), "_chars": pa.int64(),
          "_changed": pa.bool_(), "_first": pa.bool_(), "_error": pa.string()}


def _encode_to_arrow(batch, indices, *, encode) -> pa.Table:
    """Run an encoder and hand its batch to datasets as an Arrow table, with each row's
    ``_tokens`` and ``_trainable`` counts derived from the token buffers.

    Token lists become Arrow list arrays built from one flat numpy buffer per column: datasets'
    own conversion of nested Python lists, element by element, cost more than the tokenisation
    itself (2.4 s against 0.5 s for 4.4 M tokens, ``benchmarks/run.py --only data``).
    """
    out = encode(batch, indices)
    columns = {}
    for key, values in out.items():
        kind = _TYPES[key]
        if key in ("input_ids", "attention_mask", "labels"):
            offsets = np.zeros(len(values) + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)), out=offsets[1:])
            flat = np.fromiter(chain.from_iterable(values), dtype=kind.to_pandas_dtype(), count=int(offsets[-1]))
            columns[key] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type=kind))
            if key == "labels":
                trained = np.concatenate([[0], np.cumsum(flat != IGNORE)])
                columns["_tokens"] = pa.array(np.diff(offsets))
                columns["_trainable"] = pa.array(trained[offsets[1:]] - trained[offsets[:-1]])
        else:
            columns[key] = pa.array(values, type=kind)
    return pa.table(columns)


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
