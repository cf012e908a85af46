"""Cost plans of single jobs: tokens, FLOPs, GPU hours, job shape and billing (see python -m llamantino plan).

Every job is planned as the launcher would submit it (the stage type's own :meth:`Stage.shape`) and
billed for the share of a node it holds (:func:`billing`). Training is costed here by FLOPs, the
preparation of a corpus by tokenising throughput on CPUs; the other stage types estimate their own
work (:meth:`Stage.work`: merge and release by the bytes they move, eval by forward FLOPs over its
tasks' tokens). Each job's ``formula`` says how.
Pipelines, sweeps and calibration are in :mod:`llamantino.orchestrate.plans`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from llamantino.errors import ConfigError
from llamantino.config.method import (JOB_STARTUP_S, activation_gb, checkpoint_gb, choose_method, mem_gb, memory_formula,
                                      memory_per_gpu_gb, parameters_note, signal_lead_s)
from llamantino.config.schema import RL, HardwareConfig, LlamantinoConfig, time_seconds
from llamantino.stages import stage_for

# Model FLOPs utilisation assumed when the user gives none: typical for bf16 LLM fine-tuning on
# A100 (full/FSDP), and lower for 4-bit QLoRA, whose dequantisation costs time but no model FLOPs.
DEFAULT_MFU = {"full": 0.40, "lora": 0.35, "qlora": 0.25}
# Assumed of a corpus' preparation (printed with its plan line); the other jobs' work: each stage type's work().
TOKENISE_PER_CORE_S = 200_000  # tokens a CPU core reads, filters and tokenises per second (prepare)


@dataclass(frozen=True)
class Mfu:
    """The utilisation a plan trains with, and where it came from."""

    value: float | None = None  # None: DEFAULT_MFU by method
    source: str = "assumed"  # assumed | --mfu | calibrated from <run>
    tokens_per_s: float | None = None  # calibrated: the run's measured tokens/s
    run: str | None = None
    detail: str = ""

    def of(self, kind: str) -> float:
        return self.value if self.value is not None else DEFAULT_MFU[kind]

    def describe(self, kind: str) -> str:
        if self.value is None:
            return f"assumed for {kind} (the default; --mfu or --calibrate <run> replace it)"
        if self.source == "--mfu":
            return "given with --mfu"
        return f"calibrated from {self.run} ({self.detail})"

    def as_dict(self) -> dict:
        return {"value": self.value, "source": self.source, "tokens_per_s": self.tokens_per_s, "run": self.run,
                "detail": self.detail, "defaults": None if self.value is not None else DEFAULT_MFU}


def given_mfu(mfu: float | Mfu | None) -> Mfu:
    if isinstance(mfu, Mfu):
        return mfu
    if mfu is None:
        return Mfu()
    if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):  # NaN fails both comparisons
        raise ConfigError(f"--mfu {mfu} must be a fraction in (0, 1], e.g. --mfu 0.35")
    return Mfu(float(mfu), "--mfu")


@lru_cache(maxsize=None)
def _option_node(name: str) -> HardwareConfig | None:
    from llamantino.config.compose import compose_config

    try:
        return compose_config([f"hardware={name}"]).hardware
    except Exception:  # noqa: BLE001 - a hardware option not in the search path: the config's own values
        return None


def node_of(hw: HardwareConfig) -> HardwareConfig:
    """The node as the hardware option describes it, before the command line asked for less of it
    (``hardware.gpus_per_node=1`` on a 4-GPU node still holds a 4-GPU node)."""
    option = _option_node(hw.name)
    return option if option is not None and option.accelerator == hw.accelerator else hw


def billing(cfg: LlamantinoConfig, shape) -> dict:
    """What a job is billed: its nodes x the share of a node it holds x the node's billing units.

    SLURM bills by the largest share of a node's resources a job holds (CPUs, GPUs, memory; with a
    max-over-TRES billing policy, Leonardo's); a job that holds every CPU or the whole memory of a
    node is billed the whole node, GPUs it does not use included."""
    hw = cfg.hardware
    node = node_of(hw)
    node_mem = mem_gb(node.slurm.mem)
    shares = {"CPUs": shape.cpus_per_node / max(node.cpus_per_node, 1)}
    if node.gpus_per_node:
        shares["GPUs"] = shape.gpus_per_node / node.gpus_per_node
    job_mem = mem_gb(shape.mem) if shape.mem else node_mem
    if node_mem and job_mem:
        shares["memory"] = job_mem / node_mem
    if hw.slurm.exclusive:
        shares["--exclusive"] = 1.0
    billed_by = max(shares, key=shares.get)
    share = min(1.0, shares[billed_by])
    return {"node_share": share, "billed_by": billed_by, "node_gpus": node.gpus_per_node, "node_cpus": node.cpus_per_node,
            "units_per_hour": shape.nodes * share * node.cpus_per_node,
            "budget_unit": f"core hours ({node.cpus_per_node} per node hour)",
            "idle_gpus": shape.nodes * (node.gpus_per_node - shape.gpus_per_node) if share >= 1 else 0}


def _job(cfg: LlamantinoConfig, shape, *, kind: str, wall_hours: float, formula: str, partition: str | None = None,
         notices: list[str] | None = None, trains: bool = False) -> dict:
    """One job's common plan entry: shape, hours and billing."""
    bill = billing(cfg, shape)
    gpus = shape.nodes * shape.gpus_per_node
    return {
        "kind": kind, "trains": trains, "stage": cfg.stage.name, "model": cfg.model.name, "params_b": cfg.model.params_b,
        "hardware": cfg.hardware.name, "nodes": shape.nodes, "gpus": gpus, "gpus_per_node": shape.gpus_per_node,
        "cpus_per_node": shape.cpus_per_node, "mem": shape.mem,
        "partition": partition if partition is not None else cfg.hardware.slurm.partition,
        "qos": cfg.hardware.slurm.qos if partition is None else None,
        "wall_clock_hours": wall_hours, "gpu_hours": wall_hours * gpus, "node_hours": wall_hours * shape.nodes,
        "node_share": bill["node_share"], "billed_by": bill["billed_by"],
        "budget_hours": wall_hours * bill["units_per_hour"], "budget_unit": bill["budget_unit"],
        "formula": formula, "notices": list(notices or []) + _whole_node_notice(cfg, shape, bill, trains, wall_hours),
    }


def _whole_node_notice(cfg: LlamantinoConfig, shape, bill: dict, trains: bool, wall_hours: float) -> list[str]:
    """A job billed for a whole node whose GPUs it leaves idle, and the cheaper shape."""
    if not bill["idle_gpus"] or bill["node_share"] < 1:
        return []
    node_gpus, node_cpus = bill["node_gpus"], bill["node_cpus"]
    node = node_of(cfg.hardware)
    held = (f"it asks for {shape.cpus_per_node} of {node_cpus} CPUs"
            + (f" and {shape.mem} of memory" if shape.mem else "") + (", --exclusive" if cfg.hardware.slurm.exclusive else ""))
    used = f"{shape.gpus_per_node} of its {node_gpus} GPUs" if shape.gpus_per_node else f"none of its {node_gpus} GPUs"
    text = f"billed for the whole node ({held}) but uses {used}"
    if trains and shape.gpus_per_node:
        factor = node_gpus / shape.gpus_per_node
        quarter_mem = mem_gb(node.slurm.mem)
        share_cpus = max(1, node_cpus * shape.gpus_per_node // node_gpus)
        mem_text = f" hardware.slurm.mem={int(quarter_mem * 1024 * shape.gpus_per_node / node_gpus)}M" if quarter_mem else ""
        text += (f": hardware.gpus_per_node={node_gpus} trains data-parallel ~{factor:g}x sooner (~{wall_hours / factor:,.1f} h) "
                 f"for the same bill (the global batch grows {factor:g}x: divide stage.gradient_accumulation_steps to "
                 f"keep it), or hardware.cpus_per_node={share_cpus}{mem_text} asks for "
                 f"{shape.gpus_per_node}/{node_gpus} of the node and is billed that share")
    else:
        text += ("; it is short, but a partition billed per CPU (hardware.prepare.partition's, or a serial one) "
                 "would not bill the idle GPUs")
    return [text]


# --- training ----------------------------------------------------------------------------------


def row_tokens(stage) -> int:
    """Tokens of one trained row when nothing says otherwise: a padded or packed sequence; a DPO pair is
    two (chosen and rejected)."""
    return stage.sequence_len * (2 if stage.rl == RL.dpo else 1)


def _trained_tokens(cfg: LlamantinoConfig, gpus: int, tokens_per_row: int | None) -> tuple[int, str]:
    stage = cfg.stage
    per_row = tokens_per_row or row_tokens(stage)
    if stage.max_steps:
        rows_seen = stage.max_steps * stage.micro_batch_size * stage.gradient_accumulation_steps * gpus
        return rows_seen * per_row, (f"{stage.max_steps} steps x {stage.micro_batch_size} x "
                                     f"{stage.gradient_accumulation_steps} x {gpus} GPUs x {per_row} tokens")
    rows = cfg.data.num_rows
    sliced = cfg.data.row_slice()  # train[:100000]: the rows of the slice
    if sliced is not None and (sliced[2] is not None or rows):
        rows = (sliced[2] if sliced[2] is not None else rows) - sliced[1]
    if not rows:
        raise ConfigError(f"data {cfg.data.name} has no num_rows: set data.num_rows=<rows> to plan an epoch-based stage")
    held_out = stage.val_set_size if stage.val_set_size < 1 else stage.val_set_size / rows
    rows = round(rows * (1 - held_out))  # the evaluation split is not trained on
    return rows * stage.num_epochs * per_row, (
        f"{rows} rows x {stage.num_epochs:g} epochs x {per_row} tokens"
        + (f" ({stage.val_set_size:g} held out for evaluation)" if held_out else ""))


def flops_factor(cfg: LlamantinoConfig, kind: str) -> tuple[int, str]:
    """FLOPs per parameter per trained token, and the formula's text."""
    dpo = cfg.stage.rl == RL.dpo
    factor = (6 if kind == "full" else 4) + (2 if cfg.stage.gradient_checkpointing else 0) + (2 if dpo else 0)
    return factor, (f"{factor}·N·T ({kind}" + (", gradient checkpointing" if cfg.stage.gradient_checkpointing else "")
                    + (", DPO reference" if dpo else "") + ")")


def trained_tokens(cfg: LlamantinoConfig, tokens_per_row: int | None = None) -> int:
    """Tokens a train stage's config trains on, as the plan counts them (any hardware)."""
    method = choose_method(cfg.stage, cfg.model, cfg.hardware)
    return _trained_tokens(cfg, max(cfg.hardware.nodes * cfg.hardware.gpus_per_node, method.world_size), tokens_per_row)[0]


def plan(cfg: LlamantinoConfig, mfu: float | Mfu | None = None, tokens_per_row: int | None = None) -> dict:
    """The cost plan of a composed train config (pure)."""
    stage, model, hw = cfg.stage, cfg.model, cfg.hardware
    utilisation = given_mfu(mfu)
    if tokens_per_row is not None and tokens_per_row < 1:
        raise ConfigError(f"--tokens-per-row {tokens_per_row} must be at least 1")
    if not stage_for(cfg).costed:
        raise ConfigError(f"stage {stage.name} does not train; plan_job plans it")
    if not hw.gpu or not hw.peak_tflops:
        raise ConfigError(f"hardware {hw.name} has no GPU peak throughput to plan with; choose a GPU hardware option "
                          "(hardware=leonardo_booster, a100_80gb_x1, h100_80gb_x1, ...)")
    method = choose_method(stage, model, hw)
    kind = method.adapter or "full"
    gpus = hw.nodes * hw.gpus_per_node
    dpo = stage.rl == RL.dpo
    tokens, how = _trained_tokens(cfg, gpus, tokens_per_row)
    factor, flops_text = flops_factor(cfg, kind)
    if model.experts is not None:
        flops_text += f", N = {model.active_b:g}B active of {model.params_b:g}B"
    flops = factor * model.active_b * 1e9 * tokens  # a mixture of experts: FLOPs of the active parameters
    used = utilisation.of(kind)
    gpu_hours = flops / (hw.peak_tflops * 1e12 * used) / 3600
    wall_hours = gpu_hours / gpus
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
    shape = stage_for(cfg).shape(cfg, method)
    entry = _job(cfg, shape, kind="train", wall_hours=wall_hours, notices=notices, trains=True,
                 formula=f"{flops_text} = {flops:.3e} FLOPs / ({gpus} x {hw.peak_tflops:g} TFLOP/s x {used:.3g} MFU)")
    entry.update({
        "method": str(kind), "distributed": method.distributed,
        "memory_per_gpu_gb": round(state + activations, 1),
        "state_memory_gb": round(state, 1), "activation_gb": round(activations, 1),
        "state_formula": memory_formula(model.params_b, kind, gpus, method.distributed == "fsdp"),
        "active_params_b": model.active_b, "parameters": parameters_note(model),
        "gpu_memory_gb": hw.gpu_memory_gb,
        "tokens": tokens, "tokens_formula": how, "flops": flops, "flops_formula": flops_text,
        "mfu": used, "mfu_source": utilisation.describe(kind), "peak_tflops_per_gpu": hw.peak_tflops,
        "time_limit": limit_text, "jobs": jobs, "requeues": jobs - 1,
        "corpus": _corpus(cfg, method.world_size),
        "rows": _rows(cfg),
        "checkpoint_gb": checkpoint_gb(model.params_b, method.adapter, stage.lora_r),
        "signal_lead_s": cfg.launcher.signal_lead_s or signal_lead_s(model.params_b, method.adapter, stage.lora_r,
                                                                     hw.storage.write_gbps),
        "write_gbps": hw.storage.write_gbps,
    })
    return entry


def _corpus(cfg: LlamantinoConfig, world_size: int) -> dict | None:
    """What a corpus-scale stage prepares: the budget, each source's share and the files it fetches."""
    if not cfg.data.corpus_scale:
        return None
    from llamantino.inputs.corpus import plan_corpus
    from llamantino.inputs.resolve import base_model
    from llamantino.inputs.tiny import tiny_model_dir

    corpus = plan_corpus(cfg, base_model(cfg, tiny_model_dir, {}).model_source, world_size)
    per_file = [s.approx_tokens_per_file * s.read_files for s in corpus.sources
                if s.approx_tokens_per_file and s.read_files]
    read = sum(per_file) if len(per_file) == len(corpus.sources) else None
    return {"key": corpus.key, "summary": corpus.describe(), "entry": corpus.entry, "notes": corpus.notes,
            "tasks": corpus.tasks, "workers": corpus.workers, "budget_tokens": corpus.budget_tokens,
            "blocks_with_margin": corpus.blocks_with_margin, "sequence_len": corpus.sequence_len,
            "read_tokens": read,
            "sources": [{"name": s.name, "origin": s.origin, "blocks": s.blocks, "read_files": s.read_files}
                        for s in corpus.sources]}


def _rows(cfg: LlamantinoConfig) -> dict | None:
    """What an SFT or DPO stage prepares once (its rows), or None: corpus data, local text."""
    from llamantino.inputs.resolve import base_model, with_data
    from llamantino.inputs.tiny import tiny_model_dir
    from llamantino.render.axolotl import rows_recipe_keys

    if cfg.data.corpus_scale:
        return None
    plan = with_data(base_model(cfg, tiny_model_dir, {}), cfg, plugin_keys=rows_recipe_keys(cfg)).rows
    if plan is None:
        return None
    return {"key": plan.key, "summary": plan.describe(), "entry": plan.entry, "notes": list(plan.notes),
            "rows": cfg.data.mix_rows or cfg.data.num_rows, "sources": [s.name for s in plan.sources]}


# --- a corpus' preparation, and the jobs that do not train (their work: each stage type's work()) ----


def plan_prepare(cfg: LlamantinoConfig, corpus: dict) -> dict:
    """The CPU jobs that prepare a corpus into the shared cache: no GPU hours."""
    tokens = corpus["read_tokens"] or (corpus["blocks_with_margin"] or 0) * corpus["sequence_len"]
    what = ("the sampled files' tokens (data.approx_tokens / data.file_count x files read)" if corpus["read_tokens"]
            else "the token budget with its margin")
    entry = _cpu_job(cfg, tokens, what, tasks=corpus["tasks"], cores=corpus["workers"])
    entry.update({"corpus": corpus["key"], "entry": corpus["key"]})
    return entry


def plan_prepare_rows(cfg: LlamantinoConfig, train: dict) -> dict:
    """The CPU job that tokenises an SFT or DPO stage's rows once into the shared cache."""
    rows, stage = train["rows"], cfg.stage
    if rows["rows"]:
        tokens = rows["rows"] * row_tokens(stage)
        what = f"{rows['rows']:,} rows x {row_tokens(stage)} tokens, at most"
    else:  # the rows one epoch trains on: the data, unless max_steps stops short of it
        tokens = round(train["tokens"] / max(stage.num_epochs, 1))
        what = "the trained tokens of one epoch (data.num_rows unset)"
    entry = _cpu_job(cfg, tokens, what, tasks=1, cores=cfg.hardware.prepare.cpus)
    entry.update({"corpus": None, "entry": rows["key"]})
    return entry


def _cpu_job(cfg: LlamantinoConfig, tokens: int, what: str, *, tasks: int, cores: int) -> dict:
    """A job of ``tasks`` array tasks of ``cores`` CPUs that tokenises ``tokens``: no GPU hours."""
    from llamantino.render.sbatch import JobShape

    hw, prep = cfg.hardware, cfg.hardware.prepare
    compute_s = tokens / (tasks * cores * TOKENISE_PER_CORE_S)
    hours = (JOB_STARTUP_S + compute_s) / 3600
    shape = JobShape(nodes=1, processes_per_node=1, gpus_per_node=0, cpus_per_node=cores, mem=prep.mem,
                     distributed=False, requeue=False)
    entry = _job(cfg, shape, kind="prepare", wall_hours=hours, partition=prep.partition or hw.slurm.partition,
                 formula=(f"{tokens:.3e} tokens ({what}) / ({tasks} array tasks x {cores} cores x "
                          f"{TOKENISE_PER_CORE_S:,} tokens/s per core, assumed) + {JOB_STARTUP_S} s; downloads not counted"))
    # Billed per core on its partition (another node type than the GPU nodes): every array task
    # holds its own CPUs at once, so the array's core hours, not one task's; no GPU node is held.
    entry.update({"node_share": None, "billed_by": "cores", "notices": [], "budget_hours": hours * tasks * cores,
                  "node_hours": hours * tasks})
    entry["budget_unit"] = f"core hours on {entry['partition']}" + (
        f" (its own budget, not {hw.slurm.partition}'s)" if prep.partition and prep.partition != hw.slurm.partition else "")
    entry.update({"stage": "prepare", "tasks": tasks, "tokens": tokens, "gpu_hours": 0.0})
    return entry


def plan_job(cfg: LlamantinoConfig, mfu: float | Mfu | None = None, tokens_per_row: int | None = None) -> list[dict]:
    """The jobs one stage submits: the preparation of its corpus or rows, when it reads one, then the stage."""
    stage = stage_for(cfg)
    if stage.costed:
        entry = plan(cfg, mfu, tokens_per_row)
        prepare = ([plan_prepare(cfg, entry["corpus"])] if entry["corpus"] else []) + (
            [plan_prepare_rows(cfg, entry)] if entry["rows"] else [])
        return prepare + [entry]
    shape = stage.shape(cfg, stage.method(cfg, [])[1])
    work = stage.work(cfg, shape)
    if work is None:
        raise ConfigError(f"stage {cfg.stage.name} (task {stage.task}) has no cost model; the planner plans "
                          "training, merge, eval and release")
    entry = _job(cfg, shape, kind=stage.task, wall_hours=work.hours, formula=work.formula)
    entry.update({key: value for key, value in (("tokens", work.tokens), ("flops", work.flops)) if value is not None})
    return [entry]


def format_plan(p: dict) -> str:
    """A train stage's plan in detail."""
    lines = [
        f"plan: {p['stage']} of {p['model']} ({p['params_b']}B) on {p['hardware']}: {p['nodes']} node(s), {p['gpus']} GPUs",
        f"  method        {p['method']} with {p['distributed']}; ~{p['memory_per_gpu_gb']} GB of {p['gpu_memory_gb']:g} GB "
        f"per GPU ({p['state_memory_gb']} GB weights and optimizer + {p['activation_gb']} GB activations)",
        f"  memory        weights and optimizer: {p['state_formula']}",
        f"  parameters    {p['parameters']}",
        f"  tokens        {p['tokens']:.3e}  = {p['tokens_formula']}",
        f"  FLOPs         {p['flops']:.3e}  = {p['flops_formula']}",
        f"  MFU           {p['mfu']:.{0 if p['mfu'] >= 0.01 else 3}%} model FLOPs utilisation of {p['peak_tflops_per_gpu']:g} "
        f"TFLOP/s bf16 peak per GPU: {p['mfu_source']}",
        f"  GPU hours     {p['gpu_hours']:,.0f}",
        f"  wall clock    {p['wall_clock_hours']:,.1f} h  ({p['node_hours']:,.0f} node hours)",
        f"  budget        {p['budget_hours']:,.0f} {p['budget_unit']}; billed {_share(p)}",
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
    rows = p.get("rows")
    if rows:
        lines.append(f"  data          {rows['summary']}")
        lines.append(f"  data cache    {rows['entry']}")
        lines += [f"  notice        {n}" for n in rows["notes"]]
    lines += [f"  notice        {n}" for n in p["notices"]]
    return "\n".join(lines)


def _share(p: dict) -> str:
    if p["node_share"] is None:
        return "per core"
    if p["node_share"] >= 1:
        return f"whole nodes (by its {p['billed_by']})"
    return f"{p['node_share']:.0%} of a node (by its {p['billed_by']})"
