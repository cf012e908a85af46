"""Corpus-scale language adaptation: token budgets, the seeded sample, the shared prepared cache, mixtures.

A local folder laid out as the hub (tests/hub_mirror.py) stands in for the hub; the SLURM side
(prepare array -> adapt -> merge -> sft, and a sweep that prepares nothing) is in test_slurm.py.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import cli, ok, read_json, run_dir_of
from hub_mirror import build_mirror

TINY_ADAPT = ("stage=adapt", "stage.max_steps=3", "stage.sequence_len=64", "stage.micro_batch_size=2")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("hub") / "mirror")


def storage(mirror, tmp_path):
    return (f"hardware.storage.hub_mirror={mirror}", f"hardware.storage.cache={tmp_path / 'cache'}")


def test_token_budget_is_steps_times_global_batch_times_sequence():
    from llamantino.config.compose import compose_config
    from llamantino.inputs.corpus import token_budget

    cfg = compose_config(["experiment=llamantino2_7b_adapt"])
    stage = cfg.stage
    assert token_budget(cfg, 12) == stage.max_steps * stage.micro_batch_size * stage.gradient_accumulation_steps * 12 * 1024
    assert token_budget(cfg, 12) == 2_457_600_000  # the published run: 25k x 8 x 12 GPUs x 1024
    epochs = compose_config(["stage=adapt", "stage.max_steps=null"])
    assert token_budget(epochs, 1) is None  # epochs: the whole corpus


def test_hub_download_is_sized_to_the_budget_not_the_corpus():
    from llamantino.config.compose import compose_config
    from llamantino.inputs.corpus import plan_corpus

    cfg = compose_config(["experiment=llamantino2_7b_adapt"])
    from llamantino.records.provenance import ModelSource, SourceKind

    source = ModelSource(kind=SourceKind.hub, hub_id=cfg.model.hub_id)
    plan = plan_corpus(cfg, source, 12)
    mc4 = plan.sources[0]
    per_file = cfg.data.approx_tokens / cfg.data.file_count
    assert mc4.origin == "hub" and mc4.blocks == plan.blocks_with_margin
    assert mc4.read_files == math.ceil(plan.blocks_with_margin * 1024 / per_file) < cfg.data.file_count
    assert plan.entry.startswith("${FAST}/llamantino/prepared/")
    # the same settings give the same key; another seed, sequence length or budget another one
    assert plan_corpus(cfg, source, 12).key == plan.key
    assert plan_corpus(cfg, source, 24).key != plan.key
    other = compose_config(["experiment=llamantino2_7b_adapt", "data.sample_seed=7"])
    assert plan_corpus(other, source, 12).key != plan.key
    # the task count decides who makes which unit, not what the sample holds
    more_tasks = compose_config(["experiment=llamantino2_7b_adapt", "hardware.prepare.tasks=3"])
    assert plan_corpus(more_tasks, source, 12).key == plan.key


def test_sampled_order_is_seeded_and_tasks_split_it_without_overlap():
    from llamantino.job.units import sampled_order, task_units

    names = [f"f{i:03d}" for i in range(50)]
    order = sampled_order(names, 42, "clean_mc4_it")
    assert order == sampled_order(list(reversed(names)), 42, "clean_mc4_it")  # listing order does not matter
    assert order != sampled_order(names, 43, "clean_mc4_it") and sorted(order) == names
    slices = [task_units(order, i, 3) for i in range(3)]
    assert sorted(sum(slices, [])) == names and not set(slices[0]) & set(slices[1])


def test_mixture_prepares_once_trains_and_reports_every_source(mirror, tmp_path):
    args = ("data=it_web_mix", *TINY_ADAPT, *storage(mirror, tmp_path), "launcher=local")
    first = ok(cli(*args, cwd=tmp_path))
    assert "preparing in" in first.stdout
    run = run_dir_of(first)
    recipe = yaml.safe_load((run / "axolotl.yaml").read_text())
    entry = tmp_path / "cache" / "prepared" / recipe["llamantino_prepared"].rsplit("/", 1)[1]
    manifest = read_json(entry / "manifest.json")
    assert set(manifest["sources"]) == {"clean_mc4_it", "wikipedia_it"}
    mc4, wiki = manifest["sources"]["clean_mc4_it"], manifest["sources"]["wikipedia_it"]
    # 3 steps x 2 rows = 6 blocks (+5%), shared 0.8 / 0.2; a budget this small reads few of the files
    assert manifest["needed_blocks"] == 6 and manifest["blocks"] >= 6
    assert mc4["blocks"] > wiki["blocks"] > 0
    assert mc4["files"] < mc4["available_files"] == 6
    assert all("validation" not in name for name in mc4["read_files"])
    assert all(name.endswith(".parquet") for name in wiki["read_files"])
    # the run trained on it and its data report shows both sources
    report = json.loads((run / "output" / "llamantino_data_report.json").read_text())
    assert report["clean_mc4_it"]["blocks"] == mc4["blocks"] and report["wikipedia_it"]["blocks"] == wiki["blocks"]
    provenance = read_json(run / "provenance.json")
    assert [s["name"] for s in provenance["data"]["corpus"]["sources"]] == ["clean_mc4_it", "wikipedia_it"]
    assert provenance["data"]["corpus"]["key"] == entry.name
    # a second run with other optimiser settings shares the entry: nothing is prepared again
    before = {path.name: path.stat().st_mtime_ns for path in (entry / "units").iterdir()}
    second = ok(cli(*args, "stage.learning_rate=1e-3", cwd=tmp_path))
    assert "already prepared" in second.stdout and "preparing in" not in second.stdout
    assert {path.name: path.stat().st_mtime_ns for path in (entry / "units").iterdir()} == before
    assert read_json(entry / "manifest.json")["created"] == manifest["created"]


def test_training_reads_the_prepared_blocks_memory_mapped(mirror, tmp_path):
    proc = ok(cli("data=clean_mc4_it", *TINY_ADAPT, *storage(mirror, tmp_path), "launcher=local", cwd=tmp_path))
    recipe = yaml.safe_load((run_dir_of(proc) / "axolotl.yaml").read_text())
    assert recipe["sample_packing"] is False and "dataset_prepared_path" not in recipe
    from axolotl.utils.dict import DictDefault

    from llamantino_plugin.plugin import _load_prepared

    entry = str(tmp_path / "cache" / "prepared" / recipe["llamantino_prepared"].rsplit("/", 1)[1])
    cfg = DictDefault({"llamantino_prepared": entry, "sequence_len": 64, "micro_batch_size": 2,
                       "gradient_accumulation_steps": 1, "num_epochs": 1, "max_steps": 3})
    meta = _load_prepared(cfg)
    data = meta.train_dataset
    assert data.cache_files and all(f["filename"].startswith(entry) for f in data.cache_files)  # mapped, not copied
    # on disk: token ids only, in the smallest type that holds the vocabulary; read: labels and mask derived
    assert data.column_names == ["input_ids"] and data.features["input_ids"].feature.dtype == "uint16"
    rows = data[:len(data)]
    assert set(rows) == {"input_ids", "attention_mask", "labels"} and len(rows["input_ids"]) == len(data) >= 6
    assert all(len(row) == 64 for row in rows["input_ids"]) and rows["input_ids"] == rows["labels"]
    assert all(mask == [1] * 64 for mask in rows["attention_mask"])
    assert meta.total_num_steps == 3


def test_without_packing_each_document_is_one_row_cut_at_the_sequence_length(mirror, tmp_path):
    """stage.sample_packing=false (the ANITA adaptation script trained unpacked): rows are documents,
    BOS first, never longer than sequence_len; the prepared entry is a different one from the packed."""
    from axolotl.utils.dict import DictDefault

    from llamantino_plugin.plugin import _load_prepared

    runs = {}
    for packing in ("true", "false"):
        proc = ok(cli("data=clean_mc4_it", *TINY_ADAPT, f"stage.sample_packing={packing}", *storage(mirror, tmp_path),
                      "launcher=local", cwd=tmp_path))
        recipe = yaml.safe_load((run_dir_of(proc) / "axolotl.yaml").read_text())
        runs[packing], blocks = recipe["llamantino_prepared"], recipe["llamantino_prepared_blocks"]
    assert runs["true"] != runs["false"]
    entry = str(tmp_path / "cache" / "prepared" / runs["false"].rsplit("/", 1)[1])
    cfg = DictDefault({"llamantino_prepared": entry, "sequence_len": 64, "micro_batch_size": 2,
                       "gradient_accumulation_steps": 1, "num_epochs": 1, "max_steps": 3,
                       "llamantino_prepared_blocks": blocks})
    rows = _load_prepared(cfg).train_dataset["input_ids"]
    from transformers import AutoTokenizer

    from llamantino.inputs.tiny import ensure_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_tiny_model()))
    assert all(row[0] == tokenizer.bos_token_id and len(row) <= 64 for row in rows)
    assert tokenizer.bos_token_id not in [token for row in rows for token in row[1:]]  # never two documents in a row
    assert any(len(row) < 64 for row in rows) or all(row[-1] != tokenizer.eos_token_id for row in rows)
    manifest = read_json(tmp_path / "cache" / "prepared" / runs["false"].rsplit("/", 1)[1] / "manifest.json")
    assert manifest["tokens"] == sum(map(len, rows))


def test_a_budget_larger_than_the_sources_fails_naming_the_shortfall(mirror, tmp_path):
    proc = fails(cli("data=clean_mc4_it", "stage=adapt", "stage.max_steps=5000", "stage.sequence_len=64",
                     "stage.micro_batch_size=8", *storage(mirror, tmp_path), "launcher=local", cwd=tmp_path))
    assert "but the budget needs 40,000" in proc.stderr and "clean_mc4_it" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("data.sources=[{name:nope,weight:1}]", "'nope' is not a registry entry"),
    ("data.sources=[{name:clean_mc4_it,weight:0}]", "weights must be positive"),
    ("data.sources=[{name:it_ultrachat_sample,weight:1}]", "a corpus mixes text sources only"),
    ("data.budget_margin=-1", "data.budget_margin=-1"),
])
def test_bad_mixtures_are_refused_in_one_line(mirror, tmp_path, override, message):
    proc = fails(cli("data=it_web_mix", *TINY_ADAPT, *storage(mirror, tmp_path), "launcher=dry", override, cwd=tmp_path))
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_corpus_is_for_language_adaptation(mirror, tmp_path):
    proc = fails(cli("data=clean_mc4_it", "stage=sft", *storage(mirror, tmp_path), "launcher=dry", cwd=tmp_path))
    assert "trains on" in proc.stderr and "data=clean_mc4_it" in proc.stderr


def test_offline_slurm_without_a_download_partition_refuses_a_hub_corpus(tmp_path):
    proc = fails(cli("data=clean_mc4_it", *TINY_ADAPT, "hardware=local_slurm", "launcher=slurm",
                     f"hardware.storage.cache={tmp_path / 'cache'}", cwd=tmp_path))
    assert "hardware.prepare.download_partition" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_an_unset_cache_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("FAST", raising=False)
    proc = fails(cli("data=clean_mc4_it", *TINY_ADAPT, "launcher=local", "hardware.storage.cache=\\${FAST}/llamantino",
                     cwd=tmp_path))
    assert "hardware.storage.cache" in proc.stderr and "not set" in proc.stderr


def test_prepare_scripts_quote_every_value(mirror, tmp_path):
    from llamantino.config.compose import compose_config
    from llamantino.render.sbatch import prepare_script

    cfg = compose_config(["hardware=leonardo_booster", "hardware.slurm.account=PRJ"])
    fetch = prepare_script(cfg, "fetch", "/fast/x y/prepared/k", "k" * 32)
    task = prepare_script(cfg, "task", "/fast/x y/prepared/k", "k" * 32, tasks=8)
    assert "#SBATCH --partition=lrd_all_serial" in fetch and "HF_HUB_OFFLINE" not in fetch
    assert "#SBATCH --array=0-7" in task and "#SBATCH --partition=dcgp_usr_prod" in task  # CPUs, not GPU nodes
    assert "export HF_HUB_OFFLINE=1" in task and "export RAYON_NUM_THREADS=56" in task
    assert "cd '/fast/x y/prepared/k'" in task and 'export HF_HOME="${WORK}"/hf_home' in task
    bad = compose_config(["hardware=leonardo_booster", "hardware.prepare.partition='a;b'"])
    from llamantino.errors import ConfigError

    with pytest.raises(ConfigError, match="hardware.prepare.partition"):
        prepare_script(bad, "task", "/x", "k" * 32, tasks=2)


def fails(proc):
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def test_a_written_corpus_run_starts_only_once_its_corpus_is_prepared(mirror, tmp_path):
    run = run_dir_of(ok(cli("data=clean_mc4_it", *TINY_ADAPT, *storage(mirror, tmp_path), "launcher=dry", cwd=tmp_path)))
    proc = fails(cli(str(run), "--launcher", "local", verb="launch", cwd=tmp_path))
    assert "not prepared" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
