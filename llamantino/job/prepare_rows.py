"""The rows step: tokenise SFT/DPO data once, sample a weighted mixture, write the entry.

    python -m llamantino.job.prepare rows <entry>

Each source is read and tokenised by Axolotl's own dataset code with the plugin's loaders, exactly
as a training job would (template, masking, over-long rows, bad rows, packing preparation), in a
recipe built from the entry's request: no data key comes from anywhere else, and no request value
can name code (the loader types are the plugin's, chosen here by format). A mixture then takes
``round(rows x weight)`` rows of each source with a seeded sample (a source asked for more rows
than it has is repeated whole, then sampled), and the rows are shuffled with the same seed. The rows
go to ``rows/`` (``datasets``' Arrow files, read memory-mapped by the plugin), and ``manifest.json``,
written last, holds each source's counts: what its loader read, dropped and kept, and what the
mixture took.

Preference rows are prepared the same way (mapped, checked, over-long pairs dropped or truncated);
TRL still turns them into token ids inside the training job (Axolotl 0.19 hands DPO text to TRL).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from llamantino.errors import DataError
from llamantino.inputs.rows import DATA_OVERRIDES, ROWS_LAYOUT, RowsPlan
from llamantino.records.files import RunDirError, leftover_suffix, load_object, typed
from llamantino.records.rundir import PreparedDir
from llamantino_plugin.formats import FORMATS, dataset_entries, format_spec

PLUGIN = "llamantino_plugin.plugin.LlamantinoPlugin"
# The recipe keys a request may carry (render/axolotl.py rows_recipe_keys and inputs/rows.py _recipe).
RECIPE_KEYS = frozenset({"llamantino_template", "llamantino_bad_rows", "llamantino_system_prompt",
                         "llamantino_script_exact", "sample_packing", "sequence_len", "excess_length_strategy",
                         "train_on_inputs", "rl", "max_prompt_len"}) | DATA_OVERRIDES
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_SPLIT = re.compile(r"[A-Za-z0-9_.-]+(\[\d*%?:\d*%?\])?")


def read_request(entry_dir: PreparedDir) -> RowsPlan:
    """The entry's request, typed and checked (a file read back is untrusted); DataError naming the field."""
    path = entry_dir.path / PreparedDir.REQUEST
    data = dict(entry_dir.request())
    problems = []
    if data.pop("kind", None) != RowsPlan.kind or data.pop("layout", None) != ROWS_LAYOUT:
        problems.append(f"kind/layout is not {RowsPlan.kind}/{ROWS_LAYOUT}")
    try:
        plan = typed(RowsPlan, data, path, "request")
    except RunDirError as exc:
        raise DataError(f"{exc}; the entry's request is damaged: remove {entry_dir.path} and run the command that "
                        "planned it again") from None
    if plan.key != entry_dir.path.name:
        problems.append(f"key {plan.key!r} is not the entry's folder name")
    unknown = sorted(set(plan.recipe) - RECIPE_KEYS)
    if unknown:
        problems.append(f"recipe keys {', '.join(unknown)} are not data keys ({', '.join(sorted(RECIPE_KEYS))})")
    if not plan.sources:
        problems.append("it names no source")
    if not 1 <= plan.workers <= 1024:
        problems.append(f"workers={plan.workers} is outside 1-1024")
    for source in plan.sources:
        where = f"source {source.name!r}"
        if source.format not in FORMATS or format_spec(source.format).corpus:
            problems.append(f"{where}: format {source.format!r} is not an SFT or DPO format")
        if (source.local is None) == (source.hub_id is None):
            problems.append(f"{where}: exactly one of local and hub_id must be set")
        if source.local is not None and not (Path(source.local).is_absolute() and Path(source.local).is_file()):
            problems.append(f"{where}: local={source.local!r} is not an existing file named by an absolute path")
        if source.hub_id is not None and not _HUB_ID.fullmatch(source.hub_id):
            problems.append(f"{where}: hub_id={source.hub_id!r} is not a hub dataset id")
        if not _SPLIT.fullmatch(source.split or ""):
            problems.append(f"{where}: split={source.split!r} is not a split")
        if not 0 < source.weight <= 1:
            problems.append(f"{where}: weight={source.weight} is outside (0, 1]")
    if problems:
        raise DataError(f"{path}: {'; '.join(problems)}; the entry's request is damaged: remove {entry_dir.path} "
                        "and run the command that planned it again")
    return plan


def _unchanged(plan: RowsPlan) -> None:
    """Local files hash as when the run was planned (the key names their content)."""
    from llamantino.inputs.resolve import sha256_file

    for source in plan.sources:
        if source.local is not None and sha256_file(Path(source.local)) != source.sha256:
            raise DataError(f"data {source.name}: {source.local} changed after the run was written (its sha256 "
                            "differs from the one in the key): write the run again, so its key names this content")


def quotas(available: dict[str, int], weights: dict[str, float], mix_rows: int | None) -> dict[str, int]:
    """Rows each source contributes: ``round(total x weight)``; without ``mix_rows``, the largest total
    that repeats no row (the scarcest source relative to its weight is taken whole)."""
    if len(available) == 1:
        name = next(iter(available))
        return {name: mix_rows or available[name]}
    total = mix_rows or min(math.floor(available[name] / weights[name]) for name in available)
    return {name: max(1, round(total * weights[name])) for name in available}


def sampled_indices(rows: int, wanted: int, seed: int, index: int):
    """``wanted`` row indices of ``rows``: whole passes over the rows, then a seeded sample without
    repetition (sorted, so reading stays sequential)."""
    import numpy as np

    passes, rest = divmod(wanted, rows)
    rng = np.random.default_rng([seed, index])
    sample = np.sort(rng.choice(rows, size=rest, replace=False)) if rest else np.empty(0, dtype=np.int64)
    return np.concatenate([np.tile(np.arange(rows), passes), sample]).astype(np.int64), passes


def _lengths(dataset):
    """Tokens of each row (SFT rows; None for DPO text), read in Arrow batches."""
    import numpy as np
    import pyarrow.compute as pc

    if "input_ids" not in dataset.column_names:
        return None
    parts = [pc.list_value_length(batch["input_ids"]).to_numpy(zero_copy_only=False)
             for batch in dataset.with_format("arrow").iter(batch_size=8192)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _recipe(plan: RowsPlan, index: int, work: Path, local: str | None) -> dict:
    """The Axolotl recipe that prepares source ``index`` (its own output_dir: its report)."""
    source = plan.sources[index]
    dataset, described = dataset_entries(local or source.hub_id, source.format, split=source.split,
                                         subset=source.subset, revision=source.revision, local=bool(local),
                                         columns=source.columns)
    recipe = {"base_model": plan.tokenizer, **({"revision_of_model": plan.tokenizer_revision}
                                              if plan.tokenizer_revision else {}),
              "plugins": [PLUGIN], **plan.recipe, "datasets": [dataset], "llamantino_datasets": [described],
              "output_dir": str(work / f"source-{index}"), "dataset_prepared_path": str(work / "axolotl"),
              "micro_batch_size": 1, "gradient_accumulation_steps": 1, "num_epochs": 1, "learning_rate": 1e-5,
              "val_set_size": 0, "seed": plan.seed, "dataset_num_proc": plan.workers, "is_preprocess": True}
    return recipe


def _cleaned(plan: RowsPlan, index: int, work: Path) -> str | None:
    """A local source's file, or (bad_rows skip) a copy of it without its unreadable lines."""
    from llamantino_plugin.formats import DataFileError, check_file, columns_for

    source = plan.sources[index]
    if source.local is None or plan.recipe.get("llamantino_bad_rows") != "skip":
        return source.local
    copy = work / f"source-{index}.jsonl"
    with open(copy, "wb") as out:  # the kept lines streamed to the copy: memory does not grow with the file
        kept = _LineWriter(out)
        try:
            report = check_file(source.local, source.format, columns_for(source.format, source.columns), "skip",
                                keep=kept)
        except (DataFileError, ValueError) as exc:
            raise DataError(f"data {source.name}: {exc}") from None
    if not report.skipped:
        copy.unlink()
        return source.local
    return str(copy)


class _LineWriter:
    """``check_file``'s ``keep``: each kept raw line written out, ended by a newline."""

    def __init__(self, out) -> None:
        self.out = out

    def append(self, line: bytes) -> None:
        self.out.write(line if line.endswith(b"\n") else line + b"\n")


def _source_rows(plan: RowsPlan, index: int, work: Path):
    """One source tokenised (SFT) or mapped (DPO) by Axolotl and the plugin: (dataset, its report)."""
    import yaml
    from axolotl.cli.config import load_cfg

    from llamantino_plugin.report import REPORT_FILE

    recipe_path = work / f"source-{index}.yaml"
    recipe_path.write_text(yaml.safe_dump(_recipe(plan, index, work, _cleaned(plan, index, work)), sort_keys=False))
    cfg = load_cfg(str(recipe_path))
    try:
        if plan.rl:
            from llamantino_plugin.plugin import load_preferences

            dataset = load_preferences(cfg, plan.sources[index].format).train_dataset
        else:
            from axolotl.loaders import load_tokenizer
            from axolotl.utils.data import prepare_datasets

            dataset = prepare_datasets(cfg, load_tokenizer(cfg))[0]
    except ValueError as exc:  # the plugin's data errors (every row dropped, a bad row under strict)
        raise DataError(f"data {plan.sources[index].name}: {exc}") from None
    report_path = Path(cfg.output_dir) / REPORT_FILE
    reports = load_object(report_path) if report_path.is_file() else {}
    counts = next(iter(reports.values()), {}) if len(reports) == 1 else {}
    return dataset, {key: value for key, value in counts.items() if key != "format"}


def prepare_rows(entry_dir: PreparedDir, echo=print) -> dict:
    """Make the entry: every source prepared, the mixture sampled, ``rows/`` and the manifest written."""
    from datasets import concatenate_datasets, disable_caching

    plan = read_request(entry_dir)
    _unchanged(plan)
    started = time.time()
    work = entry_dir.path / PreparedDir.WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["HF_DATASETS_CACHE"] = str(work / "datasets")  # Axolotl's intermediate files die with the step
    os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    disable_caching()
    target = entry_dir.path / PreparedDir.ROWS
    partial = entry_dir.path / f".{PreparedDir.ROWS}.{secrets.token_hex(3)}{leftover_suffix('partial')}"
    try:
        prepared, counts = [], {}
        for index, source in enumerate(plan.sources):
            echo(f"llamantino prepare: rows {plan.key[:12]}: source {index + 1}/{len(plan.sources)} {source.name}")
            dataset, report = _source_rows(plan, index, work)
            prepared.append(dataset)
            counts[source.name] = {"format": source.format, "weight": source.weight, **report,
                                   "available_rows": len(dataset)}
        empty = [source.name for source, dataset in zip(plan.sources, prepared) if len(dataset) == 0]
        if empty:
            raise DataError(f"data {', '.join(empty)}: no row is left after preparation ("
                            + "; ".join(f"{name}: {counts[name]}" for name in empty) + ")")
        wanted = quotas({s.name: len(d) for s, d in zip(plan.sources, prepared)},
                        {s.name: s.weight for s in plan.sources}, plan.mix_rows)
        parts, tokens = [], 0
        for index, (source, dataset) in enumerate(zip(plan.sources, prepared)):
            indices, passes = sampled_indices(len(dataset), wanted[source.name], plan.seed, index)
            lengths = _lengths(dataset)
            taken = int(lengths[indices].sum()) if lengths is not None else None
            tokens += taken or 0
            counts[source.name].update(taken_rows=len(indices), passes=passes,
                                       **({"tokens_available": int(lengths.sum()), "taken_tokens": taken}
                                          if lengths is not None else {}))
            whole = len(indices) == len(dataset) and passes == 1
            parts.append(dataset if whole and not plan.mixture else dataset.select(indices))
        if plan.mixture:
            common = [name for name in parts[0].column_names if all(name in part.column_names for part in parts)]
            parts = [part.select_columns(common) for part in parts]
            parts = [parts[0]] + [part.cast(parts[0].features) if part.features != parts[0].features else part
                                  for part in parts[1:]]
            rows = concatenate_datasets(parts).shuffle(seed=plan.seed)
        else:
            rows = parts[0]
        rows.save_to_disk(str(partial), num_proc=None)
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    manifest = {"key": plan.key, "kind": RowsPlan.kind, "rows": len(rows), "tokens": tokens if not plan.rl else None,
                "sequence_len": plan.recipe["sequence_len"], "seed": plan.seed, "mix_rows": plan.mix_rows,
                "tokenizer": plan.tokenizer, "rl": plan.rl, "sources": counts,
                "seconds": round(time.time() - started, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entry_dir.write(PreparedDir.MANIFEST, manifest)  # last: the entry is complete
    echo(f"llamantino: prepared {len(rows):,} rows" + (f" ({tokens:,} tokens)" if not plan.rl else "")
         + f" in {entry_dir.path}: " + ", ".join(f"{name} {c['taken_rows']:,}" for name, c in counts.items()))
    return manifest
