"""Deduplication across the whole sample: each unit's document keys by shard (the scan step), then
per shard the documents whose key an earlier document of the sample holds (the dedup step). No
process holds every key: a dedup task holds one shard, a tokenise task its units' dropped rows.
"""

from __future__ import annotations

import hashlib
import zlib

from llamantino.errors import DataError
from llamantino.job.units import Unit, UnitReader, save_npy
from llamantino.records.rundir import PreparedDir

# A change here that alters which documents are dropped raises PreparedDir.LAYOUT (part of every key).
# Near-duplicates: MinHash over word 5-grams, 14 bands of 8 rows (documents ~0.75 Jaccard-similar
# or more share a band with probability > 0.9).
SHINGLE_WORDS, BANDS, BAND_ROWS = 5, 14, 8
# One key record of the scan: 96-bit key, its shard, the unit's index in the sample, the document's row in it.
KEY_RECORD = [("key", "<u8"), ("key2", "<u4"), ("shard", "<u4"), ("unit", "<u4"), ("row", "<u4")]
DROP_RECORD = [("unit", "<u4"), ("row", "<u4")]

def _minhash_permutations():
    import numpy as np

    rng = np.random.default_rng(20240601)  # fixed: part of what a key means
    return (rng.integers(1, 2**63, BANDS * BAND_ROWS, dtype=np.uint64) | np.uint64(1),
            rng.integers(0, 2**63, BANDS * BAND_ROWS, dtype=np.uint64))


_PERMUTATIONS = None


def document_keys(text: str, exact: bool, near: bool) -> list[bytes]:
    """12-byte keys of a document: its digest (exact duplicates) and its MinHash bands (near ones)."""
    import numpy as np

    global _PERMUTATIONS
    keys = [hashlib.blake2b(b"\x00" + text.encode("utf-8"), digest_size=12).digest()] if exact else []
    if near:
        if _PERMUTATIONS is None:
            _PERMUTATIONS = _minhash_permutations()
        words = text.split()
        shingles = {" ".join(words[i:i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}
        hashed = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in shingles), dtype=np.uint64, count=len(shingles))
        a, b = _PERMUTATIONS
        with np.errstate(over="ignore"):  # multiply-shift hashing wraps on purpose
            signature = ((hashed[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).min(axis=0)
        for band in range(BANDS):
            values = signature[band * BAND_ROWS:(band + 1) * BAND_ROWS].tobytes()
            keys.append(hashlib.blake2b(bytes([1 + band]) + values, digest_size=12).digest())
    return keys


def scan_unit(entry_dir: PreparedDir, request: dict, unit: Unit) -> dict:
    """The keys of a unit's documents, sorted by shard, in ``scan/<unit>.npy``."""
    import numpy as np

    reader = UnitReader(unit, request)
    digests, rows = bytearray(), []
    for row, text in reader.documents():
        for key in document_keys(text, request["dedup"], request.get("near_dedup", False)):
            digests += key
            rows.append(row)
    raw = np.frombuffer(bytes(digests), dtype=[("key", "<u8"), ("key2", "<u4")])
    records = np.zeros(len(rows), dtype=KEY_RECORD)
    records["key"], records["key2"] = raw["key"], raw["key2"]
    records["shard"] = records["key"] % np.uint64(request["tasks"])
    records["unit"], records["row"] = unit.index, np.asarray(rows, dtype=np.uint32)
    records = records[np.argsort(records["shard"], kind="stable")]
    save_npy(entry_dir.scan(unit.name), records)
    return {"unit": unit.name, "keys": len(records), **reader.counts}


def dedup_shard(entry_dir: PreparedDir, request: dict, shard: int, units: list[Unit]) -> dict:
    """Shard ``shard`` of every unit's keys: the documents whose key an earlier document holds."""
    import numpy as np

    parts = []
    for unit in units:
        path = entry_dir.scan(unit.name)
        if not path.is_file():
            raise DataError(f"{entry_dir.path}: {PreparedDir.SCAN}/{path.name} is missing; the scan of unit "
                            f"{unit.name} did not finish")
        records = np.load(path, mmap_mode="r", allow_pickle=False)
        low, high = np.searchsorted(records["shard"], [shard, shard + 1])
        parts.append(np.array(records[low:high]))
    records = np.concatenate(parts) if parts else np.zeros(0, dtype=KEY_RECORD)
    records = records[np.lexsort((records["row"], records["unit"], records["key2"], records["key"]))]
    later = np.zeros(len(records), dtype=bool)
    if len(records):
        later[1:] = (records["key"][1:] == records["key"][:-1]) & (records["key2"][1:] == records["key2"][:-1])
    drops = np.unique(records[later][["unit", "row"]].astype(DROP_RECORD))
    save_npy(entry_dir.drops(shard), drops)
    return {"shard": shard, "keys": len(records), "drops": len(drops)}


def unit_drops(entry_dir: PreparedDir, request: dict, unit: Unit) -> frozenset[int]:
    """The rows of a unit that are duplicates of an earlier document (empty without deduplication)."""
    import numpy as np

    if not (request["dedup"] or request.get("near_dedup")):
        return frozenset()
    rows: set[int] = set()
    for shard in range(request["tasks"]):
        path = entry_dir.drops(shard)
        if not path.is_file():
            raise DataError(f"{entry_dir.path}: {PreparedDir.DEDUP}/{path.name} is missing; dedup task {shard} did not "
                            "finish")
        drops = np.load(path, mmap_mode="r", allow_pickle=False)
        low, high = np.searchsorted(drops["unit"], [unit.index, unit.index + 1])
        rows.update(int(row) for row in drops["row"][low:high])
    return frozenset(rows)


