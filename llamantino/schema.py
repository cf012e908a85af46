"""Typed schema of every config group, registered in Hydra's ConfigStore.

The primary config (``conf/config.yaml``) starts from ``llamantino_schema``, so every group
option is merged into one of these dataclasses: a misspelt key or a wrong type fails at
composition and names the key path (``stage.lora_r``). Fields map one to one to what the
renderers read; comments say what a field means where the name does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

STAGE_TASKS = ("train", "merge", "eval")
DATA_FORMATS = ("text", "instructions", "conversations", "preferences")


@dataclass
class ModelConfig:
    name: str = MISSING
    hub_id: Optional[str] = None  # None: built locally by `builder`
    revision: Optional[str] = None  # pinned hub commit; None: not pinned (provenance says so)
    builder: Optional[str] = None  # "tiny_llama": llamantino builds it (llamantino/tiny.py)
    family: str = MISSING  # llama2 | llama3 | mistral
    template: str = MISSING  # default prompt template (llamantino_plugin/templates/index.yaml)
    params_b: float = MISSING  # parameters in billions (memory and cost planning)
    num_layers: int = MISSING
    hidden_size: int = MISSING
    context_length: int = 4096
    decoder_layer: str = "LlamaDecoderLayer"  # FSDP wrapping unit
    flash_attention: bool = True  # the architecture supports flash_attention_2
    gated: bool = False  # the hub asks to accept a licence first
    license: str = ""


@dataclass
class DataConfig:
    """One registry entry of datasets_ita/registry (the ``data`` group points there)."""

    name: str = MISSING
    description: str = ""
    format: str = MISSING  # text | instructions | conversations | preferences
    purpose: list[str] = field(default_factory=list)  # stages it is meant for: adapt, sft, dpo
    path: Optional[str] = None  # local JSONL, relative to datasets_ita/ (or absolute)
    hub_id: Optional[str] = None
    subset: Optional[str] = None  # hub config name, e.g. "medium"
    revision: Optional[str] = None  # pinned hub commit; None: not pinned
    split: str = "train"
    num_rows: Optional[int] = None  # rows in the split (approximate for hub sets; the planner uses it)
    columns: dict[str, str] = field(default_factory=dict)  # logical column -> column in the data
    license: str = ""
    size: str = ""
    language: str = "it"
    source: str = ""  # where the facts of this entry come from
    notes: str = ""


@dataclass
class StageConfig:
    name: str = MISSING
    task: str = "train"  # train | merge | eval
    data_formats: list[str] = field(default_factory=list)  # formats this stage trains on
    # Method: adapter None = full fine-tune; "lora"; "qlora" (4-bit base).
    adapter: Optional[str] = None
    cpu_adapter: str = "lora"  # documented fallback on CPU, where full fine-tuning/FSDP is impossible
    on_unsupported: str = "fallback"  # fallback (announced) | error
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: Optional[list[str]] = None  # None: every linear layer
    use_rslora: bool = False
    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_epochs: float = 1.0
    max_steps: Optional[int] = None
    sequence_len: int = 1024
    learning_rate: float = 2.0e-4
    adapter_learning_rate: Optional[float] = None  # used instead when a fallback trains an adapter
    lr_scheduler: str = "cosine"
    warmup_steps: Optional[int] = None
    warmup_ratio: Optional[float] = None
    optimizer: str = "adamw_torch_fused"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    sample_packing: bool = False  # used only where attention is flash_attention_2
    train_on_inputs: bool = False
    rl: Optional[str] = None  # "dpo"
    rl_beta: Optional[float] = None
    max_prompt_len: Optional[int] = None
    val_set_size: float = 0.0
    save_steps: Optional[int] = None
    saves_per_epoch: Optional[int] = None
    save_total_limit: Optional[int] = None
    logging_steps: int = 1
    excess_length_strategy: str = "drop"  # drop | truncate | raise
    bad_rows: str = "strict"  # strict | skip
    text_min_chars: int = 20
    text_dedup: bool = True
    seed: int = 42
    # Extra Axolotl keys, passed through; keys Axolotl does not know are refused.
    axolotl: dict[str, Any] = field(default_factory=dict)


@dataclass
class QosLimit:
    min_nodes: int = 1
    max_nodes: int = MISSING
    max_time: str = MISSING  # SLURM time, e.g. "00:30:00"


@dataclass
class SlurmConfig:
    partition: Optional[str] = None
    qos: Optional[str] = None
    account: Optional[str] = None  # None: taken from $SLURM_ACCOUNT at submission
    account_required: bool = False  # the cluster bills every job to a project
    time: str = "24:00:00"
    mem: Optional[str] = None  # per node, e.g. "494000M"; None: the partition default
    gres: Optional[str] = None  # None: "gpu:<gpus_per_node>" on GPU hardware, nothing on CPU
    exclusive: bool = False
    modules: list[str] = field(default_factory=list)  # `module load` lines, in order
    env: dict[str, str] = field(default_factory=dict)  # exported in the job
    rdzv_port: int = 29500
    qos_limits: dict[str, QosLimit] = field(default_factory=dict)
    extra_directives: list[str] = field(default_factory=list)  # more `#SBATCH` options, e.g. "--exclude=lrdn0001"


@dataclass
class HardwareConfig:
    name: str = MISSING
    accelerator: str = "cpu"  # cpu | a100 | h100
    nodes: int = 1
    gpus_per_node: int = 0
    gpu_memory_gb: float = 0.0
    cpus_per_node: int = 2
    bf16: bool = False
    tf32: bool = False
    fp8: bool = False
    compute_capability: Optional[str] = None  # "sm_80" for A100
    attn_implementation: str = "sdpa"  # flash_attention_2 on A100/H100
    peak_tflops: float = 0.0  # dense bf16 TFLOP/s per GPU, for planning
    offline: bool = False  # compute nodes have no internet
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass
class LauncherConfig:
    name: str = MISSING  # dry | local | slurm
    submit: bool = True  # slurm: false renders and writes everything, submits nothing
    validate: bool = True  # run Axolotl's own validation before writing
    array_parallelism: int = 4  # sweeps: the %N throttle of the job array
    signal_lead_s: int = 120  # USR1 this long before the time limit: checkpoint and requeue
    requeue: bool = True
    time: Optional[str] = None  # overrides hardware.slurm.time
    template: str = "torchrun.sbatch.j2"  # file in slurm/


@dataclass
class PromptConfig:
    template: Optional[str] = None  # None: the model's template
    system_prompt: Optional[str] = None  # None: the template's published default; "": none


@dataclass
class EvalTask:
    name: str = MISSING  # lm-eval task name
    num_fewshot: int = 0
    metric: str = "acc"


@dataclass
class EvalConfig:
    name: str = MISSING
    tasks: list[EvalTask] = field(default_factory=list)
    batch_size: str = "auto"
    include_path: Optional[str] = None  # folder with local task YAMLs (relative to the project)
    limit: Optional[float] = None  # lm-eval --limit, for smoke tests
    leaderboard: bool = False  # average the tasks like the Open Italian LLM Leaderboard


@dataclass
class PipelineStep:
    name: str = MISSING  # the step's name, its run directory under the pipeline directory
    overrides: list[str] = field(default_factory=list)  # Hydra overrides of this step, e.g. ["stage=adapt"]
    input: Optional[str] = "previous"  # base model: "previous" step's output, "base" model, or a step name


@dataclass
class PipelineConfig:
    name: str = MISSING
    description: str = ""
    steps: list[PipelineStep] = field(default_factory=list)


@dataclass
class TargetScores:
    """Published scores of a preset's model, the target after evaluation (llamantino-facts §3)."""

    model_id: str = MISSING
    scores: dict[str, float] = field(default_factory=dict)
    source: str = ""


@dataclass
class RunConfig:
    name: Optional[str] = None  # None: <stage>-<model>-<data>
    output_root: str = "runs"
    input_model: Optional[str] = None  # a run directory or local model directory to start from
    input_adapter: Optional[str] = None  # merge: the run directory or folder holding the adapter
    notes: str = ""


@dataclass
class LlamantinoConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    stage: StageConfig = MISSING
    hardware: HardwareConfig = MISSING
    launcher: LauncherConfig = MISSING
    eval: EvalConfig = MISSING
    pipeline: Optional[PipelineConfig] = None
    prompt: PromptConfig = field(default_factory=PromptConfig)
    run: RunConfig = field(default_factory=RunConfig)
    experiment: Optional[str] = None  # the preset's name, set by conf/experiment/*
    target: Optional[TargetScores] = None


def register_configs() -> None:
    """Register the root schema (used by conf/config.yaml's defaults list)."""
    ConfigStore.instance().store(name="llamantino_schema", node=LlamantinoConfig, replace=True)
