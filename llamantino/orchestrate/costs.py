"""Cost plans of training stages: tokens, FLOPs, GPU hours and budget (see python -m llamantino plan)."""

from __future__ import annotations

import math

from llamantino.errors import ConfigError
from llamantino.config.method import activation_gb, checkpoint_gb, choose_method, memory_per_gpu_gb, signal_lead_s
from llamantino.config.schema import RL, LlamantinoConfig, time_seconds
from llamantino.stages import stage_for

# Model FLOPs utilisation assumed when the user gives none: typical for bf16 LLM fine-tuning on
# A100 (full/FSDP), and lower for 4-bit QLoRA, whose dequantisation costs time but no model FLOPs.
DEFAULT_MFU = {"full": 0.40, "lora": 0.35, "qlora": 0.25}


def plan(cfg: LlamantinoConfig, mfu: float | None = None, tokens_per_row: int | None = None) -> dict:
    """The cost plan of a composed train config (pure)."""
    stage, model, hw = cfg.stage, cfg.model, cfg.hardware
    if mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu} must be a fraction in (0, 1]")
    if tokens_per_row is not None and tokens_per_row < 1:
        raise ConfigError(f"--tokens-per-row {tokens_per_row} must be at least 1")
    if not stage_for(cfg).costed:
        raise ConfigError(f"stage {stage.name} does not train; the planner plans train stages")
    if not hw.gpu or not hw.peak_tflops:
        raise ConfigError(f"hardware {hw.name} has no GPU peak throughput to plan with; choose a GPU hardware option")
    method = choose_method(stage, model, hw)
    kind = method.adapter or "full"
    gpus = hw.nodes * hw.gpus_per_node
    dpo = stage.rl == RL.dpo
    per_row = tokens_per_row or stage.sequence_len * (2 if dpo else 1)
    if stage.max_steps:
        rows_seen = stage.max_steps * stage.micro_batch_size * stage.gradient_accumulation_steps * gpus
        tokens = rows_seen * per_row
        how = f"{stage.max_steps} steps x {stage.micro_batch_size} x {stage.gradient_accumulation_steps} x {gpus} GPUs x {per_row} tokens"
    else:
        rows = cfg.data.num_rows
        sliced = cfg.data.row_slice()  # train[:100000]: the rows of the slice
        if sliced is not None and (sliced[2] is not None or rows):
            rows = (sliced[2] if sliced[2] is not None else rows) - sliced[1]
        if not rows:
            raise ConfigError(f"data {cfg.data.name} has no num_rows: set data.num_rows=<rows> to plan an epoch-based stage")
        held_out = stage.val_set_size if stage.val_set_size < 1 else stage.val_set_size / rows
        rows = round(rows * (1 - held_out))  # the evaluation split is not trained on
        tokens = rows * stage.num_epochs * per_row
        how = (f"{rows} rows x {stage.num_epochs:g} epochs x {per_row} tokens"
               + (f" ({stage.val_set_size:g} held out for evaluation)" if held_out else ""))
    params = model.params_b * 1e9
    factor = 6 if kind == "full" else 4
    factor += 2 if stage.gradient_checkpointing else 0
    factor += 2 if dpo else 0
    flops = factor * params * tokens
    utilisation = mfu or DEFAULT_MFU[kind]
    gpu_hours = flops / (hw.peak_tflops * 1e12 * utilisation) / 3600
    wall_hours = gpu_hours / gpus
    node_hours = wall_hours * hw.nodes
    # Each GPU holds one micro batch; a DPO row is two sequences (chosen and rejected) through the policy.
    activations = activation_gb(model, stage.sequence_len, stage.micro_batch_size * (2 if dpo else 1),
                                checkpointing=stage.gradient_checkpointing, eager=hw.attn_implementation == "eager")
    state = memory_per_gpu_gb(model.params_b, kind, gpus, method.distributed == "fsdp")
    notices = list(method.notices)
    if state + activations > hw.gpu_memory_gb:
        notices.append(f"~{state + activations:.0f} GB per GPU ({state:.0f} GB weights and optimizer + "
                       f"{activations:.0f} GB activations at sequence_len {stage.sequence_len}, micro batch "
                       f"{stage.micro_batch_size}) exceeds {hw.gpu_memory_gb:g} GB: lower stage.micro_batch_size "
                       "(raise stage.gradient_accumulation_steps to keep the batch) or stage.sequence_len")
    limit_text = cfg.time_limit
    qos = hw.slurm.qos
    limits = hw.slurm.qos_limits.get(qos) if qos else None
    if limits:
        limit_text = min(limit_text, limits.max_time, key=time_seconds)
    limit_hours = time_seconds(limit_text) / 3600
    jobs = max(1, math.ceil(wall_hours / limit_hours))
    return {
        "model": model.name, "params_b": model.params_b, "stage": stage.name, "hardware": hw.name,
        "method": str(kind), "distributed": method.distributed, "gpus": gpus, "nodes": hw.nodes,
        "memory_per_gpu_gb": round(state + activations, 1),
        "state_memory_gb": round(state, 1), "activation_gb": round(activations, 1),
        "gpu_memory_gb": hw.gpu_memory_gb,
        "tokens": tokens, "tokens_formula": how,
        "flops": flops, "flops_formula": f"{factor}·N·T ({kind}"
        + (", gradient checkpointing" if stage.gradient_checkpointing else "") + (", DPO reference" if dpo else "") + ")",
        "mfu": utilisation, "peak_tflops_per_gpu": hw.peak_tflops,
        "gpu_hours": gpu_hours, "wall_clock_hours": wall_hours, "node_hours": node_hours,
        "budget_hours": node_hours * hw.cpus_per_node, "budget_unit": f"core hours ({hw.cpus_per_node} per node hour)",
        "time_limit": limit_text, "qos": qos, "jobs": jobs, "requeues": jobs - 1,
        "notices": notices, "corpus": _corpus(cfg, method.world_size),
        "checkpoint_gb": checkpoint_gb(model.params_b, method.adapter, stage.lora_r),
        "signal_lead_s": cfg.launcher.signal_lead_s or signal_lead_s(model.params_b, method.adapter, stage.lora_r,
                                                                     hw.storage.write_gbps),
        "write_gbps": hw.storage.write_gbps,
    }


def _corpus(cfg: LlamantinoConfig, world_size: int) -> dict | None:
    """What a corpus-scale stage prepares: the budget, each source's share and the files it fetches."""
    if not cfg.data.corpus_scale:
        return None
    from llamantino.inputs.corpus import plan_corpus
    from llamantino.inputs.resolve import base_model
    from llamantino.inputs.tiny import tiny_model_dir

    corpus = plan_corpus(cfg, base_model(cfg, tiny_model_dir, {}).model_source, world_size)
    return {"key": corpus.key, "summary": corpus.describe(), "entry": corpus.entry, "notes": corpus.notes,
            "sources": [{"name": s.name, "origin": s.origin, "blocks": s.blocks, "read_files": s.read_files}
                        for s in corpus.sources]}


def format_plan(p: dict) -> str:
    lines = [
        f"plan: {p['stage']} of {p['model']} ({p['params_b']}B) on {p['hardware']}: {p['nodes']} node(s), {p['gpus']} GPUs",
        f"  method        {p['method']} with {p['distributed']}; ~{p['memory_per_gpu_gb']} GB of {p['gpu_memory_gb']:g} GB "
        f"per GPU ({p['state_memory_gb']} GB weights and optimizer + {p['activation_gb']} GB activations)",
        f"  tokens        {p['tokens']:.3e}  = {p['tokens_formula']}",
        f"  FLOPs         {p['flops']:.3e}  = {p['flops_formula']}",
        f"  assumption    {p['mfu']:.0%} model FLOPs utilisation of {p['peak_tflops_per_gpu']:g} TFLOP/s bf16 peak per GPU",
        f"  GPU hours     {p['gpu_hours']:,.0f}",
        f"  wall clock    {p['wall_clock_hours']:,.1f} h  ({p['node_hours']:,.0f} node hours)",
        f"  budget        {p['budget_hours']:,.0f} {p['budget_unit']}",
        f"  time limit    {p['time_limit']} (QoS {p['qos'] or '-'}): "
        + ("fits in one job" if p["jobs"] == 1 else f"needs {p['jobs']} jobs: {p['requeues']} requeues, resuming from checkpoints"),
    ]
    lines.append(f"  checkpoint    ~{p['checkpoint_gb']:,.0f} GB each; USR1 {p['signal_lead_s']} s before the time limit "
                 f"(written at {p['write_gbps']:g} GB/s + 60 s; launcher.signal_lead_s overrides)")
    corpus = p.get("corpus")
    if corpus:
        lines.append(f"  data          {corpus['summary']}")
        lines += [f"  data          {s['name']}: downloads {s['read_files']} sampled files" for s in corpus["sources"]
                  if s["origin"] == "hub" and s["read_files"]]
        lines.append(f"  data cache    {corpus['entry']}")
        lines += [f"  notice        {n}" for n in corpus["notes"]]
    lines += [f"  notice        {n}" for n in p["notices"]]
    return "\n".join(lines)
