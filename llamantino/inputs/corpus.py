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
import re
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llamantino.errors import ConfigError
from llamantino.paths import DATASETS_DIR
from llamantino.records.provenance import ModelSource, SourceKind
from llamantino.records.rundir import PreparedDir
from llamantino.config.schema import DataConfig, LlamantinoConfig
from llamantino_plugin.formats import is_text_name, shown_path

TRAIN_SPLIT = "train"  # the split a corpus's data.files patterns select
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
    columns: dict[str, str]
    weight: float
    blocks: int | None  # sequence_len blocks this source contributes (None: all it has)
    files: tuple[str, ...] = ()  # mirror and local: every matching file (relative names), listed now
    read_files: int | None = None  # how many files of the read order the sample reads (None: all); the hub: fetches
    rows: tuple[int, int | None] | None = None  # a sliced split (train[:N]): rows start-stop, read in file order
    approx_tokens_per_file: float | None = None  # the registry's estimate (sizes read_files)
    normalize: bool = True  # documents rewritten by normalise_text; False: tokenised as read (data.normalize)

    @property
    def normalize_mark(self) -> dict:
        """What a record of the source says of normalisation: nothing when on (records and keys made
        before the option read the same), ``normalize: false`` when off."""
        return {} if self.normalize else {"normalize": False}

    @property
    def split(self) -> str:
        """The split as ``datasets`` names it (the recipe shows it)."""
        if self.rows is None:
            return "train"
        return f"train[{self.rows[0] or ''}:{'' if self.rows[1] is None else self.rows[1]}]"


class PreparedEntry:
    """An entry of the prepared cache a plan names (a corpus, or rows): ``<cache>/prepared/<key>``."""

    key: str
    cache: str

    @property
    def entry(self) -> str:
        """The entry as the recipe names it (expanded by the plugin in the job)."""
        return f"{self.cache.rstrip('/')}/{PreparedDir.ROOT}/{self.key}"

    def entry_dir(self) -> PreparedDir:
        """The entry on this machine (raises ConfigError when a variable it names is unset)."""
        return PreparedDir(Path(expand(self.cache, "hardware.storage.cache")) / PreparedDir.ROOT / self.key)


@dataclass(frozen=True)
class CorpusPlan(PreparedEntry):
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
    near_dedup: bool
    pack: bool  # documents concatenated into full blocks; False: one document per row, cut at sequence_len
    hf_home: str | None
    hub_mirror: str | None
    notes: list[str] = field(default_factory=list)
    base: str = ""  # the key without the files read: entries with the same base hold prefixes of one sample
    workers: int = 1  # processes per prepare task (hardware.prepare.cpus)
    reused: bool = False  # the entry is a larger one of the same base, read as a prefix
    # stage.bad_rows for records that cannot be read (over-long, malformed); not in the key: a
    # corpus that prepares under strict prepares the same blocks under skip
    bad_rows: str = "strict"
    kind = "corpus"
    after_model = False  # a corpus is tokenised with the model option's (or a finished run's) tokenizer

    @property
    def steps(self) -> tuple[str, ...]:
        """The preparation steps this corpus needs, in order (``PreparedDir.STEPS``)."""
        hub = any(source.origin == "hub" for source in self.sources)
        return tuple(step for step in PreparedDir.STEPS if step != PreparedDir.ROWS_STEP
                     and (step != "fetch" or hub) and (step not in ("scan", "dedup") or self.dedup or self.near_dedup))

    def as_request(self) -> dict:
        """What the prepare steps read back (``llamantino.job.units.read_request``)."""
        return asdict(self)

    def taken_blocks(self) -> dict[str, int] | None:
        """Blocks the run takes from each source (None: every block, epochs over the whole corpus)."""
        if self.blocks_with_margin is None:
            return None
        return {source.name: source.blocks for source in self.sources if source.blocks is not None}

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
        if self.reused:
            return (f"corpus {self.key[:12]}: {budget}; {shares}; the first blocks of an entry prepared for a larger "
                    "budget from the same sample")
        return f"corpus {self.key[:12]}: {budget}; {shares}; seed {self.seed}, {self.tasks} prepare tasks"


# Where a key's default comes from (conf/config.yaml), named in the fix for an unset variable.
_DEFAULT_FROM = {"run.output_root": "hardware.storage.runs"}


def expand(value: str, key: str) -> str:
    """``~`` and ``$VAR`` expanded; ConfigError naming ``key``, the unset variable and what to set or pass."""
    expanded = os.path.expandvars(os.path.expanduser(value))
    if "$" not in expanded:
        return expanded
    unset = list(dict.fromkeys(re.findall(r"\$\{?(\w+)", expanded)))  # expandvars leaves unset ones as written
    if not unset:
        raise ConfigError(f"{key}={value!r} holds a '$' that names no environment variable: pass {key}=<folder> "
                          "without one")
    origin = f" (its default comes from the hardware option's {_DEFAULT_FROM[key]})" if key in _DEFAULT_FROM else ""
    names = " and ".join(f"${name}" for name in unset)
    raise ConfigError(f"{key}={value!r} names {names}, which {'is' if len(unset) == 1 else 'are'} not set here: "
                      f"export {' '.join(f'{name}=<folder>' for name in unset)}, or pass {key}=<folder>{origin}")


def token_budget(cfg: LlamantinoConfig, world_size: int) -> int | None:
    """Tokens a training stage consumes: steps x micro batch x accumulation x ranks x sequence_len."""
    stage = cfg.stage
    if stage.max_steps is None:
        return None
    return stage.max_steps * stage.micro_batch_size * stage.gradient_accumulation_steps * world_size * stage.sequence_len


def registry_sources(data: DataConfig) -> list[tuple[DataConfig, float]]:
    """(registry entry, weight) of each source: the mixture's entries, or the data option itself."""
    if not data.sources:
        return [(data, 1.0)]
    from llamantino.config.registry import registry

    known = registry()
    out = []
    for source in data.sources:
        if source.name not in known:
            raise ConfigError(f"data.sources: {source.name!r} is not a registry entry ({', '.join(known)})")
        entry = known[source.name]
        if entry.sources:
            raise ConfigError(f"data.sources: {source.name} is itself a mixture; list its sources instead")
        out.append((entry, source.weight))
    return out


def _entries(cfg: LlamantinoConfig) -> list[tuple[DataConfig, float]]:
    """The corpus's sources by weight: text only."""
    from llamantino_plugin.formats import format_spec

    entries = registry_sources(cfg.data)
    for entry, _ in entries:
        if cfg.data.sources and not format_spec(entry.format).corpus:
            raise ConfigError(f"data.sources: {entry.name} is {entry.format} data; a corpus mixes text sources only")
    return entries


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


ROWS_MARGIN = 0.05  # a sliced split's files are sized from rows per file, an average: read 5% more


def _tokens_per_file(entry: DataConfig) -> float | None:
    return entry.approx_tokens / entry.file_count if entry.approx_tokens and entry.file_count else None


def _read_files(entry: DataConfig, blocks: int | None, sequence_len: int, rows, local: bool) -> int | None:
    """How many files of the read order the sample needs, from the registry's estimates (None: all)."""
    if rows is not None:  # a sliced split: its files in order, up to the last row
        _, start, stop = rows
        if local or stop is None or not (entry.num_rows and entry.file_count):
            return None  # local files are read in order until the last row: no estimate needed
        per_file = entry.num_rows / entry.file_count
        return min(entry.file_count, math.ceil(stop * (1 + ROWS_MARGIN) / per_file) + 1)
    per_file = _tokens_per_file(entry)
    if blocks is None or per_file is None:
        return None
    return min(entry.file_count, max(1, math.ceil(blocks * sequence_len / per_file)))


def _rows(entry: DataConfig):
    """The row slice of ``data.split`` (None: the whole split); percentages and other splits refused."""
    rows = entry.row_slice()
    name = rows[0] if rows else entry.split
    if "%" in entry.split or name != TRAIN_SPLIT:
        raise ConfigError(f"data.split={entry.split!r}: a corpus reads the train files its data.files patterns "
                          f"select ({entry.name}); give train or a row slice of it (train[:100000], train[1000:2000]) "
                          "- percentages are not resolved for corpora")
    return rows


def _source(entry: DataConfig, weight: float, blocks: int | None, cfg: LlamantinoConfig) -> SourcePlan:
    storage = cfg.hardware.storage
    patterns = tuple(entry.files) or DATA_FILES
    rows = _rows(entry)
    read = _read_files(entry, blocks, cfg.stage.sequence_len, rows, local=bool(entry.path or storage.hub_mirror))
    per_file = _tokens_per_file(entry)
    common = dict(name=entry.name, hub_id=entry.hub_id, subset=entry.subset, revision=entry.revision,
                  patterns=patterns, columns=dict(entry.columns), weight=weight, blocks=blocks,
                  rows=None if rows is None else (rows[1], rows[2]), approx_tokens_per_file=per_file,
                  normalize=entry.normalize and cfg.data.normalize)  # a mixture's false covers its sources
    if entry.path:
        root = Path(entry.path).expanduser()
        root = root if root.is_absolute() else DATASETS_DIR / root
        return SourcePlan(origin="folder", location=str(root.resolve()), read_files=read,
                          files=_listed(root, patterns, entry.name), **common)
    if not entry.hub_id:
        raise ConfigError(f"data {entry.name} has neither path nor hub_id")
    if storage.hub_mirror:
        root = Path(expand(storage.hub_mirror, "hardware.storage.hub_mirror")) / "datasets" / entry.hub_id
        return SourcePlan(origin="mirror", location=str(root), files=_listed(root, patterns, entry.name),
                          read_files=read, **common)
    if read is None:  # the fetch would download every matching file of the repository
        if rows is not None:
            missing = "data.num_rows and data.file_count" if rows[2] is not None else "an end row (train[:N])"
        else:
            missing = "data.approx_tokens and data.file_count" if blocks is not None else \
                "stage.max_steps (a token budget), or data.approx_tokens and data.file_count"
        raise ConfigError(f"data {entry.name}: reading it from the hub would download every file of {entry.hub_id} "
                          f"matching {', '.join(patterns)}, as nothing bounds it: set {missing} (the planner sizes the "
                          "download with them), or read a local copy (hardware.storage.hub_mirror=<folder>)")
    return SourcePlan(origin="hub", location=entry.hub_id, read_files=read, **common)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def _tokenizer_identity(model_source: ModelSource) -> tuple[str, str | None, str, str | None]:
    """(where the tokenizer loads from, revision, what identifies it in the key, a note). The key
    names a tokenizer by the hash of its files, so models sharing one (Llama-2 7B and 13B) share
    prepared corpora; a hub model whose files are not downloaded yet is named by id and revision."""
    if model_source.kind == SourceKind.hub:
        files = _cached_hub_files(model_source.hub_id, model_source.revision)
        where = (model_source.hub_id, model_source.revision)
        if files:
            return (*where, f"files:{_digest_files(files)}", None)
        return (*where, f"hub:{model_source.hub_id}@{model_source.revision}",
                f"the tokenizer of {model_source.hub_id} is not in HF_HOME yet, so the corpus key names it by hub "
                "id: models sharing its tokenizer share prepared corpora once it is downloaded")
    folder = model_source.folder() or Path("")
    return str(folder), None, f"files:{_digest_files({name: folder / name for name in TOKENIZER_FILES})}", None


def _cached_hub_files(hub_id: str, revision: str | None) -> dict[str, Path]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return {}
    found = {}
    for name in TOKENIZER_FILES:
        path = try_to_load_from_cache(hub_id, name, revision=revision)
        if isinstance(path, str):
            found[name] = Path(path)
    return found if ("tokenizer.json" in found or "tokenizer.model" in found) else {}


def _digest_files(files: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = files.get(name)
        if path is not None and path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


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
    tokenizer, revision, tokenizer_id, tokenizer_note = _tokenizer_identity(model_source)
    storage, prepare = cfg.hardware.storage, cfg.hardware.prepare
    # What the blocks of every unit depend on: not the budget, the files read or the task count, so
    # entries of one base hold prefixes of one sample.
    base_identity = {
        "sources": [{"name": s.name, "origin": "folder" if s.origin == "folder" else "hub", "hub_id": s.hub_id,
                     "subset": s.subset, "revision": s.revision, "patterns": s.patterns, "columns": s.columns,
                     "rows": s.rows, "files": _file_identity(s), **s.normalize_mark}
                    for s in sources],
        "tokenizer": tokenizer_id, "sequence_len": stage.sequence_len, "seed": data.sample_seed,
        "min_chars": stage.text_min_chars, "dedup": stage.text_dedup, "near_dedup": stage.text_near_dedup,
        "format": PreparedDir.LAYOUT, "pack": bool(stage.sample_packing),
    }
    base = _hash(base_identity)
    key = _hash({"base": base, "read": [[s.read_files, s.blocks] for s in sources]})
    notes = [tokenizer_note] if tokenizer_note else []
    notes += [f"data {s.name}: no approx_tokens/file_count, so all {len(s.files)} files are read; set them to read "
              "only what the budget needs" for s in sources if s.origin != "hub" and s.read_files is None
              and s.blocks is not None and len(s.files) > 1]
    if cfg.hardware.gpu and not prepare.partition and cfg.hardware.slurm.partition:
        notes.append(f"hardware.prepare.partition is not set, so the prepare jobs (CPU work) run on "
                     f"{cfg.hardware.slurm.partition or 'the default partition'}, the GPU partition: name the site's "
                     "CPU partition (hardware.prepare.partition=<name>)")
    plan = CorpusPlan(key=key, cache=storage.cache, sources=tuple(sources), tokenizer=tokenizer,
                      tokenizer_revision=revision, sequence_len=stage.sequence_len, budget_tokens=budget, blocks=blocks,
                      blocks_with_margin=with_margin, margin=data.budget_margin, seed=data.sample_seed,
                      tasks=prepare.tasks, min_chars=stage.text_min_chars, dedup=stage.text_dedup,
                      near_dedup=stage.text_near_dedup, pack=bool(stage.sample_packing),
                      hf_home=storage.hf_home, hub_mirror=storage.hub_mirror, notes=notes, base=base,
                      workers=prepare.cpus, bad_rows=str(stage.bad_rows))
    return _reusing(plan)


def _hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _reusing(plan: CorpusPlan) -> CorpusPlan:
    """The plan, or the plan reading a complete entry of the same base that holds every source's
    share (prepared for a larger budget): its first blocks are the ones this plan would prepare."""
    if plan.blocks_with_margin is None:
        return plan
    try:
        root = Path(expand(plan.cache, "hardware.storage.cache")) / PreparedDir.ROOT
    except ConfigError:  # a variable of another machine: nothing to reuse here
        return plan
    if (root / plan.key / PreparedDir.MANIFEST).is_file() or not root.is_dir():
        return plan
    from llamantino.records.files import load_object

    wanted = plan.taken_blocks() or {}
    found = []
    for manifest_path in root.glob(f"*/{PreparedDir.MANIFEST}"):
        try:
            manifest = load_object(manifest_path)
            if manifest.get("base") != plan.base or manifest.get("key") != manifest_path.parent.name:
                continue
            have = {name: int(counts["available_blocks"]) for name, counts in manifest["sources"].items()}
        except (ValueError, OSError, KeyError, TypeError):  # an unreadable entry is not reused
            continue
        if all(have.get(name, 0) >= blocks for name, blocks in wanted.items()):
            found.append((sum(have.values()), manifest_path.parent.name))
    if not found:
        return plan
    _, key = min(found)
    return dataclasses.replace(plan, key=key, reused=True, notes=[
        *plan.notes, f"reuses the first blocks of corpus {key[:12]} (prepared for a larger budget from the same "
                     "sample): nothing to prepare"])


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
