"""Corpus-scale text for language adaptation: the token budget, a seeded sample, one shared cache.

A stage that trains on text from the hub (or on a mixture) does not tokenise its corpus itself.
:func:`plan_corpus` works out, without writing anything:

- the **token budget**: ``max_steps x micro batch x accumulation x data-parallel ranks x
  sequence_len`` (or, with epochs, the whole corpus), plus ``data.budget_margin``;
- each **source**'s share (``data.sources`` weights), where its files are (the hub, a hub mirror
  folder, a local folder) and, for the hub, how many files the sample needs (``approx_tokens``);
- the **key** of the prepared corpus: sources, revisions, patterns, sample, tokenizer, sequence
  length, text options and the code that prepares it. Runs with the same key share one entry of
  ``<hardware.storage.cache>/prepared/<key>`` (sweep points, pipeline steps, later commands).

``llamantino/job/prepare.py`` is what the prepare jobs run; the plugin's ``load_datasets`` hook
reads the finished entry memory-mapped (``llamantino_prepared`` in the recipe).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llamantino.errors import ConfigError
from llamantino.paths import DATASETS_DIR
from llamantino.records.provenance import ModelSource, SourceKind
from llamantino.records.rundir import PreparedDir
from llamantino.config.schema import DataConfig, LlamantinoConfig
from llamantino_plugin.formats import is_text_name, shown_path

# Data files a source holds when its registry entry names no pattern.
DATA_FILES = ("*.parquet", "*.jsonl", "*.jsonl.gz", "*.json.gz", "*.json")


@dataclass(frozen=True)
class SourcePlan:
    """One source of a prepared corpus: where its files are and its share of the blocks."""

    name: str  # registry entry
    origin: str  # hub, mirror or folder
    location: str  # hub id, or the folder its files are read from
    hub_id: str | None
    subset: str | None
    revision: str | None
    patterns: tuple[str, ...]
    columns: dict
    weight: float
    blocks: int | None  # sequence_len blocks this source contributes (None: all it has)
    files: tuple[str, ...] = ()  # mirror and local: every matching file (relative names), listed now
    fetch_files: int | None = None  # hub: how many sampled files to download (None: all)


@dataclass(frozen=True)
class CorpusPlan:
    """What one prepared corpus holds, where it lives and how it is made."""

    key: str
    cache: str  # hardware.storage.cache as configured ($VAR and ~ unexpanded)
    sources: tuple[SourcePlan, ...]
    tokenizer: str  # model folder or hub id
    tokenizer_revision: str | None
    sequence_len: int
    budget_tokens: int | None  # what the stage consumes (None: epochs over the whole corpus)
    blocks: int | None  # budget in sequence_len blocks
    blocks_with_margin: int | None
    margin: float
    seed: int
    tasks: int
    min_chars: int
    dedup: bool
    pack: bool  # documents concatenated into full blocks; False: one document per row, cut at sequence_len
    hf_home: str | None
    hub_mirror: str | None
    notes: list[str] = field(default_factory=list)
    # stage.bad_rows for records that cannot be read (over-long, malformed); not in the key: a
    # corpus that prepares under strict prepares the same blocks under skip
    bad_rows: str = "strict"

    @property
    def entry(self) -> str:
        """The entry as the recipe names it (expanded by the plugin in the job)."""
        return f"{self.cache.rstrip('/')}/{PreparedDir.ROOT}/{self.key}"

    def entry_dir(self) -> PreparedDir:
        """The entry on this machine (raises ConfigError when a variable it names is unset)."""
        return PreparedDir(Path(expand(self.entry, "hardware.storage.cache")))

    def as_request(self) -> dict:
        return {**asdict(self), "entry": self.entry}

    def describe(self) -> str:
        """One line for the planner and the console."""
        if self.budget_tokens is None:
            budget = "epochs over the whole corpus"
        else:
            budget = (f"{self.budget_tokens:,} tokens = {self.blocks:,} blocks of {self.sequence_len}, "
                      f"+{self.margin:.0%} margin = {self.blocks_with_margin:,} blocks")
        if not self.pack:
            budget += " (one document per block, cut at the sequence length: stage.sample_packing=false)"
        shares = ", ".join(f"{s.name} {s.weight:.2g}" + (f" ({s.blocks:,} blocks)" if s.blocks else "")
                           for s in self.sources)
        return f"corpus {self.key[:12]}: {budget}; {shares}; seed {self.seed}, {self.tasks} prepare tasks"


def expand(value: str, key: str) -> str:
    """``~`` and ``$VAR`` expanded; ConfigError naming ``key`` when a variable is unset."""
    expanded = os.path.expandvars(os.path.expanduser(value))
    if "$" in expanded:
        raise ConfigError(f"{key}={value!r} names an environment variable that is not set here")
    return expanded


def token_budget(cfg: LlamantinoConfig, world_size: int) -> int | None:
    """Tokens a training stage consumes: steps x micro batch x accumulation x ranks x sequence_len."""
    stage = cfg.stage
    if stage.max_steps is None:
        return None
    return stage.max_steps * stage.micro_batch_size * stage.gradient_accumulation_steps * world_size * stage.sequence_len


def _entries(cfg: LlamantinoConfig) -> list[tuple[DataConfig, float]]:
    """(registry entry, weight) of each source: the mixture's entries, or the data option itself."""
    data = cfg.data
    if not data.sources:
        return [(data, 1.0)]
    from llamantino.config.registry import registry
    from llamantino_plugin.formats import format_spec

    known = registry()
    out = []
    for source in data.sources:
        if source.name not in known:
            raise ConfigError(f"data.sources: {source.name!r} is not a registry entry ({', '.join(known)})")
        entry = known[source.name]
        if entry.sources:
            raise ConfigError(f"data.sources: {source.name} is itself a mixture; list its sources instead")
        if not format_spec(entry.format).corpus:
            raise ConfigError(f"data.sources: {source.name} is {entry.format} data; a corpus mixes text sources only")
        out.append((entry, source.weight))
    return out


def _listed(root: Path, patterns: tuple[str, ...], name: str) -> tuple[str, ...]:
    """Files under ``root`` matching the patterns, as sorted relative names."""
    if not is_text_name(root):
        raise ConfigError(f"data {name}: the path {shown_path(root)} is not printable UTF-8; rename it")
    if root.is_file():
        return (root.name,)
    if not root.is_dir():
        raise ConfigError(f"data {name}: {shown_path(root)} does not exist (no such file or folder)")
    names = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
    matched = tuple(n for n in names if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(Path(n).name, p)
                                            for p in patterns))
    if not matched:
        raise ConfigError(f"data {name}: no file under {shown_path(root)} matches {', '.join(patterns)}")
    # names go into the entry's request and the run's records, which are UTF-8 text
    unnamed = [n for n in matched if not is_text_name(n)]
    if unnamed:
        raise ConfigError(f"data {name}: {len(unnamed)} file name(s) under {shown_path(root)} are not printable "
                          f"UTF-8, e.g. {shown_path(unnamed[0])}; rename them (or narrow data.files)")
    return matched


def _source(entry: DataConfig, weight: float, blocks: int | None, cfg: LlamantinoConfig) -> SourcePlan:
    storage = cfg.hardware.storage
    patterns = tuple(entry.files) or DATA_FILES
    common = dict(name=entry.name, hub_id=entry.hub_id, subset=entry.subset, revision=entry.revision,
                  patterns=patterns, columns=dict(entry.columns), weight=weight, blocks=blocks)
    if entry.path:
        root = Path(entry.path).expanduser()
        root = root if root.is_absolute() else DATASETS_DIR / root
        return SourcePlan(origin="folder", location=str(root.resolve()),
                          files=_listed(root, patterns, entry.name), **common)
    if not entry.hub_id:
        raise ConfigError(f"data {entry.name} has neither path nor hub_id")
    if storage.hub_mirror:
        root = Path(expand(storage.hub_mirror, "hardware.storage.hub_mirror")) / "datasets" / entry.hub_id
        return SourcePlan(origin="mirror", location=str(root), files=_listed(root, patterns, entry.name), **common)
    fetch = None
    if blocks is not None and entry.approx_tokens and entry.file_count:
        per_file = entry.approx_tokens / entry.file_count
        fetch = min(entry.file_count, max(1, math.ceil(blocks * cfg.stage.sequence_len / per_file)))
    return SourcePlan(origin="hub", location=entry.hub_id, fetch_files=fetch, **common)


def _tokenizer_identity(model_source: ModelSource) -> tuple[str, str | None, str]:
    """(where the tokenizer loads from, revision, what identifies it in the key)."""
    if model_source.kind == SourceKind.hub:
        return model_source.hub_id, model_source.revision, f"hub:{model_source.hub_id}@{model_source.revision}"
    folder = model_source.folder() or Path("")
    if model_source.kind == SourceKind.tiny_llama:
        return str(folder), None, f"tiny_llama:{folder.name}"
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())
    return str(folder), None, f"files:{digest.hexdigest()}"


def plan_corpus(cfg: LlamantinoConfig, model_source: ModelSource, world_size: int) -> CorpusPlan:
    """The prepared corpus a training stage on corpus-scale text reads (nothing is written)."""
    stage, data = cfg.stage, cfg.data
    entries = _entries(cfg)
    budget = token_budget(cfg, world_size)
    blocks = None if budget is None else budget // stage.sequence_len
    with_margin = None if blocks is None else math.ceil(blocks * (1 + data.budget_margin))
    total_weight = sum(weight for _, weight in entries)
    sources = []
    for entry, weight in entries:
        share = None if with_margin is None else max(1, math.ceil(with_margin * weight / total_weight))
        sources.append(_source(entry, weight / total_weight, share, cfg))
    tokenizer, revision, tokenizer_id = _tokenizer_identity(model_source)
    storage, prepare = cfg.hardware.storage, cfg.hardware.prepare
    identity = {
        "sources": [{"name": s.name, "origin": "folder" if s.origin == "folder" else "hub", "hub_id": s.hub_id,
                     "subset": s.subset, "revision": s.revision, "patterns": s.patterns, "columns": s.columns,
                     "blocks": s.blocks, "files": _file_identity(s)} for s in sources],
        "tokenizer": tokenizer_id, "sequence_len": stage.sequence_len, "seed": data.sample_seed,
        "tasks": prepare.tasks, "min_chars": stage.text_min_chars, "dedup": stage.text_dedup,
        # "pack" only when off, so the keys of packed corpora prepared before it existed stay the same
        "format": PreparedDir.LAYOUT, **({} if stage.sample_packing else {"pack": False}),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    notes = [f"data {s.name}: approx_tokens/file_count unknown, so every matching file is downloaded"
             for s in sources if s.origin == "hub" and s.fetch_files is None and s.blocks is not None]
    return CorpusPlan(key=key, cache=storage.cache, sources=tuple(sources), tokenizer=tokenizer,
                      tokenizer_revision=revision, sequence_len=stage.sequence_len, budget_tokens=budget, blocks=blocks,
                      blocks_with_margin=with_margin, margin=data.budget_margin, seed=data.sample_seed,
                      tasks=prepare.tasks, min_chars=stage.text_min_chars, dedup=stage.text_dedup,
                      pack=bool(stage.sample_packing),
                      hf_home=storage.hf_home, hub_mirror=storage.hub_mirror, notes=notes,
                      bad_rows=str(stage.bad_rows))


def _file_identity(source: SourcePlan) -> list:
    """Local folders: names, sizes and modification times (content changes make a new key)."""
    if source.origin != "folder":
        return list(source.files)
    root = Path(source.location)
    out = []
    for name in source.files:
        stat = (root / name if root.is_dir() else root).stat()
        out.append([name, stat.st_size, stat.st_mtime_ns])
    return out
