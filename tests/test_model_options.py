"""What a model option changes in the recipe, at full size and validated by Axolotl (in-process):
mixture-of-experts LoRA targets and router, the attention a model takes in place of the hardware's,
FSDP's wrapping unit, and the refusals of options a model cannot take. The tiny twins train for real
in tests/test_model_families.py."""

from __future__ import annotations

import pytest

from conftest import build, cli

from llamantino.errors import ConfigError
from llamantino.paths import CONF_DIR

MODELS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_models_fsdp_layer_class_and_architecture_exist_in_transformers(compose, model):
    import importlib

    cfg = compose(f"model={model}")
    module = importlib.import_module(f"transformers.models.{cfg.model.architecture}.modeling_{cfg.model.architecture}")
    assert hasattr(module, cfg.model.decoder_layer), (cfg.model.architecture, cfg.model.decoder_layer)
    assert cfg.model.source or cfg.model.builder or cfg.model.family in ("llama2", "llama3", "mistral")


def test_mixtral_trains_lora_on_attention_with_its_router_frozen_and_fsdp_wraps_its_layers(compose, tmp_path):
    run = build(compose("model=mixtral_8x7b", "stage=sft", "hardware=a100_cluster", "launcher=dry"), tmp_path / "r")
    recipe = run.recipe
    assert recipe["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert "lora_target_linear" not in recipe and "lora_target_parameters" not in recipe
    assert "lora_modules_to_save" not in recipe  # the router (mlp.gate) is not trained
    assert recipe["fsdp_config"]["transformer_layer_cls_to_wrap"] == "MixtralDecoderLayer"
    assert recipe["overrides_of_model_config"] == {"output_router_logits": True, "router_aux_loss_coef": 0.02}


def test_mixtral_experts_and_router_are_trained_when_asked(compose, tmp_path):
    cfg = compose("model=mixtral_8x7b", "stage=sft", "hardware=leonardo_booster", "launcher=dry",
                  "stage.lora_experts=true", "stage.train_router=true", "stage.lora_dropout=0")
    recipe = build(cfg, tmp_path / "r").recipe  # validated by Axolotl: lora_target_parameters with dropout 0
    assert recipe["lora_target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    assert recipe["lora_modules_to_save"] == ["mlp.gate"]
    assert recipe["lora_dropout"] == 0.0


@pytest.mark.parametrize("overrides, message", [
    (("model=mixtral_8x7b", "stage.lora_experts=true"), "stage.lora_experts=true puts LoRA on the fused expert weights"),
    (("model=llama3_8b", "stage.lora_experts=true", "stage.lora_dropout=0"), "needs a mixture-of-experts model"),
    (("model=qwen2_5_7b", "stage.train_router=true"), "stage.train_router=true needs a mixture-of-experts model"),
    (("model=mixtral_8x7b", "model.experts.per_token=9"), "model.experts.per_token=9 exceeds model.experts.count=8"),
    (("model=mixtral_8x7b", "model.active_params_b=50"), "model.active_params_b=50 exceeds model.params_b=46.7"),
    (("model=gemma2_9b", "model.attention={sdpa: magic}"), "'magic' is not an attention implementation"),
    (("model=gemma2_9b", "stage=dpo", "stage.lora_modules_to_save=[embed_tokens]"),
     "trains gemma2_9b's tied embeddings beside the adapter, which a dpo run cannot save"),
])
def test_options_a_model_cannot_take_are_refused_in_one_line(tmp_path, overrides, message):
    proc = cli("stage=sft", "hardware=a100_80gb_x1", "launcher=dry", *overrides, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing half-written


@pytest.mark.parametrize("hardware, attention", [("cpu", "eager"), ("a100_cluster", "flash_attention_2")])
def test_gemma2_takes_eager_attention_where_sdpa_would_drop_its_soft_cap(compose, tmp_path, hardware, attention):
    recipe = build(compose("model=gemma2_9b", "stage=sft", f"hardware={hardware}", "launcher=dry"), tmp_path / "r").recipe
    assert recipe["attn_implementation"] == attention
    dense = build(compose("model=qwen2_5_7b", "stage=sft", f"hardware={hardware}", "launcher=dry"), tmp_path / "q").recipe
    assert dense["attn_implementation"] == ("sdpa" if hardware == "cpu" else "flash_attention_2")


def test_a_merge_of_a_mixture_of_experts_saves_no_training_switch(compose, tmp_path):
    from llamantino.render.axolotl import _model_overrides

    model = compose("model=mixtral_8x7b").model
    assert _model_overrides(model, training=False) == {}
    with pytest.raises(ConfigError):
        compose("model=mixtral_8x7b", "model.experts.count=1")


def test_tied_embeddings_trained_beside_the_adapter_stay_tied(compose, tmp_path):
    saved = "stage.lora_modules_to_save=[embed_tokens,lm_head]"
    tied = build(compose("model=gemma2_9b", "stage=sft", "hardware=a100_80gb_x1", "launcher=dry", saved), tmp_path / "g")
    assert tied.recipe["peft_ensure_weight_tying"] is True
    untied = build(compose("model=qwen2_5_7b", "stage=sft", "hardware=a100_80gb_x1", "launcher=dry", saved), tmp_path / "q")
    assert "peft_ensure_weight_tying" not in untied.recipe
