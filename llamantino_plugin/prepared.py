"""Reading a prepared corpus (``llamantino.job.prepare``): which blocks a run takes, and the rows as
the trainer sees them.

An entry stores token ids only, in the smallest unsigned type that holds the vocabulary; every
token of a block is trained, so ``labels`` equal ``input_ids`` and the attention mask is all ones:
both are derived when a batch is read instead of being stored (9 bytes per token become 2 for a
vocabulary under 65,536).
"""

from __future__ import annotations


def select_units(units: list[dict], wanted: dict[str, int | None]) -> list[tuple[str, int]]:
    """``(unit, rows)`` a run takes: each source's units in sample order up to its wanted blocks
    (None or absent: all of them). A smaller budget takes a prefix of what a larger one takes."""
    left = dict(wanted)
    taken = []
    for unit in units:
        source, blocks = unit["source"], int(unit["blocks"])
        limit = left.get(source)
        rows = blocks if limit is None else min(blocks, limit)
        if rows > 0:
            taken.append((unit["name"], rows))
        if limit is not None:
            left[source] = limit - rows
    return taken


def derive_columns(batch: dict) -> dict:
    """input_ids as stored -> input_ids, labels and attention_mask as the trainer reads them."""
    ids = [[int(token) for token in row] for row in batch["input_ids"]]
    return {"input_ids": ids, "labels": [list(row) for row in ids], "attention_mask": [[1] * len(row) for row in ids]}
