"""Render the composed config into one Axolotl recipe: a pure function, config in, dict out.

It encodes Axolotl 0.19 semantics instead of hoping: FSDP is always ``fsdp_version: 2``; on CPU
the Triton LoRA kernels are off and precision is fp32; packing only where attention is
flash_attention_2 (cross-sample masking needs it); the plugin's keys are declared so Axolotl keeps
them; paths are relative to the run directory so the recipe is the same on every machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llamantino.errors import ConfigError
from llamantino.inputs.resolve import Inputs
from llamantino.config.method import Method
from llamantino.records.rundir import RunDir, StudyDir
from llamantino.records.provenance import RunOutput
from llamantino.config.schema import LlamantinoConfig, Tracker, TrackerMode
from llamantino_plugin.formats import CORPUS_FORMAT, Encoding, dataset_entries, format_spec

PLUGIN = "llamantino_plugin.plugin.LlamantinoPlugin"
# Optimizers that need CUDA (fused kernels, bitsandbytes paging or 8-bit states) and their CPU equivalent.
CUDA_ONLY_OPTIMIZER = ("fused", "paged", "8bit", "bnb")
CPU_OPTIMIZER = "adamw_torch"
# The module names of the input and output embeddings (one matrix where model.tied_embeddings).
TIED_EMBEDDINGS = ("embed_tokens", "lm_head")


def optimizer_for(stage, hw) -> str:
    """The stage's optimizer, or its CPU equivalent when it needs CUDA and the hardware has none."""
    name = stage.optimizer
    if not hw.gpu and any(part in name for part in CUDA_ONLY_OPTIMIZER):
        return CPU_OPTIMIZER
    return name


def _precision(hw) -> dict:
    if not hw.gpu:
        return {"bf16": False, "fp16": False, "tf32": False}
    return {"bf16": bool(hw.bf16), "fp16": not hw.bf16, "tf32": bool(hw.tf32)}


def _attention(cfg: LlamantinoConfig) -> str:
    """The hardware's attention implementation, or the one the model takes in its place (model.attention)."""
    wanted = str(cfg.hardware.attn_implementation)
    return str(cfg.model.attention.get(wanted, wanted))


def _lora_targets(stage, model) -> dict:
    """Where LoRA goes: the stage's modules, else the model's, else every linear layer; a mixture of
    experts adds its fused expert weights (stage.lora_experts) and trains its router in full
    (stage.train_router). The router is no Linear, so "every linear layer" never reaches it."""
    keys: dict[str, Any] = {}
    modules = stage.lora_target_modules or model.lora_target_modules
    if modules:
        keys["lora_target_modules"] = list(modules)
    else:
        keys["lora_target_linear"] = True
    if (stage.lora_experts or stage.train_router) and model.experts is None:
        flag = "stage.lora_experts" if stage.lora_experts else "stage.train_router"
        raise ConfigError(f"{flag}=true needs a mixture-of-experts model, and {model.name} has no experts "
                          "(model.experts); drop it or choose an MoE model (model=mixtral_8x7b)")
    if stage.lora_experts:
        if stage.lora_dropout:
            raise ConfigError(f"stage.lora_experts=true puts LoRA on the fused expert weights, where PEFT takes no "
                              f"dropout (stage.lora_dropout={stage.lora_dropout:g}); set stage.lora_dropout=0")
        keys["lora_target_parameters"] = list(model.experts.parameters)
    saved = list(stage.lora_modules_to_save or [])
    if stage.train_router and model.experts.router not in saved:
        saved.append(model.experts.router)
    if saved:
        keys["lora_modules_to_save"] = saved
        if model.tied_embeddings and set(TIED_EMBEDDINGS) & set(saved):
            if stage.rl:
                raise ConfigError(
                    f"stage.lora_modules_to_save={saved} trains {model.name}'s tied embeddings beside the adapter, which a "
                    f"{stage.rl} run cannot save (Axolotl 0.19 saves its whole model too, and transformers refuses the "
                    f"wrapped shared matrix); leave out {', '.join(sorted(set(TIED_EMBEDDINGS) & set(saved)))}")
            keys["peft_ensure_weight_tying"] = True  # one shared matrix stays one when trained beside the adapter
    return keys


def _adapter_keys(stage, model, adapter: str | None, cpu: bool) -> dict:
    if adapter is None:
        if stage.lora_experts or stage.train_router:
            raise ConfigError("stage.lora_experts and stage.train_router choose what a LoRA adapter trains; this stage "
                              "trains every weight (stage.adapter=null): drop them, or set stage.adapter=lora")
        return {}
    keys: dict[str, Any] = {"adapter": adapter}
    if adapter == "qlora":
        keys["load_in_4bit"] = True
    keys.update(lora_r=stage.lora_r, lora_alpha=stage.lora_alpha, lora_dropout=float(stage.lora_dropout))
    keys.update(_lora_targets(stage, model))
    if stage.use_rslora:
        keys["peft_use_rslora"] = True
    if cpu:  # the auto-enabled Triton LoRA kernels assert CUDA
        keys.update(lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False, lora_embedding_kernel=False)
    return keys


def _model_overrides(model, training: bool) -> dict:
    """Values set on the loaded model's config (Axolotl's ``overrides_of_model_config``).

    RoPE scaling: Axolotl 0.19's top-level ``rope_scaling`` key is deprecated (refused); transformers 5
    stores the value as the whole ``rope_parameters``, so the checkpoint's ``rope_theta`` goes with it
    (else 10000 is used). A mixture of experts returns its router logits in training, so the
    load-balancing loss is added to the loss (weighted by router_aux_loss_coef) and logged by the plugin."""
    overrides: dict[str, Any] = {}
    if model.rope_scaling is not None:
        overrides["rope_scaling"] = {"rope_type": str(model.rope_scaling.type), "factor": float(model.rope_scaling.factor),
                                     "rope_theta": float(model.rope_theta)}
    if model.experts is not None and training:  # a merged model's config is saved as loaded: never in training mode
        overrides.update(output_router_logits=True, router_aux_loss_coef=float(model.experts.router_aux_loss_coef))
    return {"overrides_of_model_config": overrides} if overrides else {}


def _fsdp(model) -> dict:
    return {
        "fsdp_version": 2,
        "fsdp_config": {
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": model.decoder_layer,
            # Intermediate checkpoints sharded (every rank writes its part, nothing gathered on one);
            # the final model gathered in full, so merge, eval and sharing read one folder.
            "state_dict_type": "SHARDED_STATE_DICT",
            "final_state_dict_type": "FULL_STATE_DICT",
            "reshard_after_forward": True,
            "offload_params": False,
            "cpu_ram_efficient_loading": True,
        },
    }


def _corpus_keys(cfg: LlamantinoConfig, inputs: Inputs) -> dict:
    """A prepared corpus: its sources named for Axolotl's validation, the entry read memory-mapped."""
    plan, corpus = inputs.corpus, format_spec(CORPUS_FORMAT)
    entries, specs = [], []
    for source in plan.sources:
        entry: dict[str, Any] = {"path": source.hub_id or source.name}
        if source.subset:
            entry["name"] = source.subset
        entries.append({**entry, "split": source.split, "type": corpus.loader_type})
        specs.append({**entry, "format": str(corpus.format),
                      **({"columns": dict(source.columns)} if source.columns else {}),
                      **({} if source.normalize else {"normalize": False})})  # prepared as read
    return {"llamantino_bad_rows": str(cfg.stage.bad_rows), "llamantino_datasets": specs, "datasets": entries, "llamantino_prepared": plan.entry,
            **({"llamantino_prepared_blocks": plan.taken_blocks()} if plan.taken_blocks() else {})}


def _script_exact(cfg: LlamantinoConfig, fmt: str) -> bool:
    """Script-exact mode reproduces the ANITA scripts: SFT over rows a Llama-3 chat template encodes
    as a chat, trained on every token, or DPO over preference pairs."""
    from llamantino_plugin.templates import template_info

    info = template_info(cfg.template) if cfg.template else None
    spec = format_spec(fmt)
    sft = spec.encoding_with(info.kind if info else None) is Encoding.chat and not cfg.stage.rl
    dpo = spec.pairs and str(cfg.stage.rl) == "dpo"
    if info is None or info.kind != "chat" or info.family != "llama3" or not (sft or dpo):
        raise ConfigError(f"prompt.script_exact=true reproduces the ANITA SFT and DPO scripts: it needs a Llama-3 chat "
                          f"template (anita, llama3) and SFT chat rows or DPO pairs; this stage has {fmt} data, "
                          f"template {cfg.template!r} and rl={cfg.stage.rl}")
    if sft and not cfg.stage.train_on_inputs:
        raise ConfigError("prompt.script_exact=true: the ANITA SFT script trained on every token (SFTTrainer with "
                          "dataset_text_field); set stage.train_on_inputs=true or prompt.script_exact=false")
    return True


def plugin_data_keys(cfg: LlamantinoConfig) -> dict:
    """The plugin's keys of a stage's data: template, system prompt, bad-row policy, script-exact mode.

    Text (a language adaptation) names no template: it trains on no format, and the trained tokenizer
    keeps the input model's own chat template, or none, as the released base models."""
    keys: dict[str, Any] = {}
    if not format_spec(str(cfg.data.format)).corpus:
        keys["llamantino_template"] = cfg.template
    keys["llamantino_bad_rows"] = str(cfg.stage.bad_rows)
    if cfg.prompt.system_prompt is not None and "llamantino_template" in keys:
        keys["llamantino_system_prompt"] = cfg.prompt.system_prompt
    if cfg.prompt.script_exact:
        keys["llamantino_script_exact"] = _script_exact(cfg, str(cfg.data.format))
    return keys


def packs(cfg: LlamantinoConfig) -> bool:
    """Whether the recipe packs rows (Axolotl's multipack needs flash attention; DPO never packs)."""
    return bool(cfg.stage.sample_packing) and _attention(cfg) == "flash_attention_2" and not cfg.stage.rl


def excess_length(cfg: LlamantinoConfig) -> str:
    """What the loader does with a row over sequence_len: the stage's strategy; script-exact SFT
    truncates, keeping a long row's first tokens as TRL 0.8.5's SFTTrainer did."""
    return "truncate" if cfg.prompt.script_exact and not cfg.stage.rl else str(cfg.stage.excess_length_strategy)


def rows_recipe_keys(cfg: LlamantinoConfig) -> dict:
    """The keys the renderer decides that shape prepared rows (part of their key)."""
    return {**plugin_data_keys(cfg), "sample_packing": packs(cfg), "excess_length_strategy": excess_length(cfg)}


def _dataset_entry(data: dict) -> tuple[dict, dict]:
    """(the ``datasets`` entry, the ``llamantino_datasets`` entry) of one resolved source."""
    return dataset_entries(data["recipe_path"], data["format"], split=data["split"], subset=data["subset"],
                           revision=data.get("revision"), local=bool(data.get("local")), columns=data["columns"])


def _rows_keys(cfg: LlamantinoConfig, inputs: Inputs) -> dict:
    """Prepared rows: each source named for Axolotl's validation, the entry read memory-mapped."""
    plan = inputs.rows
    pairs = [dataset_entries(s.recipe_path, s.format, split=s.split, subset=s.subset, revision=s.revision,
                             local=bool(s.local), columns=s.columns) for s in plan.sources]
    return {**plugin_data_keys(cfg), "llamantino_datasets": [described for _, described in pairs],
            "datasets": [entry for entry, _ in pairs], "llamantino_prepared": plan.entry}


def _data_keys(cfg: LlamantinoConfig, inputs: Inputs) -> dict:
    if inputs.corpus is not None:
        return _corpus_keys(cfg, inputs)
    if inputs.rows is not None:
        return _rows_keys(cfg, inputs)
    stage = cfg.stage  # local text, tokenised by the run itself
    entry, described = _dataset_entry(inputs.data)
    if not inputs.data.get("normalize", True):  # data.normalize=false: the documents as read
        described["normalize"] = False
    keys = plugin_data_keys(cfg)
    keys.update(llamantino_text_min_chars=stage.text_min_chars, llamantino_text_dedup=stage.text_dedup)
    keys.update(llamantino_datasets=[described], datasets=[entry], dataset_prepared_path=RunDir.PREPARED)
    return keys


def tracker_mode(cfg: LlamantinoConfig) -> str:
    """online or offline: ``tracking.mode``, where ``auto`` follows whether the hardware has network."""
    mode = cfg.tracking.mode
    return ("offline" if cfg.hardware.offline else "online") if mode == TrackerMode.auto else str(mode)


def _tracking(cfg: LlamantinoConfig) -> dict:
    """Axolotl's keys for the chosen tracker (secrets stay in the environment). The run's name, group and
    tags are the job's environment (stages/base.py job_env): they depend on where the run is written.
    Whether the tracker can work where the job starts is the train stage's validation."""
    from llamantino.config.tracking import default_mlflow_uri
    from llamantino.inputs.corpus import expand

    tracking, name = cfg.tracking, cfg.tracking.name
    if name == Tracker.tensorboard:
        return {"use_tensorboard": True}
    # The tracker's run id, kept in the run directory: a requeued or resumed job continues the same run.
    record = {"llamantino_tracking_record": RunDir.TRACKING_RUN}
    if name == Tracker.wandb:
        keys = {"wandb_project": tracking.project, "wandb_mode": tracker_mode(cfg)}
        if tracking.entity:
            keys["wandb_entity"] = tracking.entity
        return {**keys, **record}
    if name == Tracker.mlflow:
        uri = tracking.uri or default_mlflow_uri(Path(expand(cfg.run.output_root, "run.output_root")))
        return {"use_mlflow": True, "mlflow_tracking_uri": uri, "mlflow_experiment_name": tracking.project, **record}
    return {}


def adapter_fallback(stage, method: Method) -> bool:
    """Whether a stage that asked for full fine-tuning trains an adapter instead (its adapter_learning_rate applies)."""
    return stage.adapter is None and method.adapter is not None


def warmup_steps_for(stage) -> int | None:
    """``stage.warmup_steps``, or a tenth of the run (rounded down) when the warm-up would last the whole
    run (``stage.max_steps`` or longer): a short smoke run then trains at its learning rate. An epoch-based
    run's length is not known before its data is tokenised, so its warm-up is kept."""
    steps = stage.warmup_steps
    if steps is not None and stage.max_steps is not None and steps >= stage.max_steps:
        return stage.max_steps // 10  # 0 (no warm-up) below 10 steps; Axolotl reads 0 as none
    return steps


def unused_stage_keys(stage, method: Method, hw) -> set[str]:
    """The stage settings this run's recipe does not read (their value changes nothing): the renderer's
    own conditions, so a notice names a setting only where it applies."""
    unused = set()
    if method.adapter is None:
        unused |= {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save",
                   "use_rslora", "lora_experts", "train_router"}
    if not adapter_fallback(stage, method):
        unused.add("adapter_learning_rate")
    if hw.gpu or stage.adapter is not None:
        unused.add("cpu_adapter")
    if stage.max_steps is not None:
        unused.add("num_epochs")
    if stage.warmup_steps is not None:
        unused.add("warmup_ratio")
    if not stage.rl:
        unused |= {"rl_beta", "max_prompt_len"}
    if stage.save_steps is not None:
        unused.add("saves_per_epoch")
    return unused


def _schedule(stage, fell_back: bool) -> dict:
    keys: dict[str, Any] = {
        "micro_batch_size": stage.micro_batch_size,
        "gradient_accumulation_steps": stage.gradient_accumulation_steps,
    }
    if stage.max_steps is not None:
        keys["max_steps"] = stage.max_steps
    else:
        keys["num_epochs"] = float(stage.num_epochs)
    rate = stage.adapter_learning_rate if fell_back and stage.adapter_learning_rate else stage.learning_rate
    keys.update(learning_rate=float(rate), lr_scheduler=str(stage.lr_scheduler))
    if stage.warmup_steps is not None:
        keys["warmup_steps"] = warmup_steps_for(stage)
    elif stage.warmup_ratio is not None:
        keys["warmup_ratio"] = float(stage.warmup_ratio)
    keys.update(weight_decay=float(stage.weight_decay), max_grad_norm=float(stage.max_grad_norm))
    return keys


def _saving(stage, resumable: bool) -> dict:
    keys: dict[str, Any] = {"logging_steps": stage.logging_steps}
    if stage.save_steps is not None:
        keys["save_steps"] = stage.save_steps
    elif stage.saves_per_epoch is not None:
        keys["saves_per_epoch"] = stage.saves_per_epoch
    else:
        keys["save_strategy"] = "no"
    if stage.save_total_limit is not None and keys.get("save_strategy") != "no":
        keys["save_total_limit"] = stage.save_total_limit
    if keys.get("save_strategy") != "no" or resumable:
        # A relaunched failed or cancelled run (launch <run>) resumes from its newest complete checkpoint;
        # a new run directory has none, so a first start is unaffected.
        keys["auto_resume_from_checkpoints"] = True
    if resumable:  # preemption: the sbatch trap asks for a checkpoint; a requeued job resumes from it
        keys["dynamic_checkpoint"] = {"enabled": True, "check_interval": 1}
    return keys


def _recipe_start(cfg: LlamantinoConfig, inputs: Inputs, training: bool = False) -> dict[str, Any]:
    recipe: dict[str, Any] = {"base_model": inputs.base_model}
    if inputs.base_model_revision:
        recipe["revision_of_model"] = inputs.base_model_revision
    recipe.update(_model_overrides(cfg.model, training))
    recipe["plugins"] = [PLUGIN]
    return recipe


def render_merge_recipe(cfg: LlamantinoConfig, inputs: Inputs, adapter: RunOutput) -> dict:
    """The Axolotl recipe of ``merge-lora``: the adapter into its base, loaded in 16 bits (never 4).
    The merged model keeps the template the adapter was trained in (not the merge config's default)."""
    recipe = _recipe_start(cfg, inputs)
    template = adapter.template or cfg.template
    recipe.update(llamantino_template=template, adapter="lora", lora_model_dir=inputs.adapter,
                  load_in_4bit=False, load_in_8bit=False, output_dir=RunDir.OUTPUT,
                  learning_rate=float(cfg.stage.learning_rate), **_precision(cfg.hardware))
    if adapter.template and adapter.system_prompt is not None:
        recipe["llamantino_system_prompt"] = adapter.system_prompt
    elif not adapter.template and cfg.prompt.system_prompt is not None:
        recipe["llamantino_system_prompt"] = cfg.prompt.system_prompt
    # merge-lora reads no data, but Axolotl validates only recipes that name some: the adapter's.
    recipe.update(inputs.adapter_datasets)
    return recipe


def render_train_recipe(cfg: LlamantinoConfig, method: Method, inputs: Inputs) -> dict:
    """The Axolotl recipe of a training stage (a plain dict, key order = file order)."""
    stage, hw = cfg.stage, cfg.hardware
    cpu = not hw.gpu
    resumable = cfg.launcher.requeue
    recipe = _recipe_start(cfg, inputs, training=True)
    recipe.update(_data_keys(cfg, inputs))
    recipe["output_dir"] = RunDir.OUTPUT
    recipe["sequence_len"] = stage.sequence_len
    attention = _attention(cfg)
    # A prepared corpus is already packed: every row is one full sequence_len block.
    packing = packs(cfg) and inputs.corpus is None
    recipe["sample_packing"] = packing
    if packing:
        recipe["pad_to_sequence_len"] = True
    recipe["excess_length_strategy"] = excess_length(cfg)
    recipe["train_on_inputs"] = bool(stage.train_on_inputs)
    recipe.update(_adapter_keys(stage, cfg.model, method.adapter, cpu))
    if stage.rl:
        recipe["rl"] = str(stage.rl)
        recipe["rl_beta"] = float(stage.rl_beta)
        if stage.max_prompt_len is not None:
            recipe["max_prompt_len"] = stage.max_prompt_len
    recipe.update(_schedule(stage, fell_back=adapter_fallback(stage, method)))
    recipe["optimizer"] = optimizer_for(stage, hw)
    recipe["gradient_checkpointing"] = bool(stage.gradient_checkpointing) and not cpu
    recipe.update(_precision(hw))
    recipe["attn_implementation"] = attention
    if method.distributed == "fsdp":
        recipe.update(_fsdp(cfg.model))
    if stage.val_set_size:
        recipe["val_set_size"] = float(stage.val_set_size)
    recipe.update(_saving(stage, resumable))
    recipe.update(_tracking(cfg))
    recipe["seed"] = stage.seed
    if stage.lora_seed is not None:
        if method.adapter is None:
            raise ConfigError(f"stage.lora_seed={stage.lora_seed} seeds an adapter's initial weights, and this stage "
                              "trains no adapter (stage.adapter=null); set stage.adapter=lora or qlora, or drop "
                              "stage.lora_seed")
        recipe["llamantino_lora_seed"] = stage.lora_seed
    if cfg.run.trial is not None:  # a study's trial: the plugin reports to its journal, and prunes
        trial = cfg.run.trial
        recipe["llamantino_trial"] = {"journal": str(Path(trial.study) / StudyDir.JOURNAL),
                                      "study": StudyDir.OPTUNA_STUDY, "number": int(trial.number), "metric": trial.metric, "direction": trial.direction,
                                      "pruner": str(trial.pruner), "startup_trials": int(trial.startup_trials)}
    if cpu:
        recipe.update(dataset_num_proc=1, dataloader_num_workers=0, dataloader_pin_memory=False)
    recipe.update(stage.axolotl)
    return recipe


class _RecipeDumper(yaml.SafeDumper):
    """Block-style YAML, keys in recipe order, floats always with a dot or exponent."""


def _float(dumper, value: float):
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:  # 2e-05 -> 2.0e-05: YAML 1.1 reads "2e-05" as a string
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


_RecipeDumper.add_representer(float, _float)


def dump_yaml(data: dict, header: list[str] | None = None) -> str:
    """YAML text with real floats (``2.0e-05``, never the string ``2e-4``) and a comment header."""
    text = yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True, width=100,
                     default_flow_style=False)
    # Every physical line of the header is a comment: a line break inside a value cannot start a YAML key.
    lines = [f"# {part}".rstrip() for line in header or [] for part in str(line).splitlines() or [""]]
    return "\n".join(lines + [text]) if lines else text
