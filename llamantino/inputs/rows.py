"""Instruction, conversation and preference data prepared once, shared by every run that reads it.

A training stage on rows (SFT, DPO) does not tokenise its data in its GPU job. :func:`plan_rows`
works out, without writing anything, the **key** of the prepared rows: every source's content (a
local file's sha256, a hub dataset's id, revision, subset and split), each source's weight and the
mixture's size, the sampling seed, the tokenizer (the hash of its files), and every recipe key that
changes the tokens (template, system prompt, sequence length, masking, truncation, bad-row policy,
packing, the DPO settings) with the versions of the code that tokenises. Runs with the same key
(sweep points, pipeline steps, later commands) read one entry of ``<hardware.storage.cache>/prepared/<key>``.

The entry is made by one CPU job (``python -m llamantino.job.prepare rows <entry>``, on SLURM before
the training job, which waits on it with afterok; locally before training) with Axolotl's own
dataset code and the plugin's loaders, source by source; a mixture then takes each source's share
of the rows with a seeded sample. The training job reads the entry memory-mapped through the
plugin's ``load_datasets`` hook (``llamantino_prepared`` in the recipe), so ``axolotl train
axolotl.yaml`` in the run directory reads it too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from llamantino.errors import ConfigError
from llamantino.inputs.corpus import PreparedEntry, _tokenizer_identity
from llamantino.records.provenance import ModelSource, SourceKind, package_versions
from llamantino.records.rundir import PreparedDir
from llamantino.config.schema import DataConfig, LlamantinoConfig

# Part of every key: raise it with any change to llamantino/job/prepare_rows.py that alters the rows.
ROWS_LAYOUT = 1
# The packages whose code turns rows into tokens: their versions are part of the key.
TOKENISING_PACKAGES = ("llamantino", "axolotl", "transformers", "tokenizers", "datasets", "trl")
# Recipe keys of ``stage.axolotl`` that change the prepared rows (carried into the prepare job and the key).
DATA_OVERRIDES = frozenset({"dataset_exact_deduplication", "shuffle_merged_datasets", "chat_template_kwargs",
                            "eot_tokens", "special_tokens", "tokens", "add_bos_token"})


@dataclass(frozen=True)
class RowSource:
    """One source of prepared rows: where it is read from and its share of the mixture."""

    name: str  # registry entry
    format: str
    columns: dict[str, str]
    weight: float  # normalised: the weights of a mixture sum to 1
    split: str
    subset: str | None
    revision: str | None
    hub_id: str | None = None
    local: str | None = None  # an absolute local file ...
    sha256: str | None = None  # ... and its hash
    license: str | None = None
    recipe_path: str = ""  # how the run's recipe names it (inputs/<file> or the hub id)


@dataclass(frozen=True)
class RowsPlan(PreparedEntry):
    """What one entry of prepared rows holds, where it lives and how it is made."""

    key: str
    cache: str  # hardware.storage.cache as configured ($VAR and ~ unexpanded)
    sources: tuple[RowSource, ...]
    tokenizer: str  # model folder or hub id the prepare job loads the tokenizer from
    tokenizer_revision: str | None
    recipe: dict[str, Any]  # the Axolotl keys that shape the rows (the prepare job's recipe, without datasets)
    seed: int  # data.sample_seed: the mixture's sample and its order
    mix_rows: int | None  # data.mix_rows: rows of the mixture (None: as many as the weights allow unrepeated)
    rl: str | None
    workers: int = 1
    hf_home: str | None = None
    after_model: bool = False  # the tokenizer is an earlier step's output: prepared once that step is done
    notes: list[str] = field(default_factory=list)
    kind = "rows"
    steps = (PreparedDir.ROWS_STEP,)
    tasks = 1

    @property
    def mixture(self) -> bool:
        return len(self.sources) > 1

    def as_request(self) -> dict:
        """What the prepare job reads back (``llamantino.job.prepare_rows.read_request``)."""
        return {"kind": self.kind, "layout": ROWS_LAYOUT, **asdict(self)}

    def describe(self) -> str:
        shares = ", ".join(f"{s.name} {s.weight:.2g}" for s in self.sources)
        size = f"{self.mix_rows:,} rows" if self.mix_rows else "as many rows as the weights allow"
        what = f"mixture of {shares} ({size}, seed {self.seed})" if self.mixture else self.sources[0].name
        return f"rows {self.key[:12]}: {what}, tokenised once for sequence_len {self.recipe['sequence_len']}"

    def record(self) -> dict:
        """The run's provenance of its prepared rows (``data.rows``): the entry and its whole request,
        so a run written without preparing (launcher=dry, launcher.submit=false) is prepared later."""
        return {"entry": self.entry, **self.as_request()}


def recorded_request(record: dict) -> dict:
    """The request a run's ``data.rows`` record holds (the inverse of ``RowsPlan.record``); checked
    again by the rows step that reads it (a record is a file read back)."""
    return {key: value for key, value in record.items() if key != "entry"}


def mixture_entries(cfg: LlamantinoConfig) -> list[tuple[DataConfig, float]]:
    """(registry entry, weight) of each source of a stage on rows; formats checked against the stage."""
    from llamantino.inputs.corpus import registry_sources
    from llamantino_plugin.formats import format_spec

    stage = cfg.stage
    entries = registry_sources(cfg.data)
    if len(entries) == 1:
        return entries
    formats = {str(entry.format): entry.name for entry, _ in entries}
    corpus = [fmt for fmt in formats if format_spec(fmt).corpus]
    pairs = {bool(format_spec(fmt).pairs) for fmt in formats}
    wanted = "/".join(str(fmt) for fmt in stage.data_formats)
    if corpus and len(formats) > len(corpus):
        shown = ", ".join(f"{fmt} ({name})" for fmt, name in formats.items())
        raise ConfigError(f"data.sources mixes {shown}: text corpora mix only with text (language adaptation) and "
                          "instruction, conversation or preference data only with each other; split the mixture")
    if len(pairs) > 1:
        shown = ", ".join(f"{fmt} ({name})" for fmt, name in formats.items())
        raise ConfigError(f"data.sources mixes {shown}: preference pairs (DPO) cannot be mixed with single "
                          "answers (SFT); list sources of one kind")
    wrong = [f"{fmt} ({name})" for fmt, name in formats.items() if fmt not in {str(f) for f in stage.data_formats}]
    if wrong:
        raise ConfigError(f"stage {stage.name} trains on {wanted} data, but data.sources has {', '.join(wrong)}; "
                          f"choose sources of format {wanted}")
    return entries


def _recipe(cfg: LlamantinoConfig, recipe_keys: dict) -> dict:
    """The recipe keys that shape the rows: the renderer's (the plugin's, packing, truncation), sequence
    length, masking, the DPO settings, and data keys of stage.axolotl."""
    stage = cfg.stage
    keys = {key: value for key, value in recipe_keys.items() if key != "llamantino_datasets"}
    keys.update(sequence_len=stage.sequence_len, train_on_inputs=bool(stage.train_on_inputs))
    if stage.rl:
        keys["rl"] = str(stage.rl)
        if stage.max_prompt_len is not None:
            keys["max_prompt_len"] = stage.max_prompt_len
    keys.update({key: value for key, value in stage.axolotl.items() if key in DATA_OVERRIDES})
    return keys


def tokenizer_of(model_source: ModelSource) -> tuple[str, str | None, str, bool]:
    """(where the tokenizer loads from, revision, its identity in the key, whether it is made by an
    earlier step not finished yet). An earlier run's model is named by its folder, made or not: a
    relaunched pipeline renders the same key as the submission that made the step."""
    if model_source.kind == SourceKind.run:
        folder = model_source.folder()
        if folder is not None:
            return str(folder), None, f"run:{folder}", not (folder / "config.json").is_file()
    where, revision, identity, _ = _tokenizer_identity(model_source)
    return where, revision, identity, False


def plan_rows(cfg: LlamantinoConfig, model_source: ModelSource, sources: list[RowSource], recipe_keys: dict) -> RowsPlan:
    """The prepared rows a training stage on rows reads (nothing is written)."""
    tokenizer, revision, tokenizer_id, after_model = tokenizer_of(model_source)
    recipe = _recipe(cfg, recipe_keys)
    versions = package_versions()
    identity = {
        "layout": ROWS_LAYOUT, "tokenizer": tokenizer_id, "recipe": recipe, "seed": cfg.data.sample_seed,
        "mix_rows": cfg.data.mix_rows,
        "sources": [{"name": s.name, "format": s.format, "columns": s.columns, "weight": s.weight, "split": s.split,
                     "subset": s.subset, "revision": s.revision, "hub_id": s.hub_id, "sha256": s.sha256}
                    for s in sources],
        "packages": {name: versions.get(name) for name in TOKENISING_PACKAGES},
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    notes = []
    if after_model:
        notes.append(f"rows {key[:12]} are tokenised once the earlier step that makes {tokenizer} has finished")
    return RowsPlan(key=key, cache=cfg.hardware.storage.cache, sources=tuple(sources), tokenizer=tokenizer,
                    tokenizer_revision=revision, recipe=recipe, seed=cfg.data.sample_seed,
                    mix_rows=cfg.data.mix_rows, rl=str(cfg.stage.rl) if cfg.stage.rl else None,
                    workers=cfg.hardware.prepare.cpus, hf_home=cfg.hardware.storage.hf_home,
                    after_model=after_model, notes=notes)


def source_of(entry: dict, weight: float) -> RowSource:
    """A resolved data entry (``resolve.resolve_data``) as a source of prepared rows."""
    return RowSource(name=entry["name"], format=entry["format"], columns=dict(entry["columns"]), weight=weight,
                     split=entry["split"], subset=entry["subset"], revision=entry["revision"],
                     hub_id=entry.get("hub_id"), local=entry.get("local"), sha256=entry.get("sha256"),
                     license=entry.get("license"), recipe_path=entry["recipe_path"])

