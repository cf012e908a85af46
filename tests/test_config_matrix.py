"""Every shipped model x stage x hardware composes, renders and passes its stage's validation.

In-process and offline (LitGPT's test_config_hub pattern): the option lists are read from conf/,
so a new YAML file, a new stage included, is tested the moment it is added. A stage that reads an
earlier run (merge reads an adapter) gets one built in memory first, as a pipeline does.
"""

from __future__ import annotations

import pytest

from conftest import build
from llamantino.paths import CONF_DIR

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml"))
STAGES = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))


def test_option_lists_are_not_empty():
    assert {"tiny_llama", "llama2_7b", "llama2_13b", "llama2_70b", "llama3_8b", "llama3_8b_instruct",
            "llama3_1_8b", "mistral_7b"} <= set(MODELS)
    assert {"cpu", "a100_80gb_x1", "leonardo_booster", "local_slurm"} <= set(HARDWARE)
    assert {"adapt", "sft", "dpo", "merge", "eval"} <= set(STAGES)


def upstream(compose, tmp_path, stage_cfg, model, hardware):
    """(overrides, known runs) giving a stage the earlier run it reads, built in memory."""
    from llamantino.stages import stage_for

    stage = stage_for(stage_cfg)
    if stage.input_key != "input_adapter" and stage.task != "release":  # a release needs a trained run
        return [], None
    adapter = build(compose(f"model={model}", "stage=dpo", f"hardware={hardware}", "launcher=dry"), tmp_path / "a")
    return [f"run.{stage.input_key}={tmp_path / 'a'}"], {str((tmp_path / "a").resolve()): adapter.provenance}


@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("model", MODELS)
def test_stage_validates(compose, tmp_path, model, stage, hardware):
    picked = (f"model={model}", f"stage={stage}", f"hardware={hardware}", "launcher=dry")
    extra, known = upstream(compose, tmp_path, compose(*picked), model, hardware)
    prepared = build(compose(*picked, *extra), tmp_path / "run", known=known)
    assert prepared.stage.plan_file in prepared.files  # what the job runs is written with the run
    assert prepared.provenance.stage_type == prepared.stage.task
    recipe = prepared.recipe
    if recipe is not None:
        assert recipe["plugins"] == ["llamantino_plugin.plugin.LlamantinoPlugin"]
        if hardware in ("cpu", "local_slurm"):
            assert recipe["bf16"] is False and "fsdp_version" not in recipe
        if "fsdp_config" in recipe:
            assert recipe["fsdp_version"] == 2
    if prepared.stage.checkpoints:  # a training stage
        assert recipe["datasets"][0]["type"].startswith("llamantino_plugin.")
        if hardware in ("cpu", "local_slurm"):
            assert recipe.get("lora_mlp_kernel") is False
    if stage == "dpo":
        assert recipe["rl"] == "dpo" and recipe["rl_beta"] == 0.1
    if stage == "merge":
        assert recipe["lora_model_dir"] == "inputs/adapter" and recipe["load_in_4bit"] is False
        assert (prepared.output.kind, prepared.output.path, prepared.output.precision) == \
            ("model", "output/merged", "fp32" if hardware in ("cpu", "local_slurm") else "bf16")
