"""Every shipped model x stage x hardware composes, renders and passes Axolotl's validation.

In-process and offline (LitGPT's test_config_hub pattern): the option lists are read from conf/,
so a new YAML file is tested the moment it is added.
"""

from __future__ import annotations

import pytest

from conftest import build
from llamantino.paths import CONF_DIR

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml"))
TRAIN_STAGES = ("adapt", "sft", "dpo")


def prepare(cfg, tmp_path, known=None):
    return build(cfg, tmp_path / "run", known=known)


def test_option_lists_are_not_empty():
    assert {"tiny_llama", "llama2_7b", "llama2_13b", "llama2_70b", "llama3_8b", "llama3_8b_instruct",
            "llama3_1_8b", "mistral_7b"} <= set(MODELS)
    assert {"cpu", "a100_80gb_x1", "leonardo_booster", "local_slurm"} <= set(HARDWARE)


@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize("stage", TRAIN_STAGES)
@pytest.mark.parametrize("model", MODELS)
def test_train_stage_validates(compose, tmp_path, model, stage, hardware):
    cfg = compose(f"model={model}", f"stage={stage}", f"hardware={hardware}", "launcher=dry")
    prepared = prepare(cfg, tmp_path)
    recipe = prepared.recipe
    assert recipe["plugins"] == ["llamantino_plugin.plugin.LlamantinoPlugin"]
    assert recipe["datasets"][0]["type"].startswith("llamantino_plugin.")
    if hardware in ("cpu", "local_slurm"):
        assert recipe["bf16"] is False and recipe.get("lora_mlp_kernel") is False
        assert "fsdp_version" not in recipe
    if "fsdp_config" in recipe:
        assert recipe["fsdp_version"] == 2
    if stage == "dpo":
        assert recipe["rl"] == "dpo" and recipe["rl_beta"] == 0.1


@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize("model", MODELS)
def test_merge_stage_validates(compose, tmp_path, model, hardware):
    """A merge consumes an adapter run (here rendered in memory, as a pipeline does)."""
    adapter_cfg = compose(f"model={model}", "stage=dpo", f"hardware={hardware}", "launcher=dry")
    adapter = prepare(adapter_cfg, tmp_path / "a")
    known = {str((tmp_path / "a" / "run").resolve()): adapter.provenance}
    cfg = compose(f"model={model}", "stage=merge", f"hardware={hardware}", "launcher=dry",
                  f"run.input_adapter={tmp_path / 'a' / 'run'}")
    merged = prepare(cfg, tmp_path / "m", known)
    assert merged.recipe["lora_model_dir"] == "inputs/adapter"
    assert merged.recipe["load_in_4bit"] is False
    assert merged.output == {"kind": "model", "path": "output/merged",
                             "precision": "fp32" if hardware in ("cpu", "local_slurm") else "bf16"}
