"""The prepared sample at real budgets (issue 21): the budget the files hold is always reached whatever
the task count and file sizes, sliced splits, deduplication across the whole sample, storage, reuse.

Entries are planned by the real planner and made by the real prepare job (``run_all``: the same
functions the SLURM array runs, one task after the other), from hub-mirror folders built here.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import shutil
from pathlib import Path

import pytest

from conftest import cli, ok, read_json, run_dir_of
from hub_mirror import _documents, _pool, build_mirror

MC4 = ("datasets", "gsarti", "clean_mc4_it", "clean")
SEQ = 64


def tiny_source():
    from llamantino.inputs.tiny import ensure_tiny_model
    from llamantino.records.provenance import ModelSource, SourceKind

    return ModelSource(kind=SourceKind.built, builder="tiny_llama", path=str(ensure_tiny_model()))


def plan(overrides: list[str], world_size: int = 1):
    from llamantino.config.compose import compose_config
    from llamantino.inputs.corpus import plan_corpus

    return plan_corpus(compose_config(overrides), tiny_source(), world_size)


def prepare(corpus, echo=lambda line: None) -> dict:
    """The request written as the launchers write it, then every prepare step here."""
    from llamantino.job.prepare import run_all

    entry = corpus.entry_dir()
    entry.write(entry.REQUEST, corpus.as_request())
    return run_all(entry, echo=echo)


def write_shards(root: Path, sizes: list[int], seed: int) -> tuple[Path, int]:
    """mC4-style shards holding ``sizes[i]`` documents each; returns the mirror and its exact token
    count under the tiny tokenizer (BOS + text + EOS per document, as the prepare job counts)."""
    from transformers import AutoTokenizer

    from llamantino.inputs.tiny import ensure_tiny_model
    from llamantino_plugin.formats import normalise_text

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_tiny_model()))
    rng, pool = random.Random(seed), _pool()
    folder = root.joinpath(*MC4)
    folder.mkdir(parents=True)
    tokens = 0
    for index, count in enumerate(sizes):
        texts = list(_documents(rng, pool, count))
        tokens += sum(len(ids) + 1 for ids in tokenizer([normalise_text(t) for t in texts])["input_ids"])
        with gzip.open(folder / f"c4-it.tfrecord-{index:05d}-of-01024.json.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"text": text, "url": "https://example.it/"}) + "\n" for text in texts)
    return root, tokens


def corpus_overrides(mirror: Path, cache: Path, *extra: str) -> list[str]:
    return ["data=clean_mc4_it", "stage=adapt", f"stage.sequence_len={SEQ}", "stage.micro_batch_size=1",
            "stage.gradient_accumulation_steps=1",
            f"hardware.storage.hub_mirror={mirror}", f"hardware.storage.cache={cache}", *extra]


def steps_for(files: int, tokens: int, count: int, margin: float = 0.05) -> int:
    """stage.max_steps whose budget makes the planner read ``files`` files (exact approx_tokens)."""
    per_file = tokens / count
    for steps in range(1, 100_000):  # one step is one block: micro batch 1, no accumulation, one rank
        with_margin = math.ceil(steps * (1 + margin))
        if math.ceil(with_margin * SEQ / per_file) == files:
            return steps
    raise AssertionError(f"no budget reads {files} files")


@pytest.fixture(scope="module")
def even(tmp_path_factory):
    """45 shards of similar sizes (55 to 65 documents), as a hub corpus's shards are, and their exact
    token count."""
    rng = random.Random(4)
    sizes = [rng.randint(55, 65) for _ in range(45)]
    mirror, tokens = write_shards(tmp_path_factory.mktemp("even") / "mirror", sizes, seed=2)
    return mirror, tokens, len(sizes)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """45 shards of very different sizes (5 to 90 documents) and their exact token count."""
    rng = random.Random(5)
    sizes = [rng.randint(5, 90) for _ in range(45)]
    mirror, tokens = write_shards(tmp_path_factory.mktemp("uneven") / "mirror", sizes, seed=3)
    return mirror, tokens, len(sizes)


def reached(mirror, tokens, count, tmp_path, files, tasks):
    """Prepare the budget that makes the planner read ``files`` files over ``tasks`` tasks, with
    data.approx_tokens exact; the manifest, or the DataError when the files read hold too little."""
    from llamantino.errors import DataError

    steps = steps_for(files, tokens, count)
    corpus = plan(corpus_overrides(mirror, tmp_path / "cache", f"stage.max_steps={steps}",
                                   f"data.approx_tokens={tokens}", f"data.file_count={count}",
                                   f"hardware.prepare.tasks={tasks}"))
    assert corpus.sources[0].read_files == files and corpus.tasks == tasks
    try:
        return corpus, prepare(corpus)
    except DataError as exc:
        return corpus, exc


# The figures: LLaMAntino-2 adaptation on one Leonardo node read 15 files over 8 tasks, on two
# nodes 29 (the README's pipeline), on three 44; each failed at finish before with the estimate exact.
PRESETS = [(15, 8), (29, 8), (44, 8)]


@pytest.mark.parametrize("files, tasks", PRESETS, ids=[f"{f}files-{t}tasks" for f, t in PRESETS])
def test_the_presets_budgets_are_reached_at_finish(even, tmp_path, files, tasks):
    corpus, manifest = reached(*even, tmp_path, files, tasks)
    assert isinstance(manifest, dict), manifest
    assert manifest["blocks"] >= corpus.blocks and len(manifest["units"]) == files


_rng = random.Random(21)
RANDOM = [(_rng.randint(1, 40), _rng.randint(1, 12)) for _ in range(4)]


@pytest.mark.parametrize("files, tasks", RANDOM, ids=[f"{f}files-{t}tasks" for f, t in RANDOM])
def test_a_budget_the_read_files_hold_is_always_reached(uneven, tmp_path, files, tasks):
    """Before: files dealt by stride, every task stopping at an equal quota, so a task dealt one file
    fewer fell short. Now every unit is read whole, whichever task reads it: the finish fails only
    when the files read truly hold too little (uneven shards can), and then says so with the numbers."""
    corpus, manifest = reached(*uneven, tmp_path, files, tasks)
    if not isinstance(manifest, dict):
        import re

        message = str(manifest)
        have, need = re.search(r"the sample has ([\d,]+) blocks of \d+ but the budget needs ([\d,]+)", message).groups()
        assert int(have.replace(",", "")) < int(need.replace(",", "")) == corpus.blocks
        assert "tokens in a file, these hold" in message
        assert not list((corpus.entry_dir().path / "units").glob("*"))  # nothing of a failed entry stays
        return
    source = manifest["sources"]["clean_mc4_it"]
    assert manifest["blocks"] >= corpus.blocks == manifest["needed_blocks"]
    assert source["files"] == files and len(manifest["units"]) == files
    # everything the files hold is there: all but each unit's last partial block
    assert source["available_blocks"] == sum(u["blocks"] for u in manifest["units"])
    assert source["leftover_tokens"] < files * SEQ
    assert source["tokens"] == source["block_tokens"] + source["leftover_tokens"]


def test_the_sample_does_not_depend_on_tasks_or_processes(even, tmp_path):
    """The same units, byte for byte, prepared by 1 task in 1 process and by 3 tasks of 2 processes."""
    mirror, tokens, count = even
    made = []
    for tasks, cpus in ((1, 1), (3, 2)):
        corpus = plan(corpus_overrides(mirror, tmp_path / f"cache{tasks}", "stage.max_steps=1500",
                                       f"data.approx_tokens={tokens}", f"data.file_count={count}",
                                       f"hardware.prepare.tasks={tasks}", f"hardware.prepare.cpus={cpus}"))
        manifest = prepare(corpus)
        units = corpus.entry_dir().path / "units"
        made.append((corpus.key, manifest["units"],
                     {path.name: path.read_bytes() for path in sorted(units.glob("*.arrow"))}))
    assert made[0][0] == made[1][0] and made[0][1] == made[1][1] and made[0][2] == made[1][2]
    assert len(made[0][2]) > 3


def test_files_that_hold_too_little_are_named_with_the_numbers(uneven, tmp_path):
    mirror, tokens, count = uneven
    # approx_tokens three times too high: the planner reads a third of the files the budget needs
    corpus = plan(corpus_overrides(mirror, tmp_path / "cache", "stage.max_steps=600",
                                   f"data.approx_tokens={tokens * 3}", f"data.file_count={count}"))
    from llamantino.errors import DataError

    with pytest.raises(DataError) as caught:
        prepare(corpus)
    message = str(caught.value)
    assert f"budget needs {corpus.blocks:,}" in message and f"from {corpus.sources[0].read_files} files" in message
    per_file = tokens * 3 / count
    assert f"puts {per_file:,.0f} tokens in a file" in message and "correct data.approx_tokens" in message
    assert not corpus.entry_dir().complete()


def test_a_sliced_split_reads_its_first_rows_in_file_order(tmp_path):
    """anita_8b_adapt's data.split=train[:100000]: before, ignored (50M documents planned). Now the
    first rows of the split, read in file order, are the whole corpus of an epoch-based stage."""
    mirror = build_mirror(tmp_path / "mirror")  # 6 shards of 60 documents
    corpus = plan(corpus_overrides(mirror, tmp_path / "cache", "stage.max_steps=null", "stage.num_epochs=1",
                                   "stage.sample_packing=false", "data.split='train[:100]'"))
    assert corpus.sources[0].rows == (0, 100) and corpus.blocks is None
    manifest = prepare(corpus)
    source = manifest["sources"]["clean_mc4_it"]
    assert source["rows"] == 100 and source["kept"] == manifest["blocks"] == 100  # one document per row
    assert source["read_files"] == ["clean/c4-it.tfrecord-00000-of-01024.json.gz",
                                   "clean/c4-it.tfrecord-00001-of-01024.json.gz"]
    # a slice from the middle
    middle = plan(corpus_overrides(mirror, tmp_path / "cache", "stage.max_steps=null", "stage.sample_packing=false",
                                   "data.split='train[50:130]'"))
    assert prepare(middle)["sources"]["clean_mc4_it"]["rows"] == 80


def test_the_anita_preset_plans_its_100000_documents():
    from llamantino.config.compose import compose_config
    from llamantino.inputs.corpus import plan_corpus
    from llamantino.orchestrate.costs import plan as plan_run
    from llamantino.records.provenance import ModelSource, SourceKind

    cfg = compose_config(["experiment=anita_8b_adapt"])
    corpus = plan_corpus(cfg, ModelSource(kind=SourceKind.hub, hub_id=cfg.model.hub_id), 1)
    mc4 = corpus.sources[0]
    assert mc4.rows == (0, 100_000) and mc4.origin == "hub"
    # 100,000 rows in file order; the registry's 50M rows in 500 files put 100,000 in a file: 3 with margin
    assert mc4.read_files == 3
    planned = plan_run(cfg)
    assert "100000 rows x 1 epochs" in planned["tokens_formula"]


@pytest.mark.parametrize("split, message", [
    ("'train[:10%]'", "percentages are not resolved for corpora"),
    ("validation", "a corpus reads the train files"),
    ("'train[5:5]'", "selects no row"),
    ("'train[:x]'", "is not a split"),
])
def test_a_split_the_corpus_path_cannot_honour_is_refused(tmp_path, split, message):
    mirror = build_mirror(tmp_path / "mirror", mc4_files=1, wiki_files=0)
    proc = cli(*corpus_overrides(mirror, tmp_path / "cache", "stage.max_steps=3", f"data.split={split}"),
               "launcher=dry", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_hub_corpus_with_nothing_bounding_its_download_is_refused(tmp_path):
    proc = cli("data=clean_mc4_it", "stage=adapt", "stage.max_steps=3", "data.approx_tokens=null",
               "data.file_count=null", f"hardware.storage.cache={tmp_path / 'cache'}", "launcher=dry", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "would download every file of gsarti/clean_mc4_it" in proc.stderr
    assert "set data.approx_tokens and data.file_count" in proc.stderr
    assert not (tmp_path / "runs").exists()


def _duplicated_mirror(root: Path) -> tuple[Path, str, str, str]:
    """Four shards; shard 3 repeats a document of shard 0 exactly and one of shard 1 with a word changed."""
    rng, pool = random.Random(8), _pool()
    shards = [list(_documents(rng, pool, 30)) for _ in range(4)]
    exact = shards[0][4]
    near = " ".join(word if i != 6 else "cambiato" for i, word in enumerate(shards[1][7].split()))
    shards[3][10:10] = [exact, near]
    folder = root.joinpath(*MC4)
    folder.mkdir(parents=True)
    for index, texts in enumerate(shards):
        with gzip.open(folder / f"c4-it.tfrecord-{index:05d}-of-01024.json.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"text": text}) + "\n" for text in texts)
    return root, exact, shards[1][7], near


@pytest.mark.parametrize("exact, near", [(True, False), (True, True), (False, True)],
                         ids=["exact", "exact-and-near", "near-only"])
def test_duplicates_are_removed_across_the_whole_sample(tmp_path, exact, near):
    """Before: within a slice only, with every digest of a task in memory. Now keys are sharded
    across tasks and a document is dropped when an earlier document of the sample holds its key."""
    mirror, copied, original, changed = _duplicated_mirror(tmp_path / "mirror")
    corpus = plan(corpus_overrides(mirror, tmp_path / "cache", "stage.max_steps=null", "stage.sample_packing=false",
                                   "hardware.prepare.tasks=3", f"stage.text_near_dedup={str(near).lower()}",
                                   f"stage.text_dedup={str(exact).lower()}"))
    assert corpus.steps == ("scan", "dedup", "task", "finish")
    manifest = prepare(corpus)
    source = manifest["sources"]["clean_mc4_it"]
    assert source["rows"] == 122 and source["duplicates"] == (2 if near else 1)
    assert source["kept"] == manifest["blocks"] == 122 - source["duplicates"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus.tokenizer)
    from datasets import Dataset, concatenate_datasets

    entry = corpus.entry_dir().path
    rows = concatenate_datasets([Dataset.from_file(str(entry / "units" / f"{u['name']}.arrow"))
                                 for u in manifest["units"]])["input_ids"]
    from llamantino_plugin.formats import normalise_text

    def copies(text: str) -> int:  # rows starting with the document's first 40 tokens
        head = tokenizer(normalise_text(text))["input_ids"][:40]
        return sum(row[:40] == head for row in rows)

    assert copies(copied) == 1  # the first occurrence in the sample's (seeded) order stays
    assert copies(original) + copies(changed) == (1 if near else 2)
    assert not (entry / "scan").exists() and not (entry / "dedup").exists()  # intermediate, removed by finish


def test_storage_is_token_ids_in_the_smallest_type(even, tmp_path):
    import pyarrow as pa

    mirror, tokens, count = even
    corpus = plan(corpus_overrides(mirror, tmp_path / "cache", "stage.max_steps=1500",
                                   f"data.approx_tokens={tokens}", f"data.file_count={count}"))
    manifest = prepare(corpus)
    units = list((corpus.entry_dir().path / "units").glob("*.arrow"))
    with pa.memory_map(str(units[0])) as source:
        schema = pa.ipc.open_stream(source).schema
    assert schema.names == ["input_ids"] and schema.field("input_ids").type == pa.list_(pa.uint16())
    stored = sum(path.stat().st_size for path in units)
    held = sum(u["blocks"] for u in manifest["units"]) * SEQ
    assert stored / held < 2.2  # 2 bytes a token and list offsets (was 9.03: int32 ids, labels and a mask)


def test_models_sharing_a_tokenizer_share_entries(tmp_path):
    from llamantino.config.compose import compose_config
    from llamantino.inputs.corpus import plan_corpus
    from llamantino.inputs.tiny import ensure_tiny_model
    from llamantino.records.provenance import ModelSource, SourceKind

    mirror = build_mirror(tmp_path / "mirror", mc4_files=2, wiki_files=0)
    cfg = compose_config(corpus_overrides(mirror, tmp_path / "cache", "stage.max_steps=3"))
    models = {}
    for name, change in (("same", "config.json"), ("other", "tokenizer_config.json")):
        folder = tmp_path / name
        shutil.copytree(ensure_tiny_model(), folder)
        settings = json.loads((folder / change).read_text())
        settings["llamantino_test"] = name  # another model (config) or another tokenizer (its config)
        (folder / change).write_text(json.dumps(settings))
        models[name] = plan_corpus(cfg, ModelSource(kind=SourceKind.path, path=str(folder)), 1).key
    tiny = plan_corpus(cfg, tiny_source(), 1).key
    assert models["same"] == tiny != models["other"]


def test_a_smaller_budget_reads_a_prefix_of_a_larger_entry(tmp_path):
    """A second run with a smaller budget prepares nothing: it takes the first blocks of the entry."""
    mirror = build_mirror(tmp_path / "mirror")
    store = (f"hardware.storage.hub_mirror={mirror}", f"hardware.storage.cache={tmp_path / 'cache'}")
    tiny = ("data=clean_mc4_it", "stage=adapt", f"stage.sequence_len={SEQ}", "stage.micro_batch_size=2",
            "launcher=local", *store)
    larger = ok(cli(*tiny, "stage.max_steps=4", cwd=tmp_path))
    assert "preparing in" in larger.stdout
    (entry,) = (tmp_path / "cache" / "prepared").iterdir()
    smaller = ok(cli(*tiny, "stage.max_steps=2", cwd=tmp_path))
    assert "preparing in" not in smaller.stdout
    assert f"corpus {entry.name[:12]}: " in smaller.stdout and "the first blocks of an entry prepared for a larger" \
        in smaller.stdout
    assert list((tmp_path / "cache" / "prepared").iterdir()) == [entry]
    import yaml

    recipe = yaml.safe_load((run_dir_of(smaller) / "axolotl.yaml").read_text())
    assert recipe["llamantino_prepared"].endswith(entry.name)
    assert recipe["llamantino_prepared_blocks"] == {"clean_mc4_it": math.ceil(2 * 2 * 1.05)}
    report = read_json(run_dir_of(smaller) / "output" / "llamantino_data_report.json")
    assert report["clean_mc4_it"]["blocks"] == 5  # the first 5 blocks, not the entry's
    assert (entry / "last_used").is_file()


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """An entry's request as the planner writes it (nothing prepared)."""
    work = tmp_path_factory.mktemp("planned")
    mirror = build_mirror(work / "mirror", mc4_files=2, wiki_files=0)
    corpus = plan(corpus_overrides(mirror, work / "cache", "stage.max_steps=3"))
    return corpus.as_request()


def _with(request: dict, path: str, value) -> dict:
    damaged = json.loads(json.dumps(request))
    *parents, last = path.split(".")
    here = damaged
    for part in parents:
        here = here[int(part)] if part.isdigit() else here[part]
    here[last] = value
    return damaged


@pytest.mark.parametrize("path, value, needle", [
    ("tasks", 10**9, "tasks=1000000000 is outside 1-4096"),
    ("workers", 0, "workers=0 is outside 1-1024"),
    ("sequence_len", "64", "request.sequence_len='64' must be an integer"),
    ("sources.0.origin", "ftp", "origin 'ftp' is not hub, mirror or folder"),
    ("sources.0.files", ["../../etc/passwd"], "a file name leaves its folder"),
    ("sources.0.rows", [5, 2], "is not a row slice"),
    ("sources.0.read_files", -1, "blocks and read_files are counts"),
    ("sources.0.patterns", "*", "request.sources[0].patterns must be a list"),
    ("extra", 1, "extra is not a config key"),
])
def test_a_damaged_request_is_refused_before_any_step_reads_a_file(planned, tmp_path, path, value, needle):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "request.json").write_text(json.dumps(_with(planned, path, value)))
    proc = cli("task", str(entry), "--index", "0", module="llamantino.job.prepare", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0] and "request.json" in lines[0], proc.stderr
    assert sorted(p.name for p in entry.iterdir()) == ["request.json"]


def test_the_gpu_partition_fallback_is_said(tmp_path):
    corpus = plan(["experiment=llamantino2_7b_adapt", "hardware.prepare.partition=null",
                   f"hardware.storage.cache={tmp_path}"], 12)
    assert any("run on boost_usr_prod, the GPU partition" in note for note in corpus.notes), corpus.notes
    assert not any("GPU partition" in note for note in plan(["experiment=llamantino2_7b_adapt",
                                                              f"hardware.storage.cache={tmp_path}"], 12).notes)
