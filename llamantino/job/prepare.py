"""What the prepare jobs run: download the sampled files, tokenise slices, finish the entry.

    python -m llamantino.job.prepare fetch <entry>           hub files of the sample (needs network)
    python -m llamantino.job.prepare task  <entry> --index i  slice i of every source -> slices/00i.arrow
    python -m llamantino.job.prepare finish <entry>          check the slices, write manifest.json

The sample is deterministic: each source's files are listed, sorted and shuffled with
``data.sample_seed``; task ``i`` of ``n`` reads files ``i, i+n, i+2n, ...`` of that order, one
document at a time, and stops when it has its share of the source's blocks. Documents are
checked and normalised by the plugin (the corpus format's reader, ``normalise_text``), exact duplicates
(within the task) and documents under ``min_chars`` are dropped and counted, then BOS + text + EOS
is appended to a buffer that is cut into ``sequence_len`` blocks, written as they fill. A worker
holds one batch of documents, one partial block and the digests of the documents it kept, so its
memory does not grow with the corpus.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import secrets
import random
import sys
import time
from pathlib import Path
from typing import Iterator

from llamantino.argparsing import ArgumentParser
from llamantino.errors import DataError, entry
from llamantino.records.files import leftover_suffix, load_object, remove_leftovers, removed_unless_finished
from llamantino.records.rundir import PreparedDir, write_json
from llamantino_plugin.formats import (
    MAX_FILE_BYTES_ENV,
    MAX_LINE_BYTES,
    DataFileError,
    decode_jsonl_line,
    max_file_bytes,
    read_lines,
    shown_path,
)

# A change here that alters the blocks a sample turns into raises PreparedDir.LAYOUT (part of every key).
BATCH_DOCS = 256  # documents tokenised together
WRITE_BLOCKS = 1024  # blocks per Arrow record batch


def sampled_order(names: list[str], seed: int, source: str) -> list[str]:
    """The seeded order in which a source's files are read (the same on every machine)."""
    order = sorted(names)
    random.Random(f"{seed}:{source}").shuffle(order)
    return order


def task_files(order: list[str], index: int, tasks: int) -> list[str]:
    return order[index::tasks]


def _source_files(entry_dir: PreparedDir, request: dict, source: dict) -> list[tuple[str, Path]]:
    """(relative name, local file) of a source, in sampled order."""
    if source["origin"] == "hub":
        fetched = load_object(entry_dir.path / PreparedDir.FETCHED) if (
            entry_dir.path / PreparedDir.FETCHED).is_file() else {}
        if source["name"] not in fetched:
            raise DataError(f"{entry_dir.path}: the hub files of {source['name']} were not fetched "
                            "(run `python -m llamantino.job.prepare fetch` where there is network)")
        return [(name, Path(path)) for name, path in fetched[source["name"]]]
    root = Path(source["location"])
    order = sampled_order(list(source["files"]), request["seed"], source["name"])
    return [(name, root if root.is_file() else root / name) for name in order]


# --- reading documents with bounded memory -------------------------------------------------------


def iter_rows(path: Path) -> Iterator[tuple[int, dict | DataFileError]]:
    """``(record number, row)`` of a JSON Lines (optionally gzipped) or Parquet file, one at a time,
    within the limits of ``llamantino_plugin.formats`` (MAX_LINE_BYTES, max_file_bytes()): a record
    that cannot be read (over-long, malformed) comes as the DataFileError naming it; a file that
    cannot be read, is over the size limit or holds no record raises DataError."""
    rows = 0
    try:
        records = _parquet_rows(path) if path.name.endswith(".parquet") else read_lines(path)
        for number, raw in records:
            rows += 1
            if isinstance(raw, (dict, DataFileError)):  # Parquet rows come decoded
                yield number, raw
                continue
            try:
                yield number, decode_jsonl_line(raw, path, number)
            except DataFileError as exc:
                yield number, exc
    except ValueError as exc:  # the file itself (DataFileError): unreadable, too large; or a bad size limit
        raise DataError(str(exc)) from None
    if not rows:
        raise DataError(f"{shown_path(path)}: no rows (an empty file or an empty gzip member); remove the file "
                        "from the source or replace it")


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict | DataFileError]]:
    """Rows of a Parquet file; its uncompressed size (from its metadata) within max_file_bytes()."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    limit = max_file_bytes()
    try:
        parquet = pq.ParquetFile(path)
        meta = parquet.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if size > limit:
            raise DataFileError(path, f"{size:,} bytes uncompressed, more than {limit:,} ({MAX_FILE_BYTES_ENV} raises "
                                      "the limit)")
        number = 0
        for batch in parquet.iter_batches(batch_size=BATCH_DOCS):
            for row in batch.to_pylist():
                number += 1
                chars = sum(len(value) for value in row.values() if isinstance(value, str))
                yield number, (row if chars <= MAX_LINE_BYTES else DataFileError(
                    path, f"the row holds more than {MAX_LINE_BYTES:,} characters, the limit of one record", number))
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(path, f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})") from None


class SourceSlice:
    """One source's part of one task: documents in, blocks out, every drop counted."""

    def __init__(self, source: dict, request: dict, tokenizer, quota: int | None):
        from llamantino_plugin.formats import CORPUS_FORMAT, columns_for, format_spec

        self.source, self.request, self.tokenizer, self.quota = source, request, tokenizer, quota
        self.columns = columns_for(CORPUS_FORMAT, source["columns"])
        self.read = format_spec(CORPUS_FORMAT).reader
        self.buffer: list[int] = []
        self.seen: set[bytes] = set()
        self.counts = {"files": 0, "rows": 0, "invalid": 0, "normalised": 0, "duplicates": 0, "too_short": 0,
                       "kept": 0, "tokens": 0, "blocks": 0, "block_tokens": 0, "cut_tokens": 0, "leftover_tokens": 0}
        self.files: list[str] = []
        self.tokenised = 0  # documents tokenised so far

    @property
    def full(self) -> bool:
        return self.quota is not None and self.counts["blocks"] >= self.quota

    def documents(self, files: list[tuple[str, Path]]) -> Iterator[list[str]]:
        """Batches of clean documents, file by file, until the quota is met."""
        from llamantino_plugin.formats import normalise_text

        strict = self.request.get("bad_rows", "strict") == "strict"
        batch: list[str] = []
        for name, path in files:
            if self.full:
                break
            self.files.append(name)
            self.counts["files"] += 1
            for _, row in iter_rows(path):
                self.counts["rows"] += 1
                if isinstance(row, DataFileError):  # a record that cannot be read: a bad row
                    if strict:
                        raise DataError(f"data {self.source['name']}: {row} (stage.bad_rows=skip drops and counts "
                                        "such rows)")
                    self.counts["invalid"] += 1
                    continue
                try:
                    raw = self.read(row, self.columns)
                except (DataFileError, ValueError, TypeError):
                    self.counts["invalid"] += 1
                    continue
                text = normalise_text(raw)
                self.counts["normalised"] += text != raw
                if len(text) < self.request["min_chars"]:
                    self.counts["too_short"] += 1
                    continue
                if self.request["dedup"]:
                    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=12).digest()
                    if digest in self.seen:
                        self.counts["duplicates"] += 1
                        continue
                    self.seen.add(digest)
                self.counts["kept"] += 1
                batch.append(text)
                if len(batch) >= self.batch_size():
                    yield batch
                    batch = []
                    if self.full:
                        return
        if batch:
            yield batch

    def batch_size(self) -> int:
        """Documents to tokenise next: about what the quota still needs (measured tokens per
        document), so a task reads only a little past its share."""
        if self.quota is None:
            return BATCH_DOCS
        if not self.request.get("pack", True):  # one block per document
            return max(1, min(BATCH_DOCS, self.quota - self.counts["blocks"]))
        missing = (self.quota - self.counts["blocks"]) * self.request["sequence_len"] - len(self.buffer)
        if not self.tokenised:
            return 1
        per_doc = self.counts["tokens"] / self.tokenised
        return max(1, min(BATCH_DOCS, math.ceil(missing / per_doc)))

    def blocks(self, texts: list[str]) -> list[list[int]]:
        """BOS + text + EOS of each document appended to the buffer; full blocks cut off it.
        Unpacked (``request["pack"]`` false): each document is a block of its own, cut at
        ``sequence_len`` (the rest dropped and counted), as a trainer without packing reads it."""
        length = self.request["sequence_len"]
        out = []
        self.tokenised += len(texts)
        for ids in self.tokenizer(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]:
            ids.append(self.tokenizer.eos_token_id)
            self.counts["tokens"] += len(ids)
            if not self.request.get("pack", True):
                if self.quota is not None and self.counts["blocks"] + len(out) >= self.quota:
                    break
                self.counts["cut_tokens"] += max(0, len(ids) - length)
                out.append(ids[:length])
                continue
            self.buffer.extend(ids)
            while len(self.buffer) >= length and not (self.quota is not None and
                                                     self.counts["blocks"] + len(out) >= self.quota):
                out.append(self.buffer[:length])
                del self.buffer[:length]
        self.counts["blocks"] += len(out)
        self.counts["block_tokens"] += sum(map(len, out))
        return out


def _schema():
    import pyarrow as pa

    return pa.schema([("input_ids", pa.list_(pa.int32())), ("attention_mask", pa.list_(pa.int8())),
                      ("labels", pa.list_(pa.int32())), ("source", pa.int16())])


def _batch(blocks: list[list[int]], source_index: int, length: int):
    import numpy as np
    import pyarrow as pa

    if all(len(block) == length for block in blocks):
        flat = np.asarray(blocks, dtype=np.int32).reshape(-1)
        offsets = pa.array(np.arange(0, len(blocks) * length + 1, length, dtype=np.int32))
    else:  # unpacked documents: rows of their own lengths
        flat = np.fromiter((token for block in blocks for token in block), dtype=np.int32)
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(block) for block in blocks])]).astype(np.int32))
    ids = pa.ListArray.from_arrays(offsets, pa.array(flat))
    ones = pa.ListArray.from_arrays(offsets, pa.array(np.ones(len(flat), dtype=np.int8)))
    return pa.record_batch([ids, ones, ids, pa.array(np.full(len(blocks), source_index, dtype=np.int16))],
                           schema=_schema())


def load_tokenizer(request: dict):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(request["tokenizer"], revision=request.get("tokenizer_revision"))


def quota(request: dict, source: dict, index: int, tasks_with_files: int) -> int | None:
    """Blocks task ``index`` makes from a source: an even share among the tasks that have its files."""
    if source["blocks"] is None or index >= tasks_with_files:
        return None if source["blocks"] is None else 0
    return math.ceil(source["blocks"] / tasks_with_files)


def run_task(entry_dir: PreparedDir, index: int) -> dict:
    """Tokenise slice ``index`` of every source into ``slices/<index>.arrow`` (renamed into place when done)."""
    request = entry_dir.request()
    tasks = request["tasks"]
    if not 0 <= index < tasks:
        raise DataError(f"task index {index} is outside 0-{tasks - 1}")
    tokenizer = load_tokenizer(request)
    target = entry_dir.slice(index)
    made_folder = not target.parent.is_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)  # the partial slices of tasks killed outright
    partial = target.with_name(f".{target.name}.{secrets.token_hex(3)}{leftover_suffix('partial')}")
    try:
        with removed_unless_finished(partial):  # refused data, a bug, an interrupt, SIGTERM: no partial slice stays
            report = _write_slice(entry_dir, request, index, tokenizer, partial)
            # the report first: a slice in place is a finished one (finish reads its report)
            write_json(entry_dir.slice_report(index), report)
            os.replace(partial, target)
    except BaseException:
        if made_folder:
            _remove_if_empty(target.parent)
        raise
    return report


def _write_slice(entry_dir: PreparedDir, request: dict, index: int, tokenizer, partial: Path) -> dict:
    """Tokenise slice ``index`` of every source into ``partial``; returns the slice's report."""
    import pyarrow as pa

    tasks, length = request["tasks"], request["sequence_len"]
    report = {"task": index, "sources": {}}
    started = time.time()
    with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, _schema()) as writer:
        for number, source in enumerate(request["sources"]):
            ordered = _source_files(entry_dir, request, source)
            mine = task_files(ordered, index, tasks)
            part = SourceSlice(source, request, tokenizer, quota(request, source, index, min(tasks, len(ordered))))
            pending: list[list[int]] = []
            for texts in part.documents(mine):
                pending += part.blocks(texts)
                if len(pending) >= WRITE_BLOCKS:
                    writer.write_batch(_batch(pending, number, length))
                    pending = []
                if part.full:
                    break
            if pending:
                writer.write_batch(_batch(pending, number, length))
            part.counts["leftover_tokens"] = len(part.buffer)
            part.counts["quota"] = part.quota
            report["sources"][source["name"]] = {**part.counts, "read_files": part.files}
    report["seconds"] = round(time.time() - started, 3)
    return report


def finish(entry_dir: PreparedDir) -> dict:
    """Check every slice is there, add up the counts, write manifest.json (the entry is complete)."""
    request = entry_dir.request()
    missing = [i for i in range(request["tasks"]) if not entry_dir.slice(i).is_file()]
    if missing:
        raise DataError(f"{entry_dir.path}: slices {missing} are missing; their prepare tasks did not finish")
    reports = [load_object(entry_dir.slice_report(i)) for i in range(request["tasks"])]
    sources = {}
    for source in request["sources"]:
        total: dict = {"read_files": []}
        for report in reports:
            for key, value in report["sources"][source["name"]].items():
                if key == "read_files":
                    total["read_files"] += value
                elif key != "quota":
                    total[key] = total.get(key, 0) + value
        total["read_files"] = sorted(total["read_files"])
        total.update(origin=source["origin"], hub_id=source["hub_id"], subset=source["subset"],
                     revision=source["revision"], weight=source["weight"], wanted_blocks=source["blocks"],
                     available_files=len(source["files"]) if source["origin"] != "hub" else None)
        sources[source["name"]] = total
    blocks = sum(s["blocks"] for s in sources.values())
    needed = request["blocks"]
    if blocks == 0:  # epochs over the whole corpus (no budget) and nothing in it, e.g. every row bad
        counts = ", ".join(f"{name}: {s['rows']} rows, {s['invalid']} bad, {s['too_short']} too short, "
                           f"{s['duplicates']} duplicates" for name, s in sources.items())
        raise DataError(f"the sample has no block of text ({counts}); the sources hold no usable document")
    if needed is not None and blocks < needed:
        short = ", ".join(f"{name} {s['blocks']}/{s['wanted_blocks']} blocks from {s['files']} files"
                          for name, s in sources.items())
        raise DataError(f"the sample has {blocks} blocks but the budget needs {needed} ({short}); the sources hold "
                        "too little text: raise data.approx_tokens' accuracy, add sources, or lower stage.max_steps")
    manifest = {"key": request["key"], "blocks": blocks, "tokens": sum(s["block_tokens"] for s in sources.values()),
                "budget_tokens": request["budget_tokens"], "needed_blocks": needed,
                "sequence_len": request["sequence_len"], "seed": request["seed"], "tokenizer": request["tokenizer"],
                "files": [entry_dir.slice(i).name for i in range(request["tasks"])], "sources": sources,
                "task_seconds": [r["seconds"] for r in reports], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entry_dir.write(PreparedDir.MANIFEST, manifest)
    return manifest


def fetch(entry_dir: PreparedDir) -> dict:
    """Download the sampled files of the hub sources (and nothing else) into HF_HOME."""
    from huggingface_hub import HfApi, snapshot_download

    request = entry_dir.request()
    fetched = {}
    for source in request["sources"]:
        if source["origin"] != "hub":
            continue
        names = [name for name in HfApi().list_repo_files(source["hub_id"], repo_type="dataset",
                                                           revision=source["revision"])
                 if any(fnmatch.fnmatch(name, pattern) for pattern in source["patterns"])]
        if not names:
            raise DataError(f"{source['hub_id']} has no file matching {', '.join(source['patterns'])}")
        order = sampled_order(names, request["seed"], source["name"])
        chosen = order[: source["fetch_files"] or len(order)]
        folder = snapshot_download(source["hub_id"], repo_type="dataset", revision=source["revision"],
                                   allow_patterns=chosen)
        fetched[source["name"]] = [[name, str(Path(folder) / name)] for name in chosen]
        print(f"llamantino: fetched {len(chosen)} of {len(order)} files of {source['hub_id']}", flush=True)
    if request["tokenizer"] and not Path(request["tokenizer"]).exists():  # a hub model: its tokenizer files only
        snapshot_download(request["tokenizer"], revision=request.get("tokenizer_revision"),
                          allow_patterns=["tokenizer*", "special_tokens_map.json", "*.model", "config.json"])
    entry_dir.write(PreparedDir.FETCHED, fetched)
    return fetched


def run_all(entry_dir: PreparedDir, echo=print) -> dict:
    """Every step in this process, in order (the local launcher)."""
    request = entry_dir.request()
    if any(source["origin"] == "hub" for source in request["sources"]):
        fetch(entry_dir)
    made_folder = not (entry_dir.path / PreparedDir.SLICES).is_dir()
    done: list[int] = []
    try:
        for index in range(request["tasks"]):
            report = run_task(entry_dir, index)
            done.append(index)
            echo(f"llamantino: prepare task {index}: " + ", ".join(
                f"{name} {counts['blocks']} blocks from {counts['files']} files"
                for name, counts in report["sources"].items()))
        return finish(entry_dir)
    except BaseException:  # one failed task fails the entry: no slice of it stays behind
        for index in done:
            entry_dir.slice(index).unlink(missing_ok=True)
            entry_dir.slice_report(index).unlink(missing_ok=True)
        if made_folder:
            _remove_if_empty(entry_dir.path / PreparedDir.SLICES)
        raise


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["fetch", "task", "finish", "all"])
    parser.add_argument("entry", type=Path, help="the prepared corpus entry (<cache>/prepared/<key>)")
    parser.add_argument("--index", type=int, default=None, help="task index (default: $SLURM_ARRAY_TASK_ID)")
    args = parser.parse_args(argv)
    entry_dir = PreparedDir(args.entry)
    if args.step == "fetch":
        fetch(entry_dir)
    elif args.step == "task":
        index = args.index if args.index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "-1"))
        report = run_task(entry_dir, index)
        print(f"llamantino: prepare task {index}: {json.dumps(report['sources'])}", flush=True)
    elif args.step == "finish":
        manifest = finish(entry_dir)
        print(f"llamantino: prepared {manifest['blocks']} blocks ({manifest['tokens']:,} tokens) in {entry_dir.path}",
              flush=True)
    else:
        run_all(entry_dir)
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
