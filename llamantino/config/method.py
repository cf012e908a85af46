"""Choose how a stage trains on the chosen hardware: full, LoRA or QLoRA; FSDP, DDP or one process.

A stage asks for a method (``stage.adapter``: None = full fine-tune). If the hardware cannot do
it, the stage falls back to the next cheaper method and says so in a notice (printed, written in
the recipe header and in provenance); with ``stage.on_unsupported=error`` it refuses instead.
Never silently. The memory rule is deliberately simple and printed with its numbers:

    full fine-tune, mixed-precision AdamW   16 bytes/parameter, sharded over all GPUs (FSDP)
    LoRA                                     2 bytes/parameter (bf16 frozen weights), sharded if FSDP
    QLoRA                                    0.55 bytes/parameter (NF4 + constants), replicated (DDP)

plus 20% and 2 GB per GPU for adapters and workspace. The method is chosen on this rule; the planner
adds the activations of the stage's sequence length and micro batch (:func:`activation_gb`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llamantino.errors import ConfigError

BYTES_PER_PARAM = {"full": 16.0, "lora": 2.0, "qlora": 0.55}
OVERHEAD_FACTOR = 1.2
OVERHEAD_GB = 2.0
_ORDER = ("full", "lora", "qlora")


@dataclass
class Method:
    """What the renderer needs to know about how the stage trains."""

    adapter: str | None  # None (full), "lora", "qlora"
    distributed: str  # "none", "ddp", "fsdp"
    nodes: int
    processes_per_node: int
    notices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.adapter = None if self.adapter is None else str(self.adapter)  # plain text in recipes

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes


def memory_per_gpu_gb(params_b: float, method: str, gpus: int, sharded: bool) -> float:
    """Estimated memory per GPU in GB for ``method`` ("full", "lora", "qlora")."""
    state = params_b * BYTES_PER_PARAM[method]
    if sharded and gpus > 1:
        state /= gpus
    return state * OVERHEAD_FACTOR + OVERHEAD_GB


# Activation memory of one transformer layer, in bytes, for s tokens x b sequences of width h with a
# attention heads, 16-bit activations and no tensor parallelism: s·b·h·(34 + 5·a·s/h) (Korthikanti et
# al. 2022, "Reducing Activation Recomputation in Large Transformer Models", section 4.1). The 5·a·s/h
# term is the s x s attention scores, softmax and dropout mask: fused kernels (flash attention, SDPA's
# memory-efficient path) never store it, eager attention does. With gradient checkpointing (full
# recomputation) a layer keeps only its 2·s·b·h-byte input, and one layer at a time is recomputed in full.
# Assumptions: heads of width 128 (a = h / 128, as in Llama-2/3 and Mistral); logits not counted.
ACTIVATION_BYTES_PER_TOKEN_WIDTH = 34
HEAD_DIM = 128


def activation_gb(model, sequence_len: int, micro_batch: int, *, checkpointing: bool, eager: bool) -> float:
    """Activation memory per GPU in GB of one micro batch (see the formula above)."""
    s, b, h = sequence_len, micro_batch, model.hidden_size
    heads = max(1, h // HEAD_DIM)
    layer = s * b * h * (ACTIVATION_BYTES_PER_TOKEN_WIDTH + (5 * heads * s / h if eager else 0))
    stored = model.num_layers * 2 * s * b * h + layer if checkpointing else model.num_layers * layer
    return stored / 1e9


def parameters_note(model) -> str:
    """What the planner counts of a model's parameters: all for memory, the active ones for FLOPs."""
    if model.experts is None:
        return f"{model.params_b:g}B parameters, dense: memory and FLOPs count them all"
    return (f"{model.params_b:g}B parameters in all, {model.active_b:g}B active per token ({model.experts.count} experts "
            f"per layer, {model.experts.per_token} per token): memory (weights, optimizer state, merge, eval) counts "
            f"all {model.params_b:g}B, FLOPs the {model.active_b:g}B active")


def memory_formula(params_b: float, method: str, gpus: int, sharded: bool) -> str:
    """:func:`memory_per_gpu_gb` as the sum it computes, e.g. ``46.7B x 2 B / 4 GPUs x 1.2 + 2 GB``."""
    split = f" / {gpus} GPUs" if sharded and gpus > 1 else ""
    return (f"{params_b:g}B x {BYTES_PER_PARAM[method]:g} bytes ({method}){split} x {OVERHEAD_FACTOR:g} + "
            f"{OVERHEAD_GB:g} GB = {memory_per_gpu_gb(params_b, method, gpus, sharded):.1f} GB")


def _fits(params_b: float, method: str, hw) -> tuple[bool, float, bool]:
    gpus = hw.nodes * hw.gpus_per_node
    sharded = method != "qlora" and gpus > 1
    need = memory_per_gpu_gb(params_b, method, gpus, sharded)
    if method == "lora" and gpus > 1 and memory_per_gpu_gb(params_b, "lora", 1, False) <= hw.gpu_memory_gb:
        sharded = False  # fits replicated: plain DDP is simpler and faster
        need = memory_per_gpu_gb(params_b, "lora", 1, False)
    return need <= hw.gpu_memory_gb, need, sharded


def _rate_note(stage) -> str:
    rate = stage.adapter_learning_rate
    return f", learning rate {rate:g} (stage.adapter_learning_rate)" if rate else ""


def choose_method(stage, model, hw) -> Method:
    """Decide the training method and parallelism of a ``train`` stage (pure: config in, Method out)."""
    wanted = str(stage.adapter or "full")  # the schema's Adapter enum: always one of _ORDER
    notices: list[str] = []
    nodes = hw.nodes
    if not hw.gpu:
        chosen = wanted
        if wanted == "full":
            chosen = str(stage.cpu_adapter)
            message = (
                f"stage {stage.name} asks for full fine-tuning with FSDP, which needs GPUs; on hardware "
                f"{hw.name} it trains a {chosen} adapter instead (stage.cpu_adapter)"
                + _rate_note(stage)
            )
            if stage.on_unsupported == "error":
                raise ConfigError(message + "; refusing because stage.on_unsupported=error")
            notices.append(message)
        return Method(adapter=chosen, distributed="ddp" if nodes > 1 else "none", nodes=nodes,
                      processes_per_node=1, notices=notices)

    gpus = nodes * hw.gpus_per_node
    tried = []
    for candidate in _ORDER[_ORDER.index(wanted):]:
        fits, need, sharded = _fits(model.params_b, candidate, hw)
        tried.append(f"{candidate} ~{need:.0f} GB/GPU")
        if fits:
            break
    else:
        raise ConfigError(
            f"model {model.name} ({model.params_b}B parameters) does not fit hardware {hw.name} "
            f"({gpus} x {hw.gpu_memory_gb:g} GB) with any method ({', '.join(tried)}); add nodes "
            "(hardware.nodes=N) or choose larger GPUs"
        )
    if candidate != wanted:
        message = (
            f"stage {stage.name} asks for {wanted} but {model.name} needs {tried[0].split(' ', 1)[1]} "
            f"on {gpus} x {hw.gpu_memory_gb:g} GB ({hw.name}); training {candidate} instead ({tried[-1]})"
            + (_rate_note(stage) if wanted == "full" else "")
        )
        if stage.on_unsupported == "error":
            raise ConfigError(message + "; refusing because stage.on_unsupported=error")
        notices.append(message)
    distributed = "none" if gpus == 1 else ("fsdp" if sharded else "ddp")
    return Method(adapter=None if candidate == "full" else candidate, distributed=distributed, nodes=nodes,
                  processes_per_node=hw.gpus_per_node, notices=notices)


# Parameters trained by a LoRA of rank 64 on every linear layer of a Llama, as a share of the
# model's (about 2.3% for Llama-2-7B: 160M of 6.7B); lower ranks train fewer.
LORA_SHARE_AT_R64 = 0.023
CHECKPOINT_BYTES = 14  # per trained parameter: bf16 weights 2 + fp32 master copy 4 + AdamW m and v 8


def checkpoint_gb(params_b: float, adapter: str | None, lora_r: int = 64) -> float:
    """Size of one intermediate training checkpoint, GB (an estimate: weights and optimizer state
    of what trains; a frozen base is not saved)."""
    trained = params_b if adapter is None else params_b * LORA_SHARE_AT_R64 * lora_r / 64
    return trained * CHECKPOINT_BYTES


def signal_lead_s(params_b: float, adapter: str | None, lora_r: int, write_gbps: float, minimum: int = 120) -> int:
    """Seconds before the time limit to ask for a checkpoint: writing it at ``write_gbps``, plus a minute."""
    import math

    return max(minimum, math.ceil(checkpoint_gb(params_b, adapter, lora_r) / write_gbps) + 60)


BF16_BYTES = 2
JOB_STARTUP_S = 120  # a job's start: Python imports, the scheduler's prologue, process launch


def io_hours(hw, gigabytes: float) -> tuple[float, str]:
    """(hours, how) of a job that reads and writes ``gigabytes`` at ``hardware.storage.write_gbps``."""
    gbps = hw.storage.write_gbps
    return (JOB_STARTUP_S + gigabytes / gbps) / 3600, (
        f"{JOB_STARTUP_S} s start-up + {gigabytes:,.1f} GB read and written at {gbps:g} GB/s "
        "(hardware.storage.write_gbps, reads assumed as fast)")


def model_gpus(params_b: float, gpu_memory_gb: float) -> int:
    """GPUs that hold a model's bf16 weights with room for activations (inference and merging)."""
    import math

    return max(1, math.ceil(params_b * 2 * 1.2 / gpu_memory_gb))


def model_ram_gb(params_b: float) -> int:
    """Host memory to load a model in bf16 and write it out again (merging): weights twice, plus room."""
    import math

    return math.ceil(params_b * 2 * 2 + 16)


def mem_gb(text: str | None) -> float | None:
    """A SLURM memory size ("494000M", "64G", "512000") in GB; None when unset."""
    if not text:
        return None
    units = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
    number, unit = (text[:-1], text[-1]) if text[-1] in units else (text, "M")
    return float(number) * units[unit]
