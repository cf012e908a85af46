"""A local folder laid out as the hub's dataset repositories, standing in for the hub in tests and benchmarks.

    <root>/datasets/gsarti/clean_mc4_it/clean/c4-it.tfrecord-0000N-of-01024.json.gz   (mC4-style rows)
    <root>/datasets/gsarti/clean_mc4_it/clean/c4-it-validation.tfrecord-00000-of-00008.json.gz
    <root>/datasets/wikimedia/wikipedia/20231101.it/train-0000N-of-0000M.parquet     (a config folder)

Documents are seeded random paragraphs of the project's Italian samples, so every file differs.

:func:`build_multilingual_mirror` lays out every hub corpus of the registry as the hub does, with the
files a registry entry must not read beside its own: other languages, other configs, test splits.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path


def _pool() -> list[str]:
    from llamantino.paths import SAMPLES_DIR
    from llamantino_plugin.formats import iter_jsonl

    found = set()
    for path in sorted(SAMPLES_DIR.glob("*.jsonl")):
        for _, row in iter_jsonl(path):
            for value in row.values():
                if isinstance(value, str) and len(value) > 30:
                    found.update(s.strip() + "." for s in value.split(".") if len(s.strip()) > 20)
    return sorted(found)


def _documents(rng: random.Random, pool: list[str], count: int):
    for number in range(count):
        yield f"Documento {rng.randrange(10**9)}. " + " ".join(rng.choice(pool) for _ in range(rng.randint(4, 14)))


def build_mirror(root: Path, *, mc4_files: int = 6, docs_per_file: int = 60, wiki_files: int = 2,
                 seed: int = 0) -> Path:
    """Write the mirror under ``root`` and return it."""
    rng, pool = random.Random(seed), _pool()
    mc4 = root / "datasets" / "gsarti" / "clean_mc4_it" / "clean"
    mc4.mkdir(parents=True, exist_ok=True)
    names = [f"c4-it.tfrecord-{i:05d}-of-01024.json.gz" for i in range(mc4_files)]
    names.append("c4-it-validation.tfrecord-00000-of-00008.json.gz")  # must never be sampled for training
    for name in names:
        with gzip.open(mc4 / name, "wt", encoding="utf-8") as handle:
            for text in _documents(rng, pool, docs_per_file):
                handle.write(json.dumps({"text": text, "timestamp": "2020-01-01T00:00:00Z",
                                         "url": "https://example.it/"}, ensure_ascii=False) + "\n")
    if wiki_files:
        import pyarrow as pa
        import pyarrow.parquet as pq

        wiki = root / "datasets" / "wikimedia" / "wikipedia" / "20231101.it"
        wiki.mkdir(parents=True, exist_ok=True)
        for index in range(wiki_files):
            texts = list(_documents(rng, pool, docs_per_file))
            table = pa.table({"id": [str(i) for i in range(len(texts))], "url": ["https://it.wikipedia.org/"] * len(texts),
                              "title": ["Voce"] * len(texts), "text": texts})
            pq.write_table(table, wiki / f"train-{index:05d}-of-{wiki_files:05d}.parquet")
    return root


def grow_mc4(root: Path, files: int, docs_per_file: int, seed: int) -> None:
    """Only the mC4-style shards, ``files`` of them (benchmarks scale the corpus with this)."""
    build_mirror(root, mc4_files=files, docs_per_file=docs_per_file, wiki_files=0, seed=seed)


# The hub corpora of the registry as their repositories lay them out: (hub id, subset) -> (the
# subset's training files, the repository's other files). The other files are what a registry entry
# must never read: other languages and configs, validation and test splits, the repository's own
# files. A new hub corpus in the registry needs its layout here (tests/test_registry_files.py says so).
HUB_LAYOUTS: dict[tuple[str, str | None], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("gsarti/clean_mc4_it", "medium"): (
        ("clean/c4-it.tfrecord-00000-of-01024.json.gz", "clean/c4-it.tfrecord-00001-of-01024.json.gz",
         "clean/c4-it.tfrecord-00499-of-01024.json.gz"),
        ("clean/c4-it.tfrecord-00500-of-01024.json.gz",  # past "medium" (the first 500 shards)
         "clean/c4-it.tfrecord-01023-of-01024.json.gz",
         "clean/c4-it-validation.tfrecord-00000-of-00008.json.gz", "clean_mc4_it.py", "README.md")),
    ("HuggingFaceFW/fineweb-2", "ita_Latn"): (
        ("data/ita_Latn/train/000_00000.parquet", "data/ita_Latn/train/000_00001.parquet"),
        ("data/ita_Latn/test/000_00000.parquet", "data/ita_Latn_removed/train/000_00000.parquet",
         "data/deu_Latn/train/000_00000.parquet", "data/deu_Latn/test/000_00000.parquet",
         "data/fra_Latn/train/000_00000.parquet", "data/fra_Latn/test/000_00000.parquet", "README.md")),
    ("uonlp/CulturaX", "it"): (
        ("it/it_part_00000.parquet", "it/it_part_00001.parquet"),
        ("de/de_part_00000.parquet", "fr/fr_part_00000.parquet", "README.md")),
    ("wikimedia/wikipedia", "20231101.it"): (
        ("20231101.it/train-00000-of-00002.parquet", "20231101.it/train-00001-of-00002.parquet"),
        ("20231101.de/train-00000-of-00001.parquet", "20231101.fr/train-00000-of-00001.parquet", "README.md")),
}


def _write_data_file(path: Path, rng: random.Random, pool: list[str], count: int) -> None:
    """Rows the corpus readers take (a ``text`` column) in the file's own format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = list(_documents(rng, pool, count))
    if path.name.endswith(".json.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            for text in texts:
                handle.write(json.dumps({"text": text, "url": "https://example.it/"}, ensure_ascii=False) + "\n")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": [str(i) for i in range(count)], "url": ["https://example.it/"] * count,
                                 "text": texts}), path)
    else:  # the repository's card or loading script
        path.write_text(f"# {path.name}\n", encoding="utf-8")


def build_multilingual_mirror(root: Path, *, docs_per_file: int = 40, seed: int = 0) -> Path:
    """Every repository of :data:`HUB_LAYOUTS` under ``root/datasets``, own files and the rest; returns ``root``."""
    rng, pool = random.Random(seed), _pool()
    for (hub_id, _), (own, others) in HUB_LAYOUTS.items():
        for name in (*own, *others):
            path = root / "datasets" / hub_id / name
            if not path.exists():  # two subsets of one repository share its files
                _write_data_file(path, rng, pool, docs_per_file)
    return root
