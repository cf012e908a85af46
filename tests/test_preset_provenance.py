"""Every value a preset sets names where it comes from (its ``provenance`` table), and the model cards of
runs from a preset carry that table; the eval dtype option."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import yaml
from conftest import cli, ok, read_json, run_dir_of
from hostile import assert_refused, hostile_folder

from llamantino.config.provenance import (
    load_preset,
    preset_file,
    preset_settings,
    provenance_rows,
    table_of,
    unknown_settings,
    unsourced,
)
from llamantino.errors import ConfigError
from llamantino.orchestrate.sharing import preset_names

PRESETS = preset_names()


def test_there_are_presets_to_check():
    assert len(PRESETS) >= 8


@pytest.mark.parametrize("name", PRESETS)
def test_every_value_a_preset_sets_has_a_source_or_is_marked_unpublished(compose, name):
    preset = load_preset(name)
    settings = preset_settings(preset)
    # the groups the preset picks and its own keys, dotted (the defaults list, name, target and table excluded)
    assert {"model", "data", "stage", "hardware", "launcher"} <= set(settings)
    assert not any(key.split(".")[0] in ("defaults", "experiment", "target", "provenance") for key in settings)
    assert unsourced(preset) == []
    cfg = compose(f"experiment={name}")
    assert cfg.experiment == name and set(settings) <= set(cfg.provenance)  # the table reaches the config
    assert unknown_settings(cfg) == []  # and names only real settings
    for key, row in cfg.provenance.items():
        assert row.status in ("verified", "unpublished", "conflict"), key
        assert row.source.strip(), f"{name}: {key} has no source (say 'ours: ...' for an unpublished choice)"
        if row.status == "conflict":  # the other source's override is a setting of this preset
            assert row.override and row.override.split("=", 1)[0] in cfg.provenance, (name, key, row.override)


def test_the_check_fails_naming_the_setting_whose_source_mark_was_removed(tmp_path):
    text = preset_file("anita_8b_sft").read_text()
    copy = tmp_path / "anita_8b_sft.yaml"
    copy.write_text(text)
    assert unsourced(load_preset(copy)) == []
    # the source of one entry removed (its status stays verified): the check names that setting
    data = yaml.safe_load(text)
    data["provenance"]["stage.learning_rate"].pop("source")
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    assert unsourced(load_preset(copy)) == ["stage.learning_rate: no source, and not marked unpublished"]
    # the whole entry removed
    data = yaml.safe_load(text)
    del data["provenance"]["hardware.slurm.mem"]
    assert unsourced(data) == ["hardware.slurm.mem: no provenance entry"]
    # a group's option is a setting too
    data = yaml.safe_load(text)
    del data["provenance"]["data"]
    assert unsourced(data) == ["data: no provenance entry"]
    # a value with no source may stay only as a documented choice of ours
    data = yaml.safe_load(text)
    data["provenance"]["stage.learning_rate"] = {"status": "unpublished"}
    assert unsourced(data) == []


@pytest.mark.parametrize("entry, needle", [
    ({"source": "x", "status": "disputed"}, "provenance.stage.seed.status='disputed' is not valid"),
    ({"source": "x", "status": "conflict"}, "provenance.stage.seed: status conflict must name the override"),
])
def test_a_bad_table_entry_is_refused_naming_its_setting(entry, needle):
    preset = load_preset("anita_8b_sft")
    preset["provenance"]["stage.seed"] = entry
    with pytest.raises(ConfigError, match=re.escape(needle)):
        table_of(preset)


def test_a_run_config_with_a_bad_status_is_refused():
    from llamantino.config.compose import compose_config
    from llamantino.config.schema import LlamantinoConfig, from_plain, to_plain

    plain = to_plain(compose_config(["experiment=anita_8b_dpo"]))
    plain["provenance"]["stage.lora_seed"]["status"] = "probably"
    with pytest.raises(ConfigError, match=r"provenance\.stage\.lora_seed\.status='probably' is not valid"):
        from_plain(LlamantinoConfig, plain)
    plain["provenance"]["stage.lora_seed"]["status"] = "verified"
    plain["provenance"]["Stage|x"] = {"source": "y"}
    with pytest.raises(ConfigError, match="is not a config key|not a config key"):
        from_plain(LlamantinoConfig, plain)


def test_a_preset_with_a_bad_status_does_not_compose(tmp_path):
    """Through Hydra: a preset (here from a search path) with an unknown status is one error line, exit 2."""
    folder = hostile_folder(tmp_path / "work")
    (folder / "conf" / "experiment").mkdir(parents=True)
    text = preset_file("anita_8b_dpo").read_text().replace("status: conflict", "status: disputed")
    (folder / "conf" / "experiment" / "disputed.yaml").write_text(text)
    assert_refused(folder, "llamantino", [f"hydra.searchpath=[file://{folder / 'conf'}]", "experiment=disputed",
                                          "launcher=dry"], "provenance.data.status='disputed' is not valid")


def test_anita_presets_follow_the_scripts_and_name_the_other_sources(compose):
    sft = compose("experiment=anita_8b_sft")
    assert sft.prompt.script_exact and sft.prompt.system_prompt is None  # the script used no system prompt
    assert (sft.stage.adapter, sft.provenance["stage.adapter"].override) == ("lora", "stage.adapter=qlora")
    dpo = compose("experiment=anita_8b_dpo")
    assert dpo.prompt.script_exact and (dpo.stage.seed, dpo.stage.lora_seed, dpo.stage.max_prompt_len) == (42, 3407, 512)
    assert (dpo.data.name, dpo.provenance["data"].override) == ("orpo_dpo_mix_40k", "data=ultrafeedback_binarized")
    for name in ("anita_8b_sft", "anita_8b_dpo", "anita_8b_adapt"):
        cfg = compose(f"experiment={name}")
        assert (cfg.hardware.slurm.mem, cfg.hardware.slurm.time, cfg.hardware.gpus_per_node) == ("243000M", "4-00:00:00", 1)
    adapt = compose("experiment=anita_8b_adapt")
    unpublished = {key for key, row in adapt.provenance.items() if row.status == "unpublished"}
    assert {"data.split", "data.subset", "stage.sequence_len"} <= unpublished
    assert adapt.provenance["stage.learning_rate"].status == "verified"
    assert "2e-5 for unsupervised ITA" in adapt.provenance["stage.learning_rate"].source


def test_llamantino2_presets_mark_the_values_the_slides_do_not_give(compose):
    for name in ("llamantino2_7b_adapt", "llamantino2_13b_adapt", "llamantino2_chat_7b_sft", "llamantino2_chat_13b_sft",
                 "llamantino2_70b_sft"):
        table = compose(f"experiment={name}").provenance
        for key in ("stage.gradient_accumulation_steps", "stage.weight_decay", "stage.learning_rate",
                    "stage.lr_scheduler", "stage.optimizer", "stage.sample_packing"):
            assert table[key].status == "unpublished", (name, key)
        assert "text normalisation: unpublished" in preset_file(name).read_text()
    for name in ("llamantino2_chat_7b_sft", "llamantino2_chat_13b_sft", "llamantino2_70b_sft"):
        table = compose(f"experiment={name}").provenance
        assert table["stage.train_on_inputs"].status == table["stage.excess_length_strategy"].status == "unpublished"


@pytest.mark.parametrize("name, override", [
    ("anita_8b_sft", "stage.adapter=qlora"), ("anita_8b_sft", "data=ultrachat_200k"),
    ("anita_8b_adapt", "stage.adapter=lora"), ("anita_8b_adapt", "stage.optimizer=paged_adamw_32bit"),
    ("llamantino2_chat_7b_sft", "stage.adapter=qlora"),
])
def test_each_named_override_composes(compose, name, override):
    from llamantino.config.schema import to_plain

    cfg = compose(f"experiment={name}", override, "launcher=dry")
    key, value = override.split("=", 1)
    group, _, setting = key.partition(".")
    assert to_plain(getattr(cfg, group))[setting or "name"] == value
    assert override in {row.override for row in cfg.provenance.values()}


def test_the_provenance_table_may_be_shared_in_a_recipe(compose):
    from llamantino.orchestrate.sharing import unsafe_settings

    assert [key for key, _ in unsafe_settings(compose("experiment=anita_8b_dpo", "eval.dtype=bfloat16"))
            if key.startswith(("provenance.", "eval."))] == []


# --- the model cards ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_script_data_run(tmp_path_factory):
    """The DPO preset with the script's data (its named override), written by the dry launcher."""
    work = tmp_path_factory.mktemp("preset-card")
    return run_dir_of(ok(cli("experiment=anita_8b_dpo", "data=ultrafeedback_binarized", "launcher=dry",
                             "run.output_root=runs", cwd=work)))


def _table(text: str) -> list[list[str]]:
    """The rows of the provenance table, split on the pipes Markdown reads (not the escaped ones)."""
    section = text.split("## Provenance of this preset's values", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in section.splitlines() if line.startswith("|")]


def test_the_run_card_of_a_preset_run_carries_the_table(dpo_script_data_run):
    from huggingface_hub import ModelCard

    from llamantino.job.card import render_card
    from llamantino.records.jobstate import JobState, RunStatus
    from llamantino.records.rundir import RunDir

    run = RunDir(dpo_script_data_run)
    config = yaml.safe_load((dpo_script_data_run / "config.yaml").read_text())
    assert config["provenance"]["data"]["status"] == "conflict"  # the table reaches the run's config.yaml
    text = render_card(run, run.provenance(), RunStatus(state=JobState.COMPLETED))
    card = ModelCard(text)  # huggingface_hub reads it: valid front matter, the table in the text
    assert card.data.datasets == ["HuggingFaceH4/ultrafeedback_binarized"]
    rows = _table(card.text)
    assert rows[0] == ["setting", "value", "source", "status"] and set(rows[1][0]) <= {"-"}
    assert all(len(row) == 4 for row in rows), [row for row in rows if len(row) != 4]
    by_key = {row[0].strip("`"): row for row in rows[2:]}
    assert set(by_key) == set(run.config().provenance)
    data = by_key["data"]
    assert data[1].startswith("ultrafeedback\\_binarized (the command line's data=ultrafeedback\\_binarized")
    assert data[3] == "conflict (other source: data=ultrafeedback\\_binarized)"
    assert "&lt;\\|end\\_of\\_text\\|&gt;" in by_key["prompt.script_exact"][2]  # a | in a cell is escaped
    assert by_key["stage.lora_seed"][1:] == ["3407", "dpo\\_llama3.py f5919e2 get\\_peft\\_model random\\_state=3407",
                                             "verified"]
    assert "(changed on the command line: launcher=dry;" in by_key["launcher"][1]


def test_a_run_from_no_preset_has_no_table(compose):
    from llamantino.config.provenance import provenance_rows as rows
    from llamantino.job.card import provenance_section

    cfg = compose("launcher=dry")
    assert cfg.experiment is None and cfg.provenance == {} and rows(cfg) == []
    assert provenance_section(cfg, []) == []


def test_the_release_card_carries_the_table_of_each_preset_step(compose):
    from llamantino.job.release_card import preset_provenance_lines

    sft = SimpleNamespace(name="sft-anita", config=compose("experiment=anita_8b_sft", "stage.adapter=qlora"),
                          provenance=SimpleNamespace(overrides=["experiment=anita_8b_sft", "stage.adapter=qlora"]))
    merge = SimpleNamespace(name="merge", config=compose("stage=merge"), provenance=SimpleNamespace(overrides=[]))
    lines = preset_provenance_lines([sft, merge])
    assert lines[0] == "## Provenance of this preset's values" and "Step 1. sft-anita:" in lines
    assert not any(line.startswith("Step 2.") for line in lines)
    adapter = next(line for line in lines if line.startswith("| `stage.adapter` |"))
    assert "qlora (the command line's stage.adapter=qlora: this run follows the other source)" in adapter
    assert preset_provenance_lines([merge]) == []
    assert [row.setting for row in provenance_rows(sft.config)][:3] == ["model", "data", "stage"]


# --- eval.dtype -----------------------------------------------------------------------------------


def test_eval_dtype_reaches_lm_eval_and_the_record(compose, tmp_path):
    from llamantino.stages.eval import eval_layout, harness_settings

    board = compose("stage=eval", "eval=ita_leaderboard", "model=llama3_8b_instruct", "hardware=leonardo_booster")
    assert board.eval.dtype is None and harness_settings(board)["dtype"] == "auto"  # the checkpoint's own
    assert harness_settings(compose("stage=eval", "eval=ita_leaderboard", "eval.dtype=bfloat16"))["dtype"] == "bfloat16"
    current = compose("stage=eval", "eval=local_smoke", "eval.dtype=float32")
    assert harness_settings(current) == {"mode": "current", "add_bos_token": None, "dtype": "float32"}
    big = ("stage=eval", "eval=ita_leaderboard", "model=llama2_70b", "hardware=leonardo_booster")
    # 70B: three 64 GB GPUs hold its 16-bit weights, six its float32 ones
    assert (eval_layout(compose(*big)).gpus, eval_layout(compose(*big, "eval.dtype=float32")).gpus) == (3, 6)
    run_dir = run_dir_of(ok(cli("stage=eval", "eval=ita_leaderboard", "model=llama3_8b_instruct", "eval.dtype=bfloat16",
                                "hardware=leonardo_booster", "launcher=slurm", "hardware.slurm.account=IscrC_EXAMPLE",
                                "launcher.submit=false", "run.output_root=runs", cwd=tmp_path)))
    plan = read_json(run_dir / "eval.json")
    assert plan["model_args"] == "pretrained=meta-llama/Meta-Llama-3-8B-Instruct,dtype=bfloat16,add_bos_token=False"
    assert plan["harness"]["dtype"] == "bfloat16" and plan["harness"]["mode"] == "leaderboard"


def test_a_bad_eval_dtype_is_one_error_line(tmp_path):
    work = hostile_folder(tmp_path / "work")
    assert_refused(work, "llamantino", ["stage=eval", "eval=local_smoke", "eval.dtype=fp8", "launcher=dry"],
                   "[auto, bfloat16, float16, float32]")
