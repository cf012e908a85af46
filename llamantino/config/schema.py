"""Typed schema of every config group: what ``python -m llamantino`` composes and every module reads.

The primary config (``conf/config.yaml``) starts from ``llamantino_schema``, so every group option
is merged into these dataclasses: a misspelt key, a wrong type or a value outside a choice (the
``StrEnum`` fields) fails at composition and names the key path (``stage.lora_r``). Ranges are
checked once, in ``__post_init__``, for configs composed by Hydra and read back from files alike.
The rest of llamantino reads the config by attribute (``cfg.stage.task``), never by string key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from llamantino.errors import ConfigError
from llamantino_plugin.formats import DataFormat


class Adapter(StrEnum):
    lora = "lora"
    qlora = "qlora"


class RL(StrEnum):
    dpo = "dpo"


class BadRows(StrEnum):
    strict = "strict"
    skip = "skip"


class OnUnsupported(StrEnum):
    fallback = "fallback"  # train the next cheaper method, announced
    error = "error"


# "raise" is a keyword, so this choice is built with the functional API (members by name).
ExcessLength = StrEnum("ExcessLength", [("drop", "drop"), ("truncate", "truncate"), ("raise", "raise")])

LRScheduler = StrEnum("LRScheduler", [(name, name) for name in (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay", "one_cycle", "rex")])


@dataclass(frozen=True)
class AcceleratorKind:
    """Defaults `llamantino site init` writes for a GPU type (a hardware option may say otherwise)."""

    memory_gb: float  # the common model's memory
    peak_tflops: float  # dense bf16 TFLOP/s, for planning


#: The accelerator kinds hardware options may name: a new kind is one row here and its hardware YAML.
ACCELERATORS: dict[str, AcceleratorKind] = {
    "cpu": AcceleratorKind(memory_gb=0, peak_tflops=0),
    "a100": AcceleratorKind(memory_gb=80, peak_tflops=312),
    "h100": AcceleratorKind(memory_gb=80, peak_tflops=989),
}
Accelerator = StrEnum("Accelerator", [(name, name) for name in ACCELERATORS])


class Attention(StrEnum):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"


ATTENTION_IMPLEMENTATIONS = tuple(item.value for item in Attention)


class Tracker(StrEnum):
    none = "none"
    tensorboard = "tensorboard"  # event files in the run directory, no account
    wandb = "wandb"
    mlflow = "mlflow"


class TrackerMode(StrEnum):
    auto = "auto"  # online where the hardware has network, offline where it has not
    online = "online"
    offline = "offline"


class EvalMode(StrEnum):
    leaderboard = "leaderboard"  # the harness behaviour of the published scores' time, as known (llamantino/stages/eval.py)
    current = "current"  # the installed harness as it is


class EvalDtype(StrEnum):
    """lm-eval's ``dtype`` model argument (``eval.dtype``)."""
    auto = "auto"  # the checkpoint's own (config.json's torch_dtype): what the leaderboard's commands did
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class ReleaseWhat(StrEnum):
    model = "model"  # the adapter merged into its base (or the full model), as sharded safetensors
    adapter = "adapter"  # the LoRA adapter alone, with its base named in the card


class LauncherName(StrEnum):
    dry = "dry"
    local = "local"
    slurm = "slurm"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # tab and newline are allowed below
_LINE_BREAK = re.compile(r"[\n\t]")


def _check_text(key: str, value, multiline: bool) -> None:
    """No control characters in any string; no line breaks outside fields declared multi-line."""
    if isinstance(value, str):
        if _CONTROL.search(value) or (not multiline and _LINE_BREAK.search(value)):
            raise ConfigError(f"{key}={value!r} contains a control character or line break; "
                              + ("only printable text is allowed" if multiline else "it must be one line of text"))
    elif isinstance(value, dict):
        for name, item in value.items():
            _check_text(f"{key}.{name}", str(name), False)
            _check_text(f"{key}.{name}", item, multiline)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_text(f"{key}[{index}]", item, multiline)


# Characters that change how a name is shown without being seen: bidi controls (U+202A-202E,
# U+2066-2069, U+200E/F, U+061C), zero-width characters (U+200B-200D, U+2060, U+FEFF) and every other
# format or control character, line and paragraph separators, private-use, surrogate and unassigned code points.
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def folder_name(key: str, name: str) -> str:
    """A name that becomes a folder (a run, a pipeline step): NFC-normalised, so one name is one folder;
    no path separators, dot-names or characters that make a look-alike of another name."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{key}={name!r} cannot be a folder name: no '/', not empty, not starting with '.'")
    for char in name:
        if unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            raise ConfigError(f"{key}={ascii(name)} contains U+{ord(char):04X} "
                              f"({unicodedata.name(char, 'unnamed')}), an invisible or control character that "
                              "makes look-alike folder names; use visible characters only")
    return unicodedata.normalize("NFC", name)


class Checked:
    """Base of every config section: strings checked once, then the section's own ranges (``check``)."""

    KEY: ClassVar[str] = ""
    MULTILINE: ClassVar[tuple[str, ...]] = ()  # fields that may hold several lines (never rendered into scripts)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not dataclasses.is_dataclass(value):
                key = f"{self.KEY}.{item.name}".lstrip(".")
                _check_text(key, value, item.name in self.MULTILINE)
                check_bounds(key, value, item.metadata.get("bounds"))
        self.check()

    def check(self) -> None:
        """Ranges and cross-field rules of the section."""


SLURM_TIME = re.compile(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", re.ASCII)  # D-HH:MM:SS, HH:MM:SS, MM:SS, MM, D-HH, ...


def time_seconds(text: str) -> int:
    """SLURM time (``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS``, ``MM``) in seconds."""
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:  # minutes, or with days: hours
        hours, minutes, seconds = (parts[0], 0, 0) if days else (0, parts[0], 0)
    elif len(parts) == 2:
        hours, minutes, seconds = (parts[0], parts[1], 0) if days else (0, parts[0], parts[1])
    else:
        hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def _slurm_time(key: str, value) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not SLURM_TIME.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is not a SLURM time (D-HH:MM:SS, HH:MM:SS, MM:SS or minutes)")
    if time_seconds(value) < 60:
        raise ConfigError(f"{key}={value!r} is under a minute; a job needs at least one")


@dataclass(frozen=True)
class Bounds:
    """The valid range of a numeric field, declared with the field (``metadata=at_least(1)``) and
    checked by :class:`Checked` for every section; every float is also finite (no inf, no nan)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is outside the range
    high_open: bool = False

    def holds(self, value) -> bool:
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            if self.low == 0:
                return "be positive" if self.low_open else "not be negative"
            return f"be above {self.low:g}" if self.low_open else f"be at least {self.low:g}"
        return (f"be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}")


def at_least(minimum) -> dict:
    return {"bounds": Bounds(low=minimum)}


def positive() -> dict:
    return {"bounds": Bounds(low=0, low_open=True)}


def within(low, high, *, low_open: bool = False, high_open: bool = False) -> dict:
    return {"bounds": Bounds(low, high, low_open, high_open)}


#: Declares a field whose value is a shell expression ($WORK-style storage roots): the only values
#: that reach job scripts with ``$VAR`` live (render/sbatch.py asks for this mark before it keeps one).
SHELL_EXPRESSION = {"shell": True}


def check_bounds(key: str, value, bounds: Bounds | None) -> None:
    """Floats anywhere in ``value`` (lists and mappings too) are finite; ``value`` itself is within ``bounds``."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number"
                          + (f"; it must {bounds.describe()}" if bounds else ""))
    if isinstance(value, dict):
        for name, item in value.items():
            check_bounds(f"{key}.{name}", item, None)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_bounds(f"{key}[{index}]", item, None)
    elif bounds is not None and isinstance(value, (int, float)) and not bounds.holds(value):
        raise ConfigError(f"{key}={value} must {bounds.describe()}")


class RopeType(StrEnum):
    """RoPE scalings a Llama/Mistral checkpoint takes through its config (transformers' ``rope_type``)."""
    linear = "linear"  # positions divided by the factor (position interpolation)
    dynamic = "dynamic"  # NTK-aware, the base grows with the length


@dataclass
class RopeScaling(Checked):
    """Train on sequences ``factor`` times the checkpoint's context length."""
    KEY = "model.rope_scaling"
    type: RopeType = RopeType.linear
    factor: float = field(default=MISSING, metadata=within(1, 64, low_open=True))


@dataclass
class ExpertsConfig(Checked):
    """A mixture-of-experts model: its routing, and where LoRA reaches its experts and router.

    transformers 5 stores each layer's experts as fused 3-D parameters (not Linear modules), so
    LoRA reaches them through PEFT's ``target_parameters`` (Axolotl's ``lora_target_parameters``)."""
    KEY = "model.experts"
    count: int = field(default=MISSING, metadata=at_least(2))  # experts per layer (num_local_experts)
    per_token: int = field(default=MISSING, metadata=at_least(1))  # experts each token goes through (top-k)
    router_aux_loss_coef: float = field(default=0.02, metadata=within(0, 1))  # load-balancing loss weight
    parameters: list[str] = field(default_factory=lambda: ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    router: str = "mlp.gate"  # the router module (trained in full with stage.train_router=true)

    def check(self) -> None:
        if self.per_token > self.count:
            raise ConfigError(f"model.experts.per_token={self.per_token} exceeds model.experts.count={self.count}; "
                              "a token goes through at most every expert")


@dataclass
class ModelConfig(Checked):
    KEY = "model"
    MULTILINE = ("source",)
    name: str = MISSING
    hub_id: Optional[str] = None  # None: built locally by `builder`
    revision: Optional[str] = None  # pinned hub commit; None: not pinned (provenance says so)
    builder: Optional[str] = None  # tiny_llama, tiny_mixtral, ...: llamantino builds it (llamantino/inputs/tiny.py)
    family: str = MISSING  # llama2 | llama3 | mistral | mixtral | phi3 | qwen2 | gemma2 | minerva
    architecture: str = "llama"  # transformers' model_type of the checkpoint (config.json)
    template: str = MISSING  # default prompt template (llamantino_plugin/templates/index.yaml)
    # Parameters in billions: all of them (memory: weights, optimizer state, merging, evaluation) and,
    # for a mixture of experts, those one token goes through (FLOPs). None: a dense model, all of them.
    params_b: float = field(default=MISSING, metadata=positive())
    active_params_b: Optional[float] = field(default=None, metadata=positive())
    experts: Optional[ExpertsConfig] = None  # a mixture of experts
    num_layers: int = field(default=MISSING, metadata=at_least(1))
    hidden_size: int = field(default=MISSING, metadata=at_least(1))
    context_length: int = field(default=4096, metadata=at_least(1))  # tokens the checkpoint was trained on
    rope_theta: float = field(default=10000.0, metadata=positive())  # the checkpoint's RoPE base (config.json)
    # Training beyond context_length: the RoPE positions scaled (Axolotl's overrides_of_model_config).
    rope_scaling: Optional[RopeScaling] = None
    decoder_layer: str = "LlamaDecoderLayer"  # FSDP wrapping unit
    # The model's LoRA targets where the stage names none: [] is every linear layer. A mixture of experts
    # names its attention projections, so the router stays frozen (stage.lora_experts adds the experts).
    lora_target_modules: list[str] = field(default_factory=list)
    # The hardware's attention implementation -> the one this model uses instead ({} : the hardware's).
    # Gemma-2 soft-caps its attention scores; SDPA drops the cap silently, so it takes eager there.
    attention: dict[str, str] = field(default_factory=dict)
    tied_embeddings: bool = False  # input and output embeddings share one matrix (config.json tie_word_embeddings)
    gated: bool = False  # the hub asks to accept a licence first
    license: str = ""  # a Hub licence id (llama2, apache-2.0, ...) or free text (released as "other")
    license_link: Optional[str] = None  # where a licence that is not a Hub id is written (released cards need it)
    source: str = ""  # where these facts come from, and which were verified
    # Stage settings this model needs, applied unless the command line sets them (announced as a notice):
    # the random-init tiny model trains its embeddings and takes large steps to learn in a minute.
    tuning: dict[str, Any] = field(default_factory=dict)

    @property
    def active_b(self) -> float:
        """Billions of parameters one token goes through: what the FLOPs of training and inference count."""
        return self.active_params_b if self.active_params_b is not None else self.params_b

    @property
    def max_sequence_len(self) -> int:
        """The longest sequence the model takes: its context length, times its RoPE scaling factor."""
        factor = self.rope_scaling.factor if self.rope_scaling else 1
        return int(self.context_length * factor)

    def check(self) -> None:
        if self.active_params_b is not None and self.active_params_b > self.params_b:
            raise ConfigError(f"model.active_params_b={self.active_params_b:g} exceeds model.params_b={self.params_b:g}; "
                              "a token goes through at most every parameter")
        if (self.experts is None) != (self.active_params_b is None):
            raise ConfigError(f"model {self.name}: model.experts and model.active_params_b go together (a mixture of "
                              "experts names both; a dense model neither)")
        for wanted, used in self.attention.items():
            for value in (wanted, used):
                if value not in ATTENTION_IMPLEMENTATIONS:
                    raise ConfigError(f"model.attention: {value!r} is not an attention implementation; valid: "
                                      f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")
        known = {item.name for item in dataclasses.fields(StageConfig)}
        for key in self.tuning:
            if key not in known:
                raise ConfigError(f"model.tuning.{key} is not a stage setting; valid: {', '.join(sorted(known))}")


@dataclass
class MixtureSource(Checked):
    """One registry entry of a mixture and its share of the token budget."""
    KEY = "data.sources[]"
    name: str = MISSING
    weight: float = 1.0

    def check(self) -> None:
        if not self.weight > 0:
            raise ConfigError(f"data.sources: {self.name} has weight {self.weight}; weights must be positive")


@dataclass
class DataConfig(Checked):
    """One registry entry of datasets_ita/registry (the ``data`` group points there)."""
    KEY = "data"
    MULTILINE = ('description', 'notes', 'source')

    name: str = MISSING
    description: str = ""
    format: DataFormat = MISSING
    purpose: list[str] = field(default_factory=list)  # stages it is meant for: adapt, sft, dpo
    path: Optional[str] = None  # local JSONL, relative to datasets_ita/ (or absolute)
    hub_id: Optional[str] = None
    subset: Optional[str] = None  # hub config name, e.g. "medium"
    revision: Optional[str] = None  # pinned hub commit; None: not pinned
    split: str = "train"
    num_rows: Optional[int] = field(default=None, metadata=at_least(1))  # rows in the split (approximate for hub sets; the planner uses it)
    columns: dict[str, str] = field(default_factory=dict)  # logical column -> column in the data
    # Corpus scale (text data from the hub, a hub mirror or a folder; prepared into the shared cache):
    files: list[str] = field(default_factory=list)  # glob patterns of the split's files inside the repository
    file_count: Optional[int] = field(default=None, metadata=at_least(1))  # files the patterns match (plans downloads without listing the hub)
    approx_tokens: Optional[int] = field(default=None, metadata=at_least(1))  # tokens in those files, estimated (sizes how many files are fetched)
    sources: list[MixtureSource] = field(default_factory=list)  # a mixture of registry entries, by weight
    sample_seed: int = 42  # the seeded order in which files are sampled (and a mixture's rows)
    mix_rows: Optional[int] = field(default=None, metadata=at_least(1))  # rows of an SFT/DPO mixture (None: as many as the weights allow, no row repeated)
    budget_margin: float = field(default=0.05, metadata=within(0, 10))  # prepare this much more than the stage consumes (0.05 = 5%)
    # Text only: rewrite each document with llamantino_plugin.formats.normalise_text (NFC, typographic
    # apostrophes and double quotes to ASCII, invisible characters removed, whitespace collapsed).
    # false: the documents are trained on exactly as read. Exact-duplicate and too-short removal are
    # not part of this switch: stage.text_dedup and stage.text_min_chars govern them (on the raw text
    # here). A mixture's own false applies to all its sources; else each source's entry decides.
    normalize: bool = True
    license: str = ""
    size: str = ""
    language: str = "it"
    source: str = ""  # where the facts of this entry come from
    notes: str = ""

    def check(self) -> None:
        names = [source.name for source in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.sources names a registry entry twice: {names}")
        self.row_slice()  # a malformed split is refused when composed
        from llamantino_plugin.formats import format_spec

        if not self.normalize and not format_spec(self.format).corpus:
            raise ConfigError(f"data.normalize=false: {self.name} is {self.format} data, whose rows are never "
                              "normalised (only text documents are); drop the setting")

    def row_slice(self) -> tuple[str, int, int | None] | None:
        """``train[:100000]`` -> ("train", 0, 100000); ``train[10:20]`` -> ("train", 10, 20); a plain
        split name -> None. Percentages (``train[:10%]``) come back as None here: only ``datasets``
        resolves them (the corpus path refuses them)."""
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[(\d*):(\d*)\])?", self.split)
        if match is None:
            if re.fullmatch(r"[A-Za-z0-9_.-]+\[\d*%?:\d*%?\]", self.split):
                return None
            raise ConfigError(f"data.split={self.split!r} is not a split: give a name (train) or a row slice "
                              "(train[:100000], train[1000:2000])")
        name, start, stop = match.groups()
        if start is None and stop is None:
            return None
        start_row, stop_row = int(start or 0), (int(stop) if stop else None)
        if stop_row is not None and stop_row <= start_row:
            raise ConfigError(f"data.split={self.split!r} selects no row: the end must be after the start")
        return name, start_row, stop_row

    @property
    def corpus_scale(self) -> bool:
        """Prepared into the shared cache within a token budget: text from a mixture or from the hub
        (SFT and DPO data are prepared too, as rows: llamantino/inputs/rows.py)."""
        from llamantino_plugin.formats import format_spec

        return format_spec(self.format).corpus and (bool(self.sources) or bool(self.hub_id))


RUN_NAME_GROUPS = ("model", "data", "eval", "hardware")


@dataclass
class StageConfig(Checked):
    KEY = "stage"
    name: str = MISSING
    task: str = "train"  # the stage type that runs it (llamantino/stages: train, merge, eval)
    # The config groups whose option names follow the stage's in the default run name
    # (<stage>-<model>-<data> for training): model, data, eval or hardware.
    name_parts: list[str] = field(default_factory=lambda: ["model", "data"])
    data_formats: list[DataFormat] = field(default_factory=list)  # formats this stage trains on
    # Method: adapter None = full fine-tune; lora; qlora (4-bit base).
    adapter: Optional[Adapter] = None
    cpu_adapter: Adapter = Adapter.lora  # documented fallback on CPU, where full fine-tuning/FSDP is impossible
    on_unsupported: OnUnsupported = OnUnsupported.fallback
    lora_r: int = field(default=64, metadata=at_least(1))
    lora_alpha: int = field(default=16, metadata=at_least(1))
    lora_dropout: float = field(default=0.1, metadata=within(0, 1, high_open=True))
    lora_target_modules: Optional[list[str]] = None  # None: the model's (model.lora_target_modules; [] every linear layer)
    # A mixture of experts (model.experts): LoRA on the expert MLPs too (their fused weights, through
    # PEFT's target_parameters; needs lora_dropout 0), and the router trained in full (frozen by default).
    lora_experts: bool = False
    train_router: bool = False
    lora_modules_to_save: Optional[list[str]] = None  # modules trained in full beside the adapter (embeddings)
    use_rslora: bool = False
    micro_batch_size: int = field(default=8, metadata=at_least(1))
    gradient_accumulation_steps: int = field(default=1, metadata=at_least(1))
    num_epochs: float = field(default=1.0, metadata=positive())
    max_steps: Optional[int] = field(default=None, metadata=at_least(1))
    sequence_len: int = field(default=1024, metadata=at_least(1))  # at most model.context_length (or its RoPE scaling)
    learning_rate: float = field(default=2.0e-4, metadata=positive())
    # used instead when a fallback trains an adapter
    adapter_learning_rate: Optional[float] = field(default=None, metadata=positive())
    lr_scheduler: LRScheduler = LRScheduler.cosine
    warmup_steps: Optional[int] = field(default=None, metadata=at_least(1))
    warmup_ratio: Optional[float] = field(default=None, metadata=within(0, 1, high_open=True))
    optimizer: str = "adamw_torch_fused"
    weight_decay: float = field(default=0.0, metadata=at_least(0))
    max_grad_norm: float = field(default=1.0, metadata=at_least(0))  # 0: no clipping (the HF Trainer clips above 0)
    gradient_checkpointing: bool = True
    sample_packing: bool = False  # used only where attention is flash_attention_2
    train_on_inputs: bool = False
    rl: Optional[RL] = None
    rl_beta: Optional[float] = field(default=None, metadata=positive())
    max_prompt_len: Optional[int] = field(default=None, metadata=at_least(1))
    val_set_size: float = field(default=0.0, metadata=at_least(0))  # a fraction below 1, else a row count
    save_steps: Optional[int] = field(default=None, metadata=at_least(1))
    saves_per_epoch: Optional[int] = field(default=None, metadata=at_least(1))
    save_total_limit: Optional[int] = field(default=None, metadata=at_least(1))
    logging_steps: int = field(default=1, metadata=at_least(1))
    excess_length_strategy: ExcessLength = ExcessLength["drop"]
    bad_rows: BadRows = BadRows.strict
    text_min_chars: int = field(default=20, metadata=at_least(0))
    text_dedup: bool = True  # drop exact duplicate documents (a prepared corpus: across the whole sample)
    text_near_dedup: bool = False  # prepared corpora: also drop near duplicates (MinHash, ~0.75 Jaccard or more)
    seed: int = 42
    # Seeds the adapter's initial weights alone (the ANITA DPO script: random_state=3407 for LoRA,
    # seed=42 for training); None: stage.seed seeds both.
    lora_seed: Optional[int] = None
    # Extra Axolotl keys, passed through; keys Axolotl does not know are refused.
    axolotl: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """What Axolotl would accept but fail on hours later (the ranges are declared with the fields)."""
        for part in self.name_parts:
            if part not in RUN_NAME_GROUPS:
                raise ConfigError(f"stage.name_parts: {part!r} is not one of {', '.join(RUN_NAME_GROUPS)}")
        if self.rl and self.rl_beta is None:
            raise ConfigError(f"stage.rl_beta is not set; rl={self.rl} needs a positive beta (e.g. stage.rl_beta=0.1)")


@dataclass
class QosLimit(Checked):
    KEY = "hardware.slurm.qos_limits[]"
    min_nodes: int = field(default=1, metadata=at_least(1))
    max_nodes: int = field(default=MISSING, metadata=at_least(1))
    max_time: str = MISSING  # SLURM time, e.g. "00:30:00"

    def check(self) -> None:
        _slurm_time("hardware.slurm.qos_limits[].max_time", self.max_time)


@dataclass
class SlurmConfig(Checked):
    KEY = "hardware.slurm"
    partition: Optional[str] = None
    qos: Optional[str] = None
    account: Optional[str] = None  # None: sbatch takes $SBATCH_ACCOUNT
    account_required: bool = False  # the cluster bills every job to a project
    time: str = "24:00:00"
    mem: Optional[str] = None  # per node, e.g. "494000M"; None: the partition default
    gres: Optional[str] = None  # None: "gpu:<gpus_per_node>" on GPU hardware, nothing on CPU
    exclusive: bool = False
    modules: list[str] = field(default_factory=list)  # `module load` lines, in order
    env: dict[str, str] = field(default_factory=dict)  # exported in the job, as literal text
    rdzv_port: int = field(default=29500, metadata=within(1024, 64535))  # the job adds up to 999 to it
    qos_limits: dict[str, QosLimit] = field(default_factory=dict)
    extra_directives: list[str] = field(default_factory=list)  # more `#SBATCH` options, e.g. "--exclude=lrdn0001"

    def check(self) -> None:
        _slurm_time("hardware.slurm.time", self.time)


@dataclass
class StorageConfig(Checked):
    """Where shared files live. ``$VAR`` and ``~`` are expanded where they are used (the job's shell
    for HF_HOME; the submitting shell and the plugin for the cache), so recipes stay the same for everyone.
    These roots are the fields declared ``SHELL_EXPRESSION``: nowhere else does a ``$`` reach a job live."""
    KEY = "hardware.storage"
    # run, pipeline and sweep directories (run.output_root follows it unless set)
    runs: str = field(default="runs", metadata=SHELL_EXPRESSION)
    cache: str = field(default="~/.cache/llamantino", metadata=SHELL_EXPRESSION)  # prepared corpora: <cache>/prepared/<key>
    # HF_HOME of prepare jobs and training jobs alike; None: the environment's
    hf_home: Optional[str] = field(default=None, metadata={**SHELL_EXPRESSION, "exported_as": "HF_HOME"})
    # a folder laid out as the hub (<mirror>/datasets/<owner>/<name>/...)
    hub_mirror: Optional[str] = field(default=None, metadata=SHELL_EXPRESSION)
    # sustained checkpoint write bandwidth of one job, GB/s (sizes the USR1 lead)
    write_gbps: float = field(default=1.0, metadata=positive())
    # runs whose checkpoints may exceed this are refused under $HOME
    home_limit_gb: float = field(default=20.0, metadata=at_least(0))


@dataclass
class PrepareConfig(Checked):
    """Resources of the corpus preparation jobs (a SLURM array on CPU nodes, then a merge)."""
    KEY = "hardware.prepare"
    tasks: int = field(default=2, metadata=at_least(1))  # array tasks; each tokenises its slice of the sampled files
    partition: Optional[str] = None  # None: hardware.slurm.partition
    qos: Optional[str] = None
    cpus: int = field(default=1, metadata=at_least(1))
    mem: Optional[str] = None
    time: str = "04:00:00"
    network: bool = False  # the prepare nodes reach the hub (else downloads run on download_partition)
    download_partition: Optional[str] = None  # a partition with network, e.g. Leonardo's lrd_all_serial
    download_qos: Optional[str] = None
    download_time: str = "04:00:00"

    def check(self) -> None:
        _slurm_time("hardware.prepare.time", self.time)
        _slurm_time("hardware.prepare.download_time", self.download_time)


class ContainerRuntime(StrEnum):
    apptainer = "apptainer"
    singularity = "singularity"


@dataclass
class ContainerConfig(Checked):
    """Run every Python of the job inside an Apptainer/Singularity image (``<runtime> exec``)."""
    KEY = "hardware.container"
    image: str = field(default=MISSING, metadata=SHELL_EXPRESSION)  # a .sif file (or any image reference the runtime takes)
    runtime: ContainerRuntime = ContainerRuntime.apptainer
    # --bind src[:dst] (the run and cache folders, $WORK, ...)
    binds: list[str] = field(default_factory=list, metadata=SHELL_EXPRESSION)


@dataclass
class HardwareConfig(Checked):
    KEY = "hardware"
    name: str = MISSING
    accelerator: Accelerator = Accelerator.cpu
    nodes: int = field(default=1, metadata=at_least(1))
    gpus_per_node: int = 0  # at least 1 on GPU hardware (checked below)
    gpu_memory_gb: float = field(default=0.0, metadata=at_least(0))
    cpus_per_node: int = field(default=2, metadata=at_least(1))
    bf16: bool = False
    tf32: bool = False
    fp8: bool = False
    compute_capability: Optional[str] = None  # "sm_80" for A100
    attn_implementation: Attention = Attention.sdpa  # flash_attention_2 on A100/H100
    peak_tflops: float = field(default=0.0, metadata=at_least(0))  # dense bf16 TFLOP/s per GPU, for planning
    offline: bool = False  # compute nodes have no internet
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    container: Optional[ContainerConfig] = None

    def check(self) -> None:
        check_bounds("hardware.gpus_per_node", self.gpus_per_node, Bounds(low=1 if self.gpu else 0))
        if self.accelerator != Accelerator.cpu and not self.gpu_memory_gb > 0:
            raise ConfigError(f"hardware.gpu_memory_gb={self.gpu_memory_gb} must be positive on GPU hardware")

    @property
    def gpu(self) -> bool:
        return self.accelerator != Accelerator.cpu


@dataclass
class LauncherConfig(Checked):
    KEY = "launcher"
    name: LauncherName = MISSING
    submit: bool = True  # slurm: false renders and writes everything, submits nothing
    validate: bool = True  # run Axolotl's own validation before writing
    array_parallelism: int = field(default=4, metadata=at_least(1))  # sweeps: the %N throttle of the job array
    # USR1 this long before the time limit: checkpoint and requeue. None: the time to write the
    # model's checkpoint at hardware.storage.write_gbps, plus a minute, at least 120 s.
    signal_lead_s: Optional[int] = field(default=None, metadata=at_least(10))
    requeue: bool = True
    time: Optional[str] = None  # overrides hardware.slurm.time
    template: str = "torchrun.sbatch.j2"  # file in slurm/

    def check(self) -> None:
        _slurm_time("launcher.time", self.time)


@dataclass
class TrackingConfig(Checked):
    """Experiment tracking; secrets (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN) come from the environment only."""

    KEY = "tracking"
    name: Tracker = Tracker.tensorboard
    project: str = "llamantino"  # W&B project / MLflow experiment
    entity: Optional[str] = None  # W&B team
    mode: TrackerMode = TrackerMode.auto  # W&B: online or offline (then `python -m llamantino sync`)
    # MLflow: a tracking server (http://host:5000) or a SQLite file (sqlite:////abs/mlflow.db);
    # None: <run.output_root>/mlflow.db. MLflow 3 refuses folder stores (file:).
    uri: Optional[str] = None
    tags: list[str] = field(default_factory=list)  # added to the run's own: model, data, stage, git commit

    def check(self) -> None:
        from llamantino.config.tracking import check_tracking_uri

        check_tracking_uri(self.uri)


@dataclass
class PromptConfig(Checked):
    KEY = "prompt"
    MULTILINE = ('system_prompt',)
    template: Optional[str] = None  # None: the model's template
    system_prompt: Optional[str] = None  # None: the template's published default; "": none
    # Script-exact mode for the ANITA presets: the text, tokens and truncation the authors' scripts
    # (marcopoli/LLaMAntino-3-ANITA f5919e2, TRL 0.8.5) produced; Llama-3 chat templates, SFT and DPO
    # only (llamantino_plugin/script_exact.py says what exactly).
    script_exact: bool = False


@dataclass
class EvalTask(Checked):
    KEY = "eval.tasks[]"
    name: str = MISSING  # lm-eval task name
    num_fewshot: int = field(default=0, metadata=at_least(0))
    metric: str = "acc"


@dataclass
class EvalConfig(Checked):
    KEY = "eval"
    name: str = MISSING
    tasks: list[EvalTask] = field(default_factory=list)
    batch_size: str = "auto"
    include_path: Optional[str] = None  # folder with local task YAMLs (relative to the project)
    limit: Optional[float] = field(default=None, metadata=positive())  # lm-eval --limit, for smoke tests
    leaderboard: bool = False  # average the tasks like the Open Italian LLM Leaderboard
    mode: EvalMode = EvalMode.current  # leaderboard: reproduce the published scores' harness behaviour
    # lm-eval's model_args dtype. None: the mode's own: leaderboard auto (the checkpoint's dtype: the
    # leaderboard's commands pass none, though every swap-uniba result file reports bfloat16: set
    # eval.dtype=bfloat16 to load as those files say); current bfloat16 on bf16 GPUs, float16 on others.
    dtype: Optional[EvalDtype] = None
    data_parallel: bool = True  # a model that fits one GPU is evaluated on every GPU of the node, one copy each
    log_samples: bool = False  # lm-eval --log_samples: each sample's prompt, answer and score kept under eval_results/


#: A Hub repository id, <owner>/<name> (huggingface_hub validates it again before a push).
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", re.ASCII)
#: A branch of a Hub repository: no spaces, no shell or ref syntax.
HUB_BRANCH = re.compile(r"[A-Za-z0-9][\w.-]{0,99}", re.ASCII)
SHARD_SIZE = re.compile(r"[1-9][0-9]{0,5}(KB|MB|GB|KiB|MiB|GiB)", re.ASCII)


def check_hub_target(key: str, repo_id: Optional[str], branch_key: str, branch: Optional[str]) -> None:
    """A push target that names one repository and branch, and nothing else."""
    if repo_id is not None and not HUB_REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"{key}={repo_id!r} is not a Hub repository id: write <owner>/<name> (letters, digits, "
                          "'-', '_', '.')")
    if branch is not None and not HUB_BRANCH.fullmatch(branch):
        raise ConfigError(f"{branch_key}={branch!r} is not a branch name: letters, digits, '-', '_', '.'")


def non_commercial(license_text: Optional[str]) -> bool:
    """Whether a licence (a model's or a dataset's, as the config writes it) forbids commercial use:
    CC-BY-NC-*, "non-commercial" terms."""
    text = (license_text or "").lower()
    return bool(re.search(r"(^|[-\s(])nc([-\s)]|$)", text)) or "non-commercial" in text or "noncommercial" in text


@dataclass
class ReleaseConfig(Checked):
    """What ``stage=release`` writes (a folder laid out as a Hub model repository) and where it may be pushed."""

    KEY = "release"
    what: ReleaseWhat = ReleaseWhat.model
    max_shard_size: str = "5GB"  # safetensors shards of the merged weights (huggingface_hub's size syntax)
    repo_id: Optional[str] = None  # recorded in release.json; `llamantino release <run> --push` names the target
    private: bool = False
    revision: Optional[str] = None  # a branch of the Hub repository; None: main

    def check(self) -> None:
        if not SHARD_SIZE.fullmatch(str(self.max_shard_size)):
            raise ConfigError(f"release.max_shard_size={self.max_shard_size!r} must be a size like 5GB or 500MB")
        check_hub_target("release.repo_id", self.repo_id, "release.revision", self.revision)


@dataclass
class PipelineStep(Checked):
    KEY = "pipeline.steps[]"
    name: str = MISSING  # the step's name, its run directory under the pipeline directory
    overrides: list[str] = field(default_factory=list)  # Hydra overrides of this step, e.g. ["stage=adapt"]
    input: Optional[str] = "previous"  # base model: "previous" step's output, "base" model, or a step name

    def check(self) -> None:
        if self.name is not MISSING:
            self.name = folder_name("pipeline.steps[].name", self.name)


@dataclass
class PipelineConfig(Checked):
    KEY = "pipeline"
    MULTILINE = ('description',)
    name: str = MISSING
    description: str = ""
    steps: list[PipelineStep] = field(default_factory=list)


class SourceStatus(StrEnum):
    """How a preset's value is known (the ``provenance`` table of conf/experiment/*.yaml)."""
    verified = "verified"  # read in the named source (which may itself differ from the published run: it says so)
    unpublished = "unpublished"  # the authors published nothing: our documented choice
    conflict = "conflict"  # the sources disagree: the preset follows one, ``override`` gives the other


#: A provenance key: a dotted config key (stage.learning_rate) or a group's option (data, model, ...).
PROVENANCE_KEY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*", re.ASCII)


@dataclass
class ValueSource(Checked):
    """Where one value of a preset comes from: a row of its ``provenance`` table (llamantino/config/provenance.py)."""
    KEY = "provenance[]"

    source: str = ""  # where the value comes from (a script at a commit, a card, the slides, "ours: ...")
    status: str = SourceStatus.verified.value  # verified | unpublished | conflict (checked below)
    override: Optional[str] = None  # conflict: the override that follows the other source (stage.adapter=qlora)

    def check_as(self, key: str) -> None:
        """The entry of setting ``key``: a known status; a conflict names the override that follows the other source."""
        if not PROVENANCE_KEY.fullmatch(str(key)):
            raise ConfigError(f"provenance.{key}: not a config key (a dotted key such as stage.learning_rate, or a "
                              "group: model, data, stage, hardware, launcher)")
        if self.status not in {status.value for status in SourceStatus}:
            raise ConfigError(f"provenance.{key}.status={self.status!r} is not valid; use one of: "
                              f"{', '.join(status.value for status in SourceStatus)}")
        if self.status == SourceStatus.conflict and not self.override:
            raise ConfigError(f"provenance.{key}: status conflict must name the override that follows the other "
                              "source (override: key=value)")


@dataclass
class TargetScores(Checked):
    """Published scores of a preset's model, the target after evaluation (llamantino-facts §3)."""
    KEY = "target"
    MULTILINE = ('source',)

    model_id: str = MISSING
    scores: dict[str, float] = field(default_factory=dict)
    source: str = ""


class Pruner(StrEnum):
    none = "none"
    median = "median"  # Optuna's MedianPruner: stop a trial whose objective is worse than the median at a step


@dataclass
class TrialConfig(Checked):
    """A run that is a trial of a study (``llamantino search`` sets it): the plugin reports the
    objective's intermediate values to the study's journal and stops the trial when its pruner says so."""
    KEY = "run.trial"

    study: str = MISSING  # the study directory (absolute)
    number: int = field(default=0, metadata=at_least(0))
    metric: str = "eval_loss"
    direction: str = "minimize"
    pruner: Pruner = Pruner.none
    startup_trials: int = field(default=1, metadata=at_least(0))  # trials finished before any is pruned

    def check(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise ConfigError(f"run.trial.direction={self.direction!r}: use minimize or maximize")


@dataclass
class RunConfig(Checked):
    KEY = "run"
    MULTILINE = ('notes',)
    name: Optional[str] = None  # None: <stage>-<model>-<data>
    output_root: str = "runs"
    input_model: Optional[str] = None  # a run directory or local model directory to start from
    input_adapter: Optional[str] = None  # merge: the run directory or folder holding the adapter
    notes: str = ""
    trial: Optional[TrialConfig] = None  # set by llamantino search on each trial it runs

    def check(self) -> None:
        if self.name is not None:
            self.name = folder_name("run.name", self.name)


@dataclass
class LlamantinoConfig(Checked):
    KEY = ""
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    stage: StageConfig = MISSING
    hardware: HardwareConfig = MISSING
    launcher: LauncherConfig = MISSING
    eval: EvalConfig = MISSING
    pipeline: Optional[PipelineConfig] = None
    prompt: PromptConfig = field(default_factory=PromptConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    experiment: Optional[str] = None  # the preset's name, set by conf/experiment/*
    target: Optional[TargetScores] = None
    # Where each value a preset sets comes from (conf/experiment/*: setting -> source and status); empty elsewhere.
    provenance: dict[str, ValueSource] = field(default_factory=dict)

    def check(self) -> None:
        for key, entry in self.provenance.items():
            entry.check_as(key)
        if not isinstance(self.model, ModelConfig) or not isinstance(self.stage, StageConfig):
            return  # the schema's own defaults (MISSING), before composition
        longest, stage = self.model.max_sequence_len, self.stage
        for key in ("sequence_len", "max_prompt_len"):
            length = getattr(stage, key)
            if length is not None and length > longest:
                scaled = (f" x model.rope_scaling.factor={self.model.rope_scaling.factor:g}"
                          if self.model.rope_scaling else "")
                raise ConfigError(
                    f"stage.{key}={length} exceeds model.context_length={self.model.context_length}{scaled} "
                    f"of {self.model.name}; use stage.{key}<={longest}, or train longer sequences with "
                    "+model.rope_scaling={type:linear,factor:F} (F = length / context length)")

    @property
    def template(self) -> str:
        """The prompt template in force: ``prompt.template``, else the model's."""
        return self.prompt.template or self.model.template

    @property
    def time_limit(self) -> str:
        return self.launcher.time or self.hardware.slurm.time


def register_configs() -> None:
    """Register the root schema (used by conf/config.yaml's defaults list)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="llamantino_schema", node=LlamantinoConfig, replace=True)


# --- plain data in and out (config.yaml of a run, shared recipes) -----------------------------------


def to_plain(value):
    """A config (or part of one) as plain YAML/JSON data: enums as their strings."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value





def from_plain(cls, data, key: str = ""):
    """Build ``cls`` from plain data, checking every key and type, never resolving ``${...}``.

    Files a run or a recipe wrote are data: unlike OmegaConf, this reads strings as strings.
    """
    hints = typing.get_type_hints(cls)
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        raise ConfigError(f"{key + '.' if key else ''}{unknown[0]} is not a config key; valid: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        here = f"{key}.{f.name}" if key else f.name
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name], here)
        elif f.default is MISSING or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise ConfigError(f"{here} is missing")
    return cls(**values)


def _value(hint, value, key: str):
    if hint is Any:  # free-form data (a record's counts, git state): taken as it is, null included
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is Any:
            return value
    if value is None:
        raise ConfigError(f"{key} may not be null")
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        return [_value(args[0], item, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is tuple:  # tuple[X, ...] or a fixed tuple[X, Y]; written to JSON as a list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], item, f"{key}[{index}]") for index, item in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {len(value)}")
        return tuple(_value(arg, item, f"{key}[{index}]") for index, (arg, item) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return {str(name): _value(args[1], item, f"{key}.{name}") for name, item in value.items()}
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint[value.value if isinstance(value, Enum) else str(value)]
        except KeyError:
            raise ConfigError(f"{key}={value!r} is not valid; use one of: {', '.join(m.value for m in hint)}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")
