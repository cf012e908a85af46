"""The model families' tiny twins: built as their families are, and trained end to end on CPU.

Every ``conf/model/tiny_*.yaml`` but tiny_llama (which the rest of the suite trains) is a twin of a
model family (llamantino/inputs/tiny.py): its architecture at toy size and a tokenizer with the
family's special tokens. Each trains adapt, sft and dpo through the command line with real Axolotl,
a few steps each. The mixture of experts shows what LoRA reaches in it: the default adapter leaves the
experts and the router alone, stage.lora_experts puts LoRA on the fused expert weights,
stage.train_router trains the router in full, and the router's load-balancing loss is logged.
"""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import yaml

from conftest import cli, ok, read_json, run_dir_of
from llamantino.paths import CONF_DIR

TWINS = sorted(p.stem for p in (CONF_DIR / "model").glob("tiny_*.yaml") if p.stem != "tiny_llama")
STAGES = ("adapt", "sft", "dpo")
#: A few short steps: enough for the loss to move and the adapter's B matrices to leave zero.
SHORT = ("stage.max_steps=2", "stage.micro_batch_size=2", "stage.gradient_accumulation_steps=1",
         "stage.saves_per_epoch=null", "stage.save_steps=null", "hardware=cpu", "launcher=local")
SEQUENCE_LEN = {"adapt": 128, "sft": 256, "dpo": 512}
#: The mixture of experts' SFT run reaches the experts and trains the router.
MOE_SFT = ("stage.lora_experts=true", "stage.lora_dropout=0", "stage.train_router=true")


def model_option(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())


def test_every_family_has_a_twin():
    assert {"tiny_mixtral", "tiny_phi3", "tiny_qwen2", "tiny_gemma2"} <= set(TWINS)


# --- the builders -------------------------------------------------------------------------------


def test_tiny_llama_keeps_its_key_and_folder():
    """The tiny Llama's cache key is the formula it always had: every pinned loss depends on it."""
    from llamantino.inputs.tiny import _SEED, SPECIAL_TOKENS, TINY_CONFIG, _sample_files, tiny_model_dir, tiny_model_key

    digest = hashlib.sha256(json.dumps([1, TINY_CONFIG, SPECIAL_TOKENS, _SEED]).encode())
    for path in _sample_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    assert tiny_model_key() == tiny_model_key("tiny_llama") == digest.hexdigest()[:16]
    assert tiny_model_dir().name == f"tiny_llama-{digest.hexdigest()[:16]}"
    assert TINY_CONFIG == {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
                           "vocab_size": 1024, "tie_word_embeddings": False}


def test_each_builder_has_its_own_key_and_a_yaml():
    from llamantino.inputs.tiny import TINY_BUILDERS, tiny_model_dir, tiny_model_key

    assert set(TINY_BUILDERS) == {"tiny_llama", *TWINS}
    assert len({tiny_model_key(name) for name in TINY_BUILDERS}) == len(TINY_BUILDERS)
    for name in TINY_BUILDERS:
        assert tiny_model_dir(name).name == f"{name}-{tiny_model_key(name)}"
        option = model_option(name)
        assert option["builder"] == name and option["name"] == name


#: The real tokenizers' special tokens, roles and BOS handling that each twin copies.
TOKENS = {
    "tiny_mixtral": (["<unk>", "<s>", "</s>", "<pad>"], "<s>", "</s>", "<pad>", True),
    "tiny_phi3": (["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
                  "<s>", "<|endoftext|>", "<|endoftext|>", False),
    "tiny_qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>", "<|endoftext|>", False),
    "tiny_gemma2": (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                    "<bos>", "<eos>", "<pad>", True),
}


@pytest.mark.parametrize("twin", TWINS)
def test_twin_is_built_as_its_family(twin):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llamantino.inputs.tiny import ensure_tiny_model
    from llamantino_plugin.templates import template_info

    option = model_option(twin)
    folder = ensure_tiny_model(twin)
    assert ensure_tiny_model(twin) == folder  # cached
    config = AutoConfig.from_pretrained(str(folder))
    assert config.model_type == option["architecture"]
    assert type(config).__name__.lower().startswith(option["architecture"].replace("_", ""))
    assert (config.num_hidden_layers, config.hidden_size) == (option["num_layers"], option["hidden_size"])
    assert bool(config.tie_word_embeddings) == bool(option.get("tied_embeddings", False))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert type(model.model.layers[0]).__name__ == option["decoder_layer"]
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(option["params_b"] * 1e9, rel=0.05)

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    special, bos, eos, pad, adds_bos = TOKENS[twin]
    assert tokenizer.convert_ids_to_tokens(list(range(len(special)))) == special  # the real order, from id 0
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (bos, eos, pad)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == \
        (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    ids = tokenizer("Ciao, come stai?")["input_ids"]
    assert (ids[0] == tokenizer.bos_token_id) is adds_bos
    # the template's turn end is one token of this tokenizer, as in the real one
    for token in template_info(option["template"]).eot_tokens:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(math.log(len(tokenizer)), abs=1.0)


def test_gemma2_twin_soft_caps_and_mixtral_twin_routes():
    from transformers import AutoConfig

    from llamantino.inputs.tiny import ensure_tiny_model

    gemma = AutoConfig.from_pretrained(str(ensure_tiny_model("tiny_gemma2")))
    assert gemma.attn_logit_softcapping == 50.0 and gemma.final_logit_softcapping == 30.0 and gemma.head_dim == 16
    mixtral = AutoConfig.from_pretrained(str(ensure_tiny_model("tiny_mixtral")))
    option = model_option("tiny_mixtral")
    assert (mixtral.num_local_experts, mixtral.num_experts_per_tok) == \
        (option["experts"]["count"], option["experts"]["per_token"])


def test_unknown_builder_is_refused_naming_the_builders(tmp_path):
    proc = cli("model.builder=tiny_nope", "launcher=dry", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "model.builder='tiny_nope' is unknown" in proc.stderr
    assert all(name in proc.stderr for name in ("tiny_llama", *TWINS))


def test_built_model_source_is_read_back_strictly():
    from llamantino.config.schema import from_plain
    from llamantino.errors import ConfigError
    from llamantino.records.provenance import ModelSource, SourceKind

    source = from_plain(ModelSource, {"kind": "built", "builder": "tiny_mixtral", "path": "/x"}, "model")
    assert source.kind == SourceKind.built and source.builder == "tiny_mixtral"
    for bad in ({"kind": "tiny_llama", "path": "/x"}, {"kind": "built", "path": "/x"},
                {"kind": "hub", "hub_id": "a/b", "builder": "tiny_llama"}):
        with pytest.raises(ConfigError):
            from_plain(ModelSource, bad, "model")


# --- the router loss, in process ----------------------------------------------------------------


def test_moe_aux_loss_is_the_mean_over_the_logging_window():
    """The callback the plugin adds: the hook counts training forwards only, the window's mean is
    stored once per logging step, and neither a dense model nor DPO gets it."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM, TrainerControl

    from llamantino.inputs.tiny import ensure_tiny_model
    from llamantino_plugin.moe import METRIC, moe_aux_loss_callback

    class Trainer:
        def __init__(self, model):
            self.model, self.stored = model, []

        def store_metrics(self, metrics, train_eval="train"):
            self.stored.append((dict(metrics), train_eval))

    model = AutoModelForCausalLM.from_pretrained(str(ensure_tiny_model("tiny_mixtral")))
    trainer = Trainer(model)
    assert moe_aux_loss_callback(SimpleNamespace(rl=None), trainer) is None  # output_router_logits is off
    model.config.output_router_logits = True
    assert moe_aux_loss_callback(SimpleNamespace(rl="dpo"), trainer) is None  # TRL logs it itself
    callback = moe_aux_loss_callback(SimpleNamespace(rl=None), trainer)
    dense = AutoModelForCausalLM.from_pretrained(str(ensure_tiny_model("tiny_llama")))
    assert moe_aux_loss_callback(SimpleNamespace(rl=None), Trainer(dense)) is None

    ids = torch.randint(10, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    seen = [float(model(input_ids=ids[i:i + 1], labels=ids[i:i + 1]).aux_loss.detach()) for i in range(2)]
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # evaluation: not counted
    control = TrainerControl()
    callback.on_step_end(None, None, control)  # the trainer does not log after this step: nothing stored
    assert trainer.stored == []
    control.should_log = True
    callback.on_step_end(None, None, control)
    (metrics, split), = trainer.stored
    assert split == "train" and metrics[METRIC] == pytest.approx(sum(seen) / 2)
    callback.on_step_end(None, None, control)  # an empty window stores nothing
    assert len(trainer.stored) == 1
    callback.on_train_end(None, None, control)


# --- end to end ---------------------------------------------------------------------------------


def train_log_dicts(run_dir) -> list[dict]:
    """The trainer's logged dicts (``{'loss': ...}``) from the run's training log."""
    import ast

    found = []
    for line in (run_dir / "logs" / "train.log").read_text(errors="replace").splitlines():
        start = line.find("{'")
        if start >= 0 and line.rstrip().endswith("}") and "'loss'" in line:
            try:
                found.append(ast.literal_eval(line[start:].strip()))
            except (ValueError, SyntaxError):
                continue
    return [row for row in found if isinstance(row, dict) and "loss" in row]


def adapter_tensors(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "output" / "adapter_model.safetensors"))


def linear_names(model) -> set[str]:
    """Names of the Linear layers LoRA's "every linear layer" reaches (all but the output layer)."""
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}


def family_params():
    for twin in TWINS:
        for stage in STAGES:
            yield pytest.param(twin, stage, id=f"{twin}-{stage}", marks=pytest.mark.xdist_group(f"family_{twin}"))


@pytest.mark.e2e
@pytest.mark.parametrize(("twin", "stage"), list(family_params()))
def test_family_trains(tmp_path, twin, stage):
    import torch
    from transformers import AutoModelForCausalLM

    from llamantino.records.curves import run_metrics

    option = model_option(twin)
    moe = option.get("experts") is not None
    extra = MOE_SFT if moe and stage == "sft" else ()
    # Axolotl 0.19 saves an RL run's model beside its adapter (train.py save_trained_model), and
    # transformers refuses to save tied embeddings trained in full beside an adapter (shared tensors):
    # the twin's tuning leaves them frozen in DPO, and says so.
    tied_dpo = bool(option.get("tied_embeddings")) and stage == "dpo"
    proc = ok(cli(f"model={twin}", f"stage={stage}", f"stage.sequence_len={SEQUENCE_LEN[stage]}", *SHORT, *extra,
                  cwd=tmp_path))
    assert ("ties its embeddings, which a dpo run cannot save" in proc.stdout + proc.stderr) is tied_dpo
    run_dir = run_dir_of(proc)

    # it trained: two logged steps with finite losses, an adapter saved, the run complete
    status = read_json(run_dir / "status.json")
    assert status["state"] == "COMPLETED" and status["losses"]["count"] == 2, status
    logged = train_log_dicts(run_dir)
    assert len(logged) == 2 and all(math.isfinite(float(row["loss"])) for row in logged), logged
    if stage == "dpo":  # the policy starts as the reference: log 2, plus the router loss at the model's weight
        weight = option["experts"]["router_aux_loss_coef"] if moe else 0.0
        first = float(logged[0]["loss"]) - weight * float(logged[0].get("aux_loss", 0.0))
        assert first == pytest.approx(math.log(2), abs=0.002), logged[0]
    provenance = read_json(run_dir / "provenance.json")
    assert provenance["model"]["kind"] == "built" and provenance["model"]["builder"] == twin
    assert (run_dir / "output" / "adapter_model.safetensors").is_file()

    # LoRA reached the modules the model option names (none named: every linear layer, fused ones too)
    config = read_json(run_dir / "output" / "adapter_config.json")
    base = AutoModelForCausalLM.from_pretrained(str(run_dir / "inputs" / "base_model"))
    wanted = set(option.get("lora_target_modules") or linear_names(base))
    assert set(config["target_modules"]) == wanted, config["target_modules"]
    if option["architecture"] == "phi3":
        assert {"qkv_proj", "gate_up_proj"} <= wanted  # the fused projections
    tensors = adapter_tensors(run_dir)
    for name in wanted:
        assert any(f".{name}.lora_B" in key for key in tensors), name
    lora_b = {key: value for key, value in tensors.items() if "lora_B" in key}
    assert any(float(value.abs().sum()) > 0 for value in lora_b.values()), "no LoRA weight moved"
    # the embeddings trained in full beside it (model.tuning); tied ones stay one matrix
    assert any(key.endswith("embed_tokens.weight") for key in tensors) is not tied_dpo
    if option.get("tied_embeddings") and not tied_dpo:
        assert torch.equal(tensors["base_model.model.lm_head.weight"], tensors["base_model.model.model.embed_tokens.weight"])
        assert (run_dir / "axolotl.yaml").read_text().count("peft_ensure_weight_tying: true") == 1
    if option.get("attention"):
        assert f"attn_implementation: {option['attention']['sdpa']}" in (run_dir / "axolotl.yaml").read_text()

    metrics = run_metrics(run_dir)
    if not moe:
        assert "moe_aux_loss" not in metrics and all("moe_aux_loss" not in row for row in logged)
        return

    # --- the mixture of experts --------------------------------------------------------------
    experts = {key: value for key, value in tensors.items() if ".mlp.experts." in key}
    router = [key for key in tensors if ".mlp.gate." in key]
    if stage == "dpo":  # TRL's DPO trainer adds and logs the router loss itself; the plugin stays out
        assert all(math.isfinite(float(row["aux_loss"])) for row in logged), logged
        assert all("moe_aux_loss" not in row for row in logged)
    else:  # the plugin logs the router's load-balancing loss at every logging step, to the trackers too
        assert all(math.isfinite(float(row["moe_aux_loss"])) for row in logged), logged
        assert [step for step, _ in metrics["moe_aux_loss"]] == [1, 2]
    if not extra:  # the default adapter: attention only; the experts and the router stay frozen
        assert not experts and not router, sorted(experts) + router
        assert config["target_parameters"] in ([], None)
        return
    # stage.lora_experts: LoRA on both fused expert weights of every layer, and they learned
    assert sorted(config["target_parameters"]) == sorted(option.get("experts", {}).get(
        "parameters", ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
    layers = option["num_layers"]
    expert_b = {key: value for key, value in experts.items() if "lora_B" in key}
    assert len(expert_b) == 2 * layers and len([key for key in experts if "lora_A" in key]) == 2 * layers, sorted(experts)
    assert all(float(value.abs().sum()) > 0 for value in expert_b.values()), "an expert's LoRA got no gradient"
    # stage.train_router: each layer's router saved in full, and changed from the base's
    assert len(router) == layers, router
    for key in router:
        layer = int(key.split(".layers.")[1].split(".")[0])
        assert not torch.equal(tensors[key], base.model.layers[layer].mlp.gate.weight.detach()), key
