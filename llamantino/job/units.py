"""The sample of a prepared corpus as units, and reading their documents with bounded memory.

A unit is one read file of a source, or a sliced split (``train[:N]``) whole; its documents depend
on that unit only. ``read_request`` reads an entry's request back, typed and bounded.
"""

from __future__ import annotations

import os
import random
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from llamantino.errors import DataError
from llamantino.records.files import leftover_suffix, load_object, relative_inside, removed_unless_finished, typed
from llamantino.records.rundir import PreparedDir
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
BATCH_DOCS = 256  # documents read (and tokenised) together

# (field, lowest, highest) of the numbers a step sizes work or memory by
_BOUNDS = (("sequence_len", 1, 1 << 20), ("tasks", 1, 4096), ("workers", 1, 1024), ("min_chars", 0, 1 << 30))


def read_request(entry_dir: PreparedDir) -> dict:
    """The entry's request, typed and bounded (a file read back is untrusted); DataError naming the field."""
    from llamantino.inputs.corpus import CorpusPlan

    path = entry_dir.path / PreparedDir.REQUEST
    request = typed(CorpusPlan, entry_dir.request(), path, "request")
    problems = [f"{name}={getattr(request, name)} is outside {low}-{high}" for name, low, high in _BOUNDS
                if not low <= getattr(request, name) <= high]
    problems += [f"bad_rows={request.bad_rows!r} is not strict or skip" for _ in [0]
                 if request.bad_rows not in ("strict", "skip")]
    for source in request.sources:
        where = f"source {source.name!r}"
        if source.origin not in ("hub", "mirror", "folder"):
            problems.append(f"{where}: origin {source.origin!r} is not hub, mirror or folder")
        if any(not relative_inside(name) for name in source.files):
            problems.append(f"{where}: a file name leaves its folder")
        if any(value is not None and value < 0 for value in (source.blocks, source.read_files)):
            problems.append(f"{where}: blocks and read_files are counts")
        if source.rows is not None and (len(source.rows) != 2 or source.rows[0] is None or source.rows[0] < 0
                                        or (source.rows[1] is not None and source.rows[1] <= source.rows[0])):
            problems.append(f"{where}: rows {source.rows} is not a row slice [start, end]")
    if problems:
        raise DataError(f"{path}: {'; '.join(problems)}; the entry's request is damaged: remove {entry_dir.path} "
                        "and run the command that planned it again")
    return {**asdict(request), "steps": list(request.steps)}


def sampled_order(names: list[str], seed: int, source: str) -> list[str]:
    """The seeded order in which a source's files are read (the same on every machine)."""
    order = sorted(names)
    random.Random(f"{seed}:{source}").shuffle(order)
    return order


def source_order(names: list[str], request: dict, source: dict) -> list[str]:
    """The order a source's files are read in: seeded, or file order for a sliced split (its rows
    are the first of the split, as ``datasets`` reads ``train[:N]``)."""
    if source.get("rows"):
        return sorted(names)
    return sampled_order(names, request["seed"], source["name"])


@dataclass(frozen=True)
class Unit:
    """One piece of the sample that one process makes: a file of a source, or a sliced split whole."""

    index: int  # position in the whole sample (sources in order, then files in read order)
    name: str  # <source index>-<position in the source>, the unit's file names
    source_index: int
    source: dict
    files: tuple[tuple[str, Path], ...]

    @property
    def rows(self) -> tuple[int, int | None] | None:
        rows = self.source.get("rows")
        return None if not rows else (int(rows[0]), None if rows[1] is None else int(rows[1]))


def sample_units(entry_dir: PreparedDir, request: dict) -> list[Unit]:
    """Every unit of the sample, in sample order."""
    units: list[Unit] = []
    for number, source in enumerate(request["sources"]):
        files = _source_files(entry_dir, request, source)
        if source.get("read_files") is not None:
            files = files[: source["read_files"]]
        groups = [files] if source.get("rows") else [[one] for one in files]
        for position, group in enumerate(groups):
            units.append(Unit(index=len(units), name=f"{number}-{position:05d}", source_index=number,
                              source=source, files=tuple(group)))
    return units


def task_units(units: list[Unit], index: int, tasks: int) -> list[Unit]:
    return units[index::tasks]


def _source_files(entry_dir: PreparedDir, request: dict, source: dict) -> list[tuple[str, Path]]:
    """(relative name, local file) of a source, in read order."""
    if source["origin"] == "hub":
        fetched = load_object(entry_dir.path / PreparedDir.FETCHED) if (
            entry_dir.path / PreparedDir.FETCHED).is_file() else {}
        if source["name"] not in fetched:
            raise DataError(f"{entry_dir.path}: the hub files of {source['name']} were not fetched "
                            "(run `python -m llamantino.job.prepare fetch` where there is network)")
        pairs = fetched[source["name"]]
        if not (isinstance(pairs, list) and all(isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(part, str) for part in pair) and relative_inside(pair[0]) for pair in pairs)):
            raise DataError(f"{entry_dir.path / PreparedDir.FETCHED}: {source['name']} must list [name, local file] "
                            "pairs; the file is damaged: run the fetch step again")
        return [(name, Path(path)) for name, path in pairs]
    root = Path(source["location"])
    order = source_order(list(source["files"]), request, source)
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


class UnitReader:
    """The documents of one unit, checked, normalised (unless its source says ``normalize: false``)
    and filtered, every drop counted."""

    def __init__(self, unit: Unit, request: dict):
        from llamantino_plugin.formats import CORPUS_FORMAT, columns_for, format_spec

        self.unit, self.request = unit, request
        self.columns = columns_for(CORPUS_FORMAT, unit.source["columns"])
        self.read = format_spec(CORPUS_FORMAT).reader
        self.counts = {"files": 0, "rows": 0, "invalid": 0, "normalised": 0, "duplicates": 0, "too_short": 0,
                       "kept": 0}
        self.files: list[str] = []

    def documents(self, drop=frozenset()) -> Iterator[tuple[int, str]]:
        """``(row, text)`` of every document kept, in order; ``row`` counts every record of the unit
        (the same numbers in the scan and the task). Rows in ``drop`` are duplicates."""
        from llamantino_plugin.formats import normalise_text

        strict = self.request.get("bad_rows", "strict") == "strict"
        normalize = self.unit.source.get("normalize", True)
        start, stop = self.unit.rows or (0, None)
        row = -1
        for name, path in self.unit.files:
            if stop is not None and row + 1 >= stop:
                break
            self.files.append(name)
            self.counts["files"] += 1
            for _, record in iter_rows(path):
                row += 1
                if row < start:
                    continue
                if stop is not None and row >= stop:
                    break
                self.counts["rows"] += 1
                if isinstance(record, DataFileError):  # a record that cannot be read: a bad row
                    if strict:
                        raise DataError(f"data {self.unit.source['name']}: {record} (stage.bad_rows=skip drops and "
                                        "counts such rows)")
                    self.counts["invalid"] += 1
                    continue
                try:
                    raw = self.read(record, self.columns)
                except (DataFileError, ValueError, TypeError):
                    self.counts["invalid"] += 1
                    continue
                text = normalise_text(raw) if normalize else raw
                self.counts["normalised"] += text != raw
                if len(text) < self.request["min_chars"]:
                    self.counts["too_short"] += 1
                    continue
                if row in drop:
                    self.counts["duplicates"] += 1
                    continue
                self.counts["kept"] += 1
                yield row, text




def save_npy(path: Path, array) -> None:
    """Written whole or not at all (a killed task leaves no half file a later step would read)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(3)}{leftover_suffix('partial')}")
    with removed_unless_finished(partial):
        with open(partial, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(partial, path)


