"""SFT and DPO data prepared once into the shared cache; weighted mixtures (issue 25).

The key is planned without writing anything; the rows step is run for real (Axolotl's data code and
the plugin's loaders in a child process), and the runs train on the tiny model reading the entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import build, cli, ok, read_json, run_dir_of

SFT = ("model=tiny_llama", "stage=sft", "hardware=cpu")


def rows_plan(compose, tmp_path, *overrides):
    cfg = compose(*SFT, *overrides)
    return build(cfg, tmp_path / "run", overrides, validate=False).inputs.rows


def test_the_key_names_what_changes_the_tokens_and_nothing_else(compose, tmp_path):
    base = rows_plan(compose, tmp_path, "data=it_instructions_sample")
    assert base is not None and base.key == rows_plan(compose, tmp_path, "data=it_instructions_sample").key
    # what a sweep varies without changing the rows: one entry for every point
    for same in ("stage.learning_rate=3e-3", "stage.seed=7", "stage.val_set_size=0.1", "stage.max_steps=5",
                 "stage.lora_r=8"):
        assert rows_plan(compose, tmp_path, "data=it_instructions_sample", same).key == base.key, same
    # what changes the tokens, the masks or the sample: a new entry
    for other in ("stage.sequence_len=512", "prompt.template=llama3", "prompt.system_prompt=Sei un assistente.",
                  "stage.train_on_inputs=true", "stage.bad_rows=skip", "stage.excess_length_strategy=truncate",
                  "data.sample_seed=7"):
        assert rows_plan(compose, tmp_path, "data=it_instructions_sample", other).key != base.key, other


def test_the_key_follows_a_local_files_content(compose, tmp_path):
    from llamantino.paths import SAMPLES_DIR

    copy = tmp_path / "istruzioni.jsonl"
    copy.write_bytes((SAMPLES_DIR / "it_istruzioni.jsonl").read_bytes())
    first = rows_plan(compose, tmp_path, "data=it_instructions_sample", f"data.path={copy}")
    copy.write_bytes(copy.read_bytes() + (SAMPLES_DIR / "it_istruzioni.jsonl").read_bytes().splitlines(True)[0])
    second = rows_plan(compose, tmp_path, "data=it_instructions_sample", f"data.path={copy}")
    assert first.key != second.key
    assert first.sources[0].sha256 != second.sources[0].sha256


def test_a_mixture_is_planned_by_weight_and_recorded(compose, tmp_path):
    plan = rows_plan(compose, tmp_path, "data=it_sft_mix_sample")
    assert [(s.name, s.weight) for s in plan.sources] == [
        ("it_instructions_sample", 0.5), ("it_ultrachat_sample", 0.25), ("it_messages_sample", 0.25)]
    assert plan.mix_rows == 40 and plan.mixture
    other = rows_plan(compose, tmp_path, "data=it_sft_mix_sample", "data.mix_rows=60")
    assert other.key != plan.key
    reweighted = rows_plan(compose, tmp_path, "data=it_sft_mix_sample",
                           "data.sources=[{name: it_instructions_sample, weight: 1}, "
                           "{name: it_ultrachat_sample, weight: 1}, {name: it_messages_sample, weight: 1}]")
    assert reweighted.key != plan.key
    assert [round(s.weight, 3) for s in reweighted.sources] == [0.333, 0.333, 0.333]


@pytest.mark.parametrize("stage, sources, named", [
    ("sft", "[{name: it_instructions_sample, weight: 1}, {name: it_text_sample, weight: 1}]", ["instructions", "text"]),
    ("sft", "[{name: it_instructions_sample, weight: 1}, {name: it_preferences_sample, weight: 1}]",
     ["instructions", "preferences"]),
    ("dpo", "[{name: it_preferences_sample, weight: 1}, {name: it_messages_sample, weight: 1}]",
     ["preferences", "conversations"]),
])
def test_a_mixture_of_incompatible_formats_is_refused_naming_them(tmp_path, stage, sources, named):
    proc = cli("model=tiny_llama", f"stage={stage}", "hardware=cpu", "launcher=dry", f"data.sources={sources}",
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(fmt in line for fmt in named), line
    assert not any(tmp_path.rglob("provenance.json"))  # nothing written


def test_quotas_and_the_seeded_sample():
    import numpy as np

    from llamantino.job.prepare_rows import quotas, sampled_indices

    weights = {"a": 0.5, "b": 0.25, "c": 0.25}
    assert quotas({"a": 48, "b": 12, "c": 12}, weights, 40) == {"a": 20, "b": 10, "c": 10}
    # without mix_rows: the largest total that repeats no row (b and c are the scarce ones)
    assert quotas({"a": 48, "b": 12, "c": 12}, weights, None) == {"a": 24, "b": 12, "c": 12}
    assert quotas({"only": 9}, {"only": 1.0}, None) == {"only": 9}
    first, passes = sampled_indices(12, 10, seed=42, index=1)
    assert passes == 0 and len(set(first.tolist())) == 10 and list(first) == sorted(first)
    assert np.array_equal(first, sampled_indices(12, 10, seed=42, index=1)[0])
    assert not np.array_equal(first, sampled_indices(12, 10, seed=43, index=1)[0])
    repeated, passes = sampled_indices(12, 30, seed=42, index=1)  # asked for more than it has: whole passes
    assert passes == 2 and len(repeated) == 30 and sorted(set(repeated.tolist())) == list(range(12))


@pytest.mark.xdist_group("rows")
def test_a_weighted_three_source_mixture_trains_from_one_prepared_entry(tmp_path, tiny_model):
    proc = ok(cli(*SFT, "data=it_sft_mix_sample", "stage.max_steps=2", "run.output_root=runs", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    recipe = yaml.safe_load((run_dir / "axolotl.yaml").read_text())
    entry = Path(recipe["llamantino_prepared"]).expanduser()
    assert [d["type"] for d in recipe["datasets"]] == [
        "llamantino_plugin.instructions", "llamantino_plugin.conversations", "llamantino_plugin.conversations"]
    manifest = read_json(entry / "manifest.json")
    provenance = read_json(run_dir / "provenance.json")
    assert provenance["data"]["rows"]["key"] == entry.name == manifest["key"]
    # the per-source counts match the weights: 40 rows at 0.5 / 0.25 / 0.25
    report = read_json(run_dir / "output" / "llamantino_data_report.json")
    taken = {name: counts["taken_rows"] for name, counts in report.items()}
    assert taken == {"it_instructions_sample": 20, "it_ultrachat_sample": 10, "it_messages_sample": 10}
    assert manifest["rows"] == 40 and sum(c["taken_tokens"] for c in report.values()) == manifest["tokens"] > 0
    assert all(0 < c["taken_tokens"] <= c["tokens_available"] for c in report.values())
    # the training job read the entry and tokenised nothing
    log = (run_dir / "logs" / "train.log").read_text(errors="replace")
    assert f"read 40 prepared rows from {entry}" in log
    assert "tokenising" not in log and "Tokenizing" not in log
    # a second run with the same key finds the entry made: nothing is tokenised again
    again = ok(cli(*SFT, "data=it_sft_mix_sample", "stage.max_steps=1", "stage.learning_rate=5e-3",
                   "run.output_root=runs", cwd=tmp_path))
    assert f"already prepared in {entry}" in again.stdout and "tokenising" not in again.stdout
    # plain Axolotl in the run directory reads the same entry (the recipe is the whole truth)
    import subprocess
    import sys

    plain = subprocess.run([sys.executable, "-m", "axolotl.cli.preprocess", "axolotl.yaml"], cwd=run_dir,
                           capture_output=True, text=True, timeout=600,
                           env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"})
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    assert f"read 40 prepared rows from {entry}" in plain.stdout + plain.stderr


@pytest.mark.xdist_group("rows")
def test_a_preference_mixture_trains_dpo_from_prepared_rows(tmp_path, tiny_model):
    proc = ok(cli("model=tiny_llama", "stage=dpo", "hardware=cpu", "data=it_dpo_mix_sample", "stage.max_steps=1",
                  "run.output_root=runs", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    report = read_json(run_dir / "output" / "llamantino_data_report.json")
    assert {name: c["taken_rows"] for name, c in report.items()} == {"it_preferences_sample": 16,
                                                                    "it_orpo_mix_sample": 16}
    assert "read 32 prepared rows" in (run_dir / "logs" / "train.log").read_text(errors="replace")


def test_an_entry_whose_data_changed_is_not_prepared_from_it(tmp_path, tiny_model):
    """The key names the data's content: a file edited between writing and preparing is refused."""
    from llamantino.paths import SAMPLES_DIR

    copy = tmp_path / "istruzioni.jsonl"
    copy.write_bytes((SAMPLES_DIR / "it_istruzioni.jsonl").read_bytes())
    proc = ok(cli(*SFT, "data=it_instructions_sample", f"data.path={copy}", "launcher=dry",
                  f"hardware.storage.cache={tmp_path / 'cache'}", "run.output_root=runs", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    copy.write_bytes(copy.read_bytes()[:-200])
    launch = cli(str(run_dir), "--launcher", "local", verb="launch", cwd=tmp_path)
    assert launch.returncode == 2
    line = launch.stderr.strip().splitlines()[-1]
    assert "changed after the run was written" in line and str(copy) in line, line
    assert not (tmp_path / "cache" / "prepared" / read_json(run_dir / "provenance.json")["data"]["rows"]["key"]
                / "manifest.json").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["recipe"].update(trust_remote_code=True), "not data keys"),
    (lambda r: r["sources"][0].update(local="relative/file.jsonl"), "absolute path"),
    (lambda r: r["sources"][0].update(format="text"), "not an SFT or DPO format"),
    (lambda r: r["sources"][0].update(hub_id="org/x; rm -rf ~", local=None), "not a hub dataset id"),
    (lambda r: r.update(key="0" * 32), "not the entry's folder name"),
    (lambda r: r.update(layout=99), "kind/layout"),
])
def test_a_hostile_rows_request_is_refused_before_anything_loads(tmp_path, compose, edit, message):
    """The entry's request is read back from a shared cache: no value in it may add a recipe key,
    name code or a file by a relative path."""
    from llamantino.errors import DataError
    from llamantino.job.prepare_rows import read_request
    from llamantino.records.rundir import PreparedDir

    plan = rows_plan(compose, tmp_path, "data=it_instructions_sample")
    entry = PreparedDir(tmp_path / "prepared" / plan.key)
    entry.path.mkdir(parents=True)
    request = json.loads(json.dumps(plan.as_request()))
    assert read_request(_written(entry, request)).key == plan.key  # the request as planned is accepted
    edit(request)
    with pytest.raises(DataError, match=message):
        read_request(_written(entry, request))


def _written(entry, request):
    (entry.path / "request.json").write_text(json.dumps(request))
    return entry
