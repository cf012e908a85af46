"""Share runs as files, reproduce them, compare them: the library behind ``python -m llamantino recipe``.

A recipe file is data. Import reads it bounded (MAX_RECIPE_BYTES, MAX_RECIPE_DEPTH) as plain YAML
(no anchors, aliases, merge keys or tags), accepts only known keys, never instantiates
``_target_``, reads the config with the schema's own reader (``${...}`` stays text: nothing is
resolved), accepts only what the allow-list by exact key path below lets a shared recipe set,
re-renders the Axolotl YAML and the sbatch script from the config (the quoting renderer, never the
file's own text) and refuses when they differ from the exported ones, or when a checksum or a
data hash does not match, unless told otherwise. The checksum protects against accidents (a
damaged or hand-edited file), not against someone who edits the file and recomputes it: the
re-render and the checks above are what keep a hostile recipe out. Nothing is overwritten.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import re
import shlex
import types
import typing
from enum import Enum
from pathlib import Path

import yaml

from llamantino.config.compose import check_run_name
from llamantino.errors import ConfigError
from llamantino.launchers import launcher_for
from llamantino.paths import CONF_DIR, DATASETS_DIR, PROJECT_ROOT, RECIPES_DIR
from llamantino.records.files import check_plain_yaml
from llamantino.records.provenance import compact
from llamantino.records.rundir import RunDir, unique_path, write_text
from llamantino.config.schema import LlamantinoConfig, SlurmConfig, StorageConfig, from_plain, to_plain
from llamantino.stages import stage_for

FORMAT = 1
KEYS = {"llamantino_recipe", "name", "created", "versions", "overrides", "config", "axolotl_yaml", "job_sbatch",
        "eval_json", "lock", "checksum"}
# A name is a secret's when one of these words stands in it as a whole word (``HF_TOKEN``,
# ``wandb_api_key``), not as part of another (``TOKENIZERS_PARALLELISM``, ``max_tokens``).
SECRET_NAME = re.compile(r"(?<![A-Za-z])(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?"
                         r"|AUTH)(?![A-Za-z])", re.IGNORECASE)
# Values shaped like known tokens, whatever they are called.
SECRET_VALUE = re.compile(
    r"hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|sk-(?:proj-)?[A-Za-z0-9_-]{20,}"  # OpenAI-style API keys
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"  # GitHub
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id (long-term, temporary)
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JSON web tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"  # user:password@host in a URI (MLflow, databases)
    r"|(?<![A-Za-z])(TOKEN|SECRET|PASSWORD|API_?KEY)\s*[=:]\s*\S"  # NAME=value inside a string
    # and longer names in any case: MLFLOW_TRACKING_TOKEN=..., aws_secret_access_key: ...
    r"|(?i:(?<![A-Za-z])[A-Za-z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY)(?:_[A-Za-z0-9]+)*)"
    r"\s*[=:]\s*['\"]?[^\s'\"$]{8}"
)
# Shapes that are secrets only beside their service's name (a bare 40-hex string is also a git commit):
# (service, shape) for a value under a key path naming the service; NAME=shape for the two written together.
SECRET_BESIDE = tuple(
    (re.compile(service, re.IGNORECASE), re.compile(shape),
     re.compile(rf"(?i:{service})[A-Za-z0-9_]*['\"]?\s*[=:]?\s*['\"]?{shape}(?![A-Za-z0-9/+=])"))
    for service, shape in (("wandb", r"[0-9a-f]{40}"),  # W&B API key
                           ("aws", r"[A-Za-z0-9/+]{40}")))  # AWS secret access key


def canonical(data) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def checksum(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "checksum"}).encode()).hexdigest()


def secrets_in(obj, path="") -> list[str]:
    """Where a secret may hide: values under keys named like one, or values shaped like known tokens
    (some only beside their service's name, in the key path or in the text)."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            named = SECRET_NAME.search(str(key))
            if named and (isinstance(value, str) and value or isinstance(value, list) and any(value)):
                found.append(here)  # flags like use_auth_token: true are no secret
            else:
                found += secrets_in(value, here)
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found += secrets_in(value, f"{path}[{index}]")
    elif isinstance(obj, str) and (SECRET_VALUE.search(obj) or any(
            service.search(path) and shape.fullmatch(obj.strip()) or inline.search(obj)
            for service, shape, inline in SECRET_BESIDE)):
        found.append(path)
    return found


# --- export ----------------------------------------------------------------------------------------


def export_run(run_dir: Path) -> dict:
    """The share record of a run directory (refuses anything that looks like a secret)."""
    run = RunDir(Path(run_dir))
    typed_config = run.config()
    config = to_plain(typed_config)
    provenance = run.provenance()
    leaks = secrets_in(config) + [f"overrides[{i}]" for i, o in enumerate(provenance.overrides) if secrets_in(o)]
    leaks += secrets_in({"lock": {"git": provenance.git, "model": compact(provenance.model)}})
    if leaks:
        raise ConfigError("refusing to export: these look like secrets (" + ", ".join(leaks) + "); "
                          "secrets belong in the job's environment, never in a recipe")
    if typed_config.run.input_model or typed_config.run.input_adapter:
        raise ConfigError(f"{run_dir} continues another run (run.input_model/input_adapter); export the pipeline's "
                          "steps from a preset or the first step instead")
    data = to_plain(provenance.data) or {}
    record = {
        "llamantino_recipe": FORMAT,
        "name": typed_config.run.name,
        "created": provenance.created,
        "versions": {k: provenance.packages.get(k) for k in ("llamantino", "axolotl", "torch", "transformers",
                                                                  "peft", "trl", "lm_eval")},
        "overrides": provenance.overrides,
        "config": config,
        "axolotl_yaml": _text(run / RunDir.RECIPE),
        "job_sbatch": _text(run / RunDir.SCRIPT),
        "eval_json": _text(run / RunDir.EVAL_PLAN),
        "lock": {
            "git": provenance.git,
            "model": compact(provenance.model),
            "data": {k: data.get(k) for k in ("name", "hub_id", "subset", "revision", "split", "sha256") if data.get(k)},
            "packages": provenance.packages,
        },
    }
    record["checksum"] = checksum(record)
    return record


def export_to(run_dir: Path, output: Path | None = None) -> Path:
    """Write the share record of ``run_dir`` to ``output`` (default ``<run name>.llamantino.yaml`` here),
    never over an existing file or through a symbolic link, and only once the record is complete."""
    record = export_run(run_dir)
    # The run's name comes from a file on disk: it may not choose a folder for the output.
    output = Path(output) if output else Path(f"{check_run_name(str(record['name']))}.llamantino.yaml")
    if output.is_symlink() or output.exists():
        raise ConfigError(f"{output} exists" + (" (a symbolic link)" if output.is_symlink() else "")
                          + "; llamantino never overwrites (choose another -o)")
    write_text(output, yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=120))  # atomic
    return output


def _text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


# --- import ----------------------------------------------------------------------------------------


# A recipe file is a few tens of KB; these bounds refuse a hostile one before it costs memory or time.
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_DEPTH = 20
VERSION_KEYS = ("llamantino", "axolotl", "torch", "transformers", "peft", "trl", "lm_eval")
LOCK_KEYS = {"git", "model", "data", "packages"}


def load_record(path: Path) -> dict:
    """Read and check a recipe file: bounded size, plain YAML (no anchors, aliases, merge keys or tags),
    known keys, format, checksum (names what is wrong)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a few tens of KB, "
                          "this is not one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a readable recipe (not UTF-8: {exc.reason} at byte {exc.start})") from None
    check_plain_yaml(text, path, ConfigError, MAX_RECIPE_DEPTH, "recipe")
    try:
        record = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a readable recipe (truncated or not YAML): {' '.join(str(exc).split())}") \
            from None
    if not isinstance(record, dict) or "llamantino_recipe" not in record:
        raise ConfigError(f"{path}: not a llamantino recipe (no llamantino_recipe key)")
    unknown = sorted(map(str, set(record) - KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)}; a recipe has: {', '.join(sorted(KEYS))}")
    missing = sorted({"config", "checksum", "versions", "axolotl_yaml", "overrides"} - set(record))
    if missing:
        raise ConfigError(f"{path}: truncated recipe, missing {', '.join(missing)}")
    for key, kind in (("config", dict), ("versions", dict), ("overrides", list), ("checksum", str),
                      ("lock", (dict, type(None))), ("axolotl_yaml", (str, type(None))), ("job_sbatch", (str, type(None))),
                      ("eval_json", (str, type(None)))):
        if key in record and not isinstance(record[key], kind):
            raise ConfigError(f"{path}: recipe key {key} has the wrong type ({type(record[key]).__name__})")
    if not all(isinstance(item, str) for item in record["overrides"]):
        raise ConfigError(f"{path}: recipe overrides must be strings")
    unknown = sorted(map(str, set(record["versions"]) - set(VERSION_KEYS)))
    if unknown or not all(isinstance(v, (str, type(None))) for v in record["versions"].values()):
        raise ConfigError(f"{path}: recipe versions may name only {', '.join(VERSION_KEYS)}, each with a version "
                          f"string" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    lock = record.get("lock") or {}
    unknown = sorted(map(str, set(lock) - LOCK_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)} in the recipe's lock; it has: "
                          f"{', '.join(sorted(LOCK_KEYS))}")
    if not isinstance(lock.get("data") or {}, dict):
        raise ConfigError(f"{path}: recipe key lock.data has the wrong type ({type(lock['data']).__name__})")
    if record["llamantino_recipe"] != FORMAT:
        raise ConfigError(f"{path}: recipe format {record['llamantino_recipe']!r} is not {FORMAT}; use the llamantino "
                          f"version that wrote it ({record['versions'].get('llamantino')})")
    return record


def _compatible(record: dict, allow: bool) -> None:
    from llamantino.records.provenance import package_versions

    here = package_versions()
    for package in ("llamantino", "axolotl"):
        theirs, ours = record["versions"].get(package), here.get(package)
        if theirs and ours and theirs.split(".")[:2] != ours.split(".")[:2] and not allow:
            raise ConfigError(f"recipe made with {package} {theirs}, this is {ours}: settings may mean something "
                              "else; install that version, or pass --allow-version-mismatch to render it anyway")


def _refuse_code(obj, path="config") -> None:
    """No instantiation targets, no interpolations (they can read the environment)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if str(key) in ("_target_", "_partial_", "_args_", "_recursive_", "_convert_"):
                raise ConfigError(f"recipe {path}.{key}: a shared recipe is data; instantiation keys are refused")
            _refuse_code(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            _refuse_code(value, f"{path}[{index}]")


# --- what a shared recipe may set (README: "Presets and shared recipes") ----------------------------
# An allow-list by exact key path: every setting of a recipe's config is checked here, and one the
# table does not know is refused. Numbers, booleans and null name no code, file or place; strings are
# accepted only under the keys below, where they are names, choices or free text, or after the check
# their key names. Anything refused can be accepted by the user, one exact key at a time (--allow).

# Names, choices and free text: checked by the schema (or looked up in the project's own files), they
# name no file, code or place (``*`` stands for one key of a mapping).
TEXT_KEYS = frozenset({
    "experiment", "model.name", "model.family", "model.license", "model.license_link", "model.builder",
    "model.architecture", "model.source", "model.lora_target_modules", "model.attention.*", "model.experts.parameters",
    "model.experts.router",
    "data.name", "data.description", "data.format", "data.purpose", "data.subset", "data.split",
    "data.columns.*", "data.sources", "data.license", "data.size", "data.language", "data.source", "data.notes",
    "stage.name", "stage.task", "stage.name_parts", "stage.data_formats", "stage.adapter", "stage.cpu_adapter",
    "stage.on_unsupported", "stage.lora_target_modules", "stage.lora_modules_to_save", "stage.lr_scheduler",
    "stage.rl", "stage.excess_length_strategy", "stage.bad_rows",
    "hardware.name", "hardware.accelerator", "hardware.compute_capability", "hardware.attn_implementation",
    "hardware.slurm.partition", "hardware.slurm.qos", "hardware.slurm.account", "hardware.slurm.time",
    "hardware.slurm.mem", "hardware.slurm.gres", "hardware.slurm.qos_limits.*.max_time",
    "hardware.prepare.partition", "hardware.prepare.qos", "hardware.prepare.mem", "hardware.prepare.time",
    "hardware.prepare.download_partition", "hardware.prepare.download_qos", "hardware.prepare.download_time",
    "hardware.container.runtime",
    "launcher.name", "launcher.time",
    "eval.name", "eval.tasks", "eval.batch_size", "eval.mode", "eval.dtype",
    "prompt.system_prompt",
    "release.what", "release.max_shard_size",
    "tracking.name", "tracking.mode", "tracking.project", "tracking.entity", "tracking.tags",
    "run.name", "run.notes", "run.output_root",  # the output root is --dest's at import
    "target.model_id", "target.scores.*", "target.source",
    "pipeline.name", "pipeline.description", "pipeline.steps",  # a record of the pipeline, never applied at import
})
# Names the code looks up among its own (a template, an optimizer, a layer class), never a path or a module.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)
NAME_KEYS = frozenset({"model.template", "prompt.template", "model.decoder_layer", "stage.optimizer"})
# A hub repository id (``owner/name``) or a git revision: no local path, no ``,`` or ``=`` (lm-eval
# reads ``--model_args`` as a comma-separated key=value list), no ``..``.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?", re.ASCII)
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]*", re.ASCII)
# Where the job writes and reads shared files: accepted only as this project's own hardware option
# (or the schema's defaults) sets them.
STORAGE_PATHS = ("hardware.storage.runs", "hardware.storage.cache", "hardware.storage.hf_home",
                 "hardware.storage.hub_mirror")
# Job environment variables a recipe may export: tuning knobs, by exact name. A variable that names
# a library, a file, a folder or a cache (NCCL_NET_PLUGIN, NCCL_DEBUG_FILE, NCCL_TOPO_FILE, HF_HOME,
# LD_PRELOAD, PYTHONPATH, ...) changes what code runs or where it reads and writes: refused.
SAFE_ENV = frozenset({
    "NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_IB_TIMEOUT", "NCCL_IB_RETRY_CNT", "NCCL_IB_HCA", "NCCL_IB_DISABLE",
    "NCCL_IB_GID_INDEX", "NCCL_IB_SL", "NCCL_IB_TC", "NCCL_IB_QPS_PER_CONNECTION", "NCCL_SOCKET_IFNAME",
    "NCCL_SOCKET_NTHREADS", "NCCL_NSOCKS_PERTHREAD", "NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL", "NCCL_SHM_DISABLE",
    "NCCL_NET_GDR_LEVEL", "NCCL_NET_GDR_READ", "NCCL_ALGO", "NCCL_PROTO", "NCCL_MIN_NCHANNELS",
    "NCCL_MAX_NCHANNELS", "NCCL_BUFFSIZE", "NCCL_NTHREADS", "NCCL_CROSS_NIC", "NCCL_COLLNET_ENABLE",
    "NCCL_NVLS_ENABLE", "NCCL_ASYNC_ERROR_HANDLING", "NCCL_BLOCKING_WAIT",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT", "TORCH_NCCL_ENABLE_MONITORING",
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", "TORCH_NCCL_AVOID_RECORD_STREAMS", "TORCH_DIST_INIT_BARRIER",
    "TORCH_DISTRIBUTED_DEBUG", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "TOKENIZERS_PARALLELISM", "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_LAUNCH_BLOCKING", "PYTORCH_CUDA_ALLOC_CONF",
    "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DOWNLOAD_TIMEOUT",
    "HF_HUB_ETAG_TIMEOUT", "PYTHONUNBUFFERED",
})
# Their values are numbers, words and option lists (``^docker0,lo``, ``expandable_segments:True``):
# no path, no ``$``, no space.
ENV_VALUE = re.compile(r"[A-Za-z0-9_.,:^+-]*", re.ASCII)
# Extra #SBATCH options a recipe may add: where the job runs, not as whom, where it writes or what it runs.
SAFE_DIRECTIVES = ("--exclude", "--constraint", "--reservation", "--nodelist", "--hint", "--switches",
                   "--distribution", "--gpus-per-task", "--mem-per-cpu", "--mem-per-gpu", "--cpus-per-gpu")
# Axolotl keys refused whatever their type: they push to or pull from the hub (kernels are code from
# the hub), run code the model brings, or send metrics off the machine.
UNSAFE_AXOLOTL = re.compile(r".*(hub|push|remote_code|kernels|gradio|otel|wandb|mlflow|comet|swanlab|trackio).*",
                            re.ASCII)


def _fixed_value(hint) -> bool:
    """A type whose values are numbers, booleans, null or fixed choices: none names code, a file or a place."""
    if hint in (bool, int, float, type(None)):
        return True
    if isinstance(hint, type) and issubclass(hint, Enum):
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return True
    if origin is typing.Annotated:
        return _fixed_value(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        return all(_fixed_value(arg) for arg in typing.get_args(hint))
    return False


@functools.lru_cache(maxsize=1)
def axolotl_fixed_keys() -> frozenset[str]:
    """Axolotl keys its schema types as numbers, booleans or choices (``trainer_cls``, ``plugins``,
    ``base_model``, ``datasets``, ``*_path`` and every other key that takes a string are not)."""
    from axolotl.utils.schemas.config import AxolotlInputConfig

    return frozenset(name for name, item in AxolotlInputConfig.model_fields.items()
                     if _fixed_value(item.annotation) and not UNSAFE_AXOLOTL.fullmatch(name))


def _inside(path: str, root: Path, base: Path) -> bool:
    """``path`` (relative to ``base``) stays under ``root`` once ``~`` and links are followed."""
    if path.startswith("~"):
        return False
    resolved = (base / Path(path).expanduser()).resolve()
    return resolved == root.resolve() or root.resolve() in resolved.parents


def _why_refused(key: str, value) -> str | None:
    """Why a shared recipe may not set ``key`` to ``value`` (None: it may)."""
    rule = re.sub(r"^model\.tuning\.", "stage.", key)  # a model's tuning is applied as stage settings
    if "trust_remote_code" in key.lower() or "trust_remote_code" in json.dumps(value).lower():
        return "would run code the model or data brings (trust_remote_code)"
    if rule in ("run.input_model", "run.input_adapter"):
        return None if value is None else "points the run at a model outside the recipe"
    if rule in ("release.repo_id", "release.revision"):  # `release --push` alone uploads there
        return None if value is None else "names the Hub repository (or branch) a later push would upload your model to"
    if rule in ("model.hub_id", "data.hub_id"):
        return None if value is None or HUB_ID.fullmatch(value) else \
            f"{value!r} is not a hub id (owner/name): a path would load a model or data from elsewhere on this machine"
    if rule in ("model.revision", "data.revision"):
        return None if value is None or (REVISION.fullmatch(value) and ".." not in value) else \
            f"{value!r} is not a git revision (',' and '=' would add lm-eval model arguments)"
    if rule == "data.path":
        return None if value is None or _inside(value, DATASETS_DIR, DATASETS_DIR) else f"{value!r} leaves datasets_ita/"
    if rule == "data.files":
        bad = [p for p in value if p.startswith(("/", "~")) or ".." in p.split("/")]
        return f"{bad[0]!r} leaves the data's repository" if bad else None
    if rule == "eval.include_path":
        return None if value is None or _inside(value, PROJECT_ROOT, PROJECT_ROOT) else f"{value!r} leaves the project"
    if rule == "launcher.template":
        return None if NAME.fullmatch(value) else "must name a file in slurm/"
    if rule == "hardware.slurm.modules":
        return "loads modulefiles (modulefiles are programs)" if value else None
    if rule in ("hardware.container", "hardware.container.image", "hardware.container.binds"):
        return "runs the job in a container image the recipe names, with the folders it binds" if value else None
    if rule in STORAGE_PATHS and value is not None:
        return f"{value!r} puts the runs, caches or the hub cache (HF_HOME) elsewhere on this machine"
    if rule.startswith("hardware.slurm.env."):
        name = rule.rsplit(".", 1)[1]
        if name not in SAFE_ENV:
            return "is not a variable a shared recipe may set in the job (only tuning knobs: README)"
        return None if ENV_VALUE.fullmatch(str(value)) else f"value {value!r} is not a tuning value (no paths, $ or spaces)"
    if rule == "hardware.slurm.extra_directives":
        bad = [d for d in value if d.split("=", 1)[0] not in SAFE_DIRECTIVES]
        return f"{', '.join(bad)} is not a directive a shared recipe may add" if bad else None
    if rule == "tracking.name" and value not in ("none", "tensorboard"):
        return f"sends the run's metrics to {value}"
    if rule == "tracking.uri":
        return None if value is None else f"sends the run's metrics to {value}"
    if rule.startswith("stage.axolotl."):
        name = rule[len("stage.axolotl."):]
        if name in axolotl_fixed_keys() and not isinstance(value, (dict, list)):
            return None
        return "loads code, names a path or sends data off the machine (Axolotl keys that take a number, a " \
               "boolean or a choice are allowed)"
    if rule in NAME_KEYS:
        return None if value is None or NAME.fullmatch(value) else f"{value!r} is not a name"
    if rule.startswith("provenance."):  # a preset's sources: one-line free text, shown escaped in model cards
        return None
    if value is None or isinstance(value, (bool, int, float)):
        return None
    if _listed(rule):
        return None
    return "is not on the list of settings a shared recipe may set"


def _listed(key: str) -> bool:
    """``key`` is in TEXT_KEYS as it is or with one key of a mapping as ``*`` (``data.columns.text``)."""
    parts = key.split(".")
    return key in TEXT_KEYS or any(".".join(parts[:index] + ["*"] + parts[index + 1:]) in TEXT_KEYS
                                   for index in range(1, len(parts)))


@functools.cache
def _site_hardware(name: str) -> dict:
    """The settings this project's own hardware option ``name`` gives (flattened); for a name it does
    not have, the schema's defaults."""
    from llamantino.config.compose import compose_config

    if name in {path.stem for path in (CONF_DIR / "hardware").glob("*.yaml")}:
        return flatten({"hardware": to_plain(compose_config([f"hardware={name}"]).hardware)})
    return flatten({"hardware": {"slurm": to_plain(SlurmConfig()), "storage": to_plain(StorageConfig())}})


def unsafe_settings(cfg: LlamantinoConfig) -> list[tuple[str, str]]:
    """(exact key, why) of every setting of a recipe's config that a shared recipe may not set.

    Hardware settings equal to those of this project's own hardware option of the same name are the
    user's already (``module load`` lines, storage roots of conf/hardware/leonardo_booster.yaml)."""
    found = []
    for key, value in flatten(to_plain(cfg)).items():
        why = _why_refused(key, value)
        if why and key.startswith("hardware."):
            site = _site_hardware(cfg.hardware.name)
            why = None if key in site and site[key] == value else why
        if why:
            found.append((key, why))
    return found


def checked_config(record: dict, allow: tuple[str, ...] = ()) -> LlamantinoConfig:
    """The recipe's config checked against the schema and the allow-list, as data (``${...}`` stays text).

    ``allow`` names settings the user accepts outside the allow-list, each by its exact key path as
    the refusal names it (``hardware.slurm.env.LD_LIBRARY_PATH``); a group (``hardware``) is refused.
    """
    config = record["config"]
    _refuse_code(config)
    cfg = from_plain(LlamantinoConfig, config, "config")
    check_run_name(cfg.run.name or "")
    keys = flatten(to_plain(cfg))
    for name in allow:
        if name not in keys:
            group = any(key.startswith(name + ".") for key in keys)
            raise ConfigError(f"--allow {name} " + ("names a group of settings, not one: name each key exactly, as "
                                                    "the refusal lists them" if group else
                                                    "is not a setting of this recipe: name the exact key the "
                                                    "refusal lists"))
    refused = [(key, why) for key, why in unsafe_settings(cfg) if key not in allow]
    if refused:
        listed = "; ".join(f"{key} {why} (--allow {shlex.quote(key)})" for key, why in refused)
        raise ConfigError(f"a shared recipe may not set: {listed}; if you trust this file, pass the --allow flag "
                          "of each")
    return cfg


def import_record(record: dict, dest_root: Path, *, allow_mismatch: bool = False,
                  allow_version_mismatch: bool = False, allow: tuple[str, ...] = (), echo=print) -> Path:
    """Re-create the run directory; returns it. Verifies checksum, versions, data hashes, renders.
    ``echo`` hears a line before each slow phase (validating with Axolotl takes most of a minute)."""
    echo("recipe import: checking the checksum, versions and settings")
    if checksum(record) != record["checksum"] and not allow_mismatch:
        raise ConfigError("recipe checksum mismatch: the file was changed after export (tampered or damaged); "
                          "pass --allow-mismatch to import it anyway")
    _compatible(record, allow_version_mismatch)
    cfg = checked_config(record, allow)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_root=str(Path(dest_root).resolve())))
    run_dir = unique_path(Path(dest_root).resolve() / cfg.run.name, "imported")
    echo(f"recipe import: rendering the {cfg.stage.name} run and validating it with Axolotl")
    prepared = stage_for(cfg).build(cfg, run_dir, overrides=list(record["overrides"]), choices={}, validate=True)
    expected = ((record.get("lock") or {}).get("data") or {}).get("sha256")
    found = (prepared.inputs.data or {}).get("sha256")
    if found and found != expected and not allow_mismatch:  # a lock without the hash must not skip the check
        raise ConfigError(f"data {cfg.data.name}: sha256 {found} here, {expected or 'none'} in the recipe: the data "
                          "differs or the recipe's lock was cut; pass --allow-mismatch to use this data anyway")
    echo(f"recipe import: rendering its launcher={cfg.launcher.name} files")
    launcher_for(cfg).prepare(prepared)  # its job script; submission checks run when it is launched
    echo("recipe import: comparing what rendered here with the recipe's files")
    rendered = {"axolotl_yaml": prepared.files.get(RunDir.RECIPE), "eval_json": None,
                "job_sbatch": prepared.files.get(RunDir.SCRIPT)}
    for key, text in rendered.items():
        if key == "eval_json" or text is None or allow_mismatch:
            continue
        if record.get(key) is None:  # leaving a file out must not skip its comparison
            raise ConfigError(f"the recipe has no {key.replace('_', '.')} to compare with what renders here: it was "
                              "cut or edited; pass --allow-mismatch to import it anyway")
        if text != record[key]:
            diff = "".join(difflib.unified_diff(record[key].splitlines(True), text.splitlines(True),
                                                "recipe", "rendered here", n=1))
            raise ConfigError(f"the {key.replace('_', '.')} rendered here differs from the recipe's "
                              f"(different code or data?):\n{diff[:3000]}")
    echo(f"recipe import: writing {run_dir}")
    return prepared.write()


# --- diff and presets -----------------------------------------------------------------------------


def config_of(target: str) -> dict:
    """A resolved config (as plain data) from a run directory, a recipe file or a preset name."""
    path = Path(target)
    if RunDir(path).is_run():
        return to_plain(RunDir(path).config())
    if path.is_file():
        return to_plain(checked_config(load_record(path)))
    if (CONF_DIR / "experiment" / f"{target}.yaml").is_file():
        from llamantino.config.compose import compose_config

        return to_plain(compose_config([f"experiment={target}"]))
    raise ConfigError(f"{target} is not a run directory, a recipe file or a preset ({', '.join(preset_names())})")


def flatten(obj, prefix="") -> dict:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def diff_configs(a: dict, b: dict) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    lines = []
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key, "<absent>") != fb.get(key, "<absent>") and not key.startswith("run.output_root"):
            lines.append(f"{key}: {fa.get(key, '<absent>')!r} -> {fb.get(key, '<absent>')!r}")
    return lines


def preset_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def render_preset(name: str) -> dict[str, str]:
    """The committed files of a preset: its Axolotl recipe and its sbatch script, validated."""
    from llamantino.config.compose import compose_config

    overrides = [f"experiment={name}"]
    cfg = compose_config(overrides)
    prepared = stage_for(cfg).build(cfg, RECIPES_DIR / name, overrides=overrides, choices={}, validate=True)
    launcher_for(cfg).prepare(prepared)
    return {key: prepared.files[key] for key in (RunDir.RECIPE, RunDir.SCRIPT) if key in prepared.files}
