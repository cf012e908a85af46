"""Share runs as files, reproduce them, compare them: the library behind ``python -m llamantino recipe``.

A recipe file is data. Import reads it with ``yaml.safe_load``, accepts only known keys, never
instantiates ``_target_``, reads the config with the schema's own reader (``${...}`` stays text:
nothing is resolved), refuses paths that leave the project's data folder or the destination,
re-renders the Axolotl YAML and the sbatch script from the config (the quoting renderer, never the
file's own text) and refuses when they differ from the exported ones, or when a checksum or a
data hash does not match, unless told otherwise. The checksum protects against accidents (a
damaged or hand-edited file), not against someone who edits the file and recomputes it: the
re-render and the checks above are what keep a hostile recipe out. Nothing is overwritten.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import shlex
from pathlib import Path

import yaml

from llamantino.config.compose import check_run_name
from llamantino.errors import ConfigError
from llamantino.launchers import launcher_for
from llamantino.paths import CONF_DIR, DATASETS_DIR, PROJECT_ROOT, RECIPES_DIR
from llamantino.records.provenance import compact
from llamantino.records.rundir import RunDir, unique_path
from llamantino.config.schema import LlamantinoConfig, from_plain, to_plain
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
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JSON web tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|(?<![A-Za-z])(TOKEN|SECRET|PASSWORD|API_?KEY)\s*[=:]\s*\S"  # NAME=value inside a string
)


def canonical(data) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def checksum(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "checksum"}).encode()).hexdigest()


def secrets_in(obj, path="") -> list[str]:
    """Where a secret may hide: keys named like one, or values shaped like known tokens."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            if SECRET_NAME.search(str(key)) and isinstance(value, str) and value:  # flags like use_auth_token: no
                found.append(here)
            found += secrets_in(value, here)
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found += secrets_in(value, f"{path}[{index}]")
    elif isinstance(obj, str) and SECRET_VALUE.search(obj):
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


def _text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


# --- import ----------------------------------------------------------------------------------------


def load_record(path: Path) -> dict:
    """Read and check a recipe file: safe YAML, known keys, format, checksum (names what is wrong)."""
    try:
        record = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a readable recipe (truncated or not YAML): {exc}") from None
    if not isinstance(record, dict) or "llamantino_recipe" not in record:
        raise ConfigError(f"{path}: not a llamantino recipe (no llamantino_recipe key)")
    unknown = sorted(set(record) - KEYS)
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
    if record["llamantino_recipe"] != FORMAT:
        raise ConfigError(f"{path}: recipe format {record['llamantino_recipe']} is not {FORMAT}; use the llamantino "
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
# Job environment variables a recipe may export: tuning of NCCL, threads and caches, nothing that
# changes which code runs (LD_PRELOAD, PYTHONPATH, PATH, BASH_ENV, ... are refused).
SAFE_ENV = re.compile(r"(NCCL_[A-Z0-9_]+|OMP_NUM_THREADS|MKL_NUM_THREADS|TOKENIZERS_PARALLELISM|HF_HOME"
                      r"|HF_DATASETS_CACHE|HF_HUB_CACHE|CUDA_DEVICE_MAX_CONNECTIONS|PYTORCH_CUDA_ALLOC_CONF"
                      r"|TORCH_NCCL_[A-Z0-9_]+|TORCH_DIST_INIT_BARRIER)", re.ASCII)
# Extra #SBATCH options a recipe may add: where the job runs, not as whom, where it writes or what it runs.
SAFE_DIRECTIVES = ("--exclude", "--constraint", "--reservation", "--nodelist", "--hint", "--switches",
                   "--distribution", "--gpus-per-task", "--mem-per-cpu", "--mem-per-gpu", "--cpus-per-gpu")
# Axolotl keys a recipe may not pass through: they load code, push data off the machine, or name paths.
UNSAFE_AXOLOTL = re.compile(r"(.*hub.*|push_.*|.*trust_remote_code.*|plugins|.*_dir|.*_path|.*_config|datasets"
                            r"|test_datasets|pretraining_dataset|deepspeed|.*_jinja|chat_template|resume_from_checkpoint"
                            r"|(wandb|mlflow|comet|swanlab|trackio)_.*|use_(wandb|mlflow|comet|swanlab|trackio))",
                            re.ASCII)


def unsafe_settings(cfg: LlamantinoConfig) -> list[tuple[str, str]]:
    """(key, why) of every setting outside what a shared recipe may set."""
    found = []
    for key, value in (("run.input_model", cfg.run.input_model), ("run.input_adapter", cfg.run.input_adapter)):
        if value:
            found.append((key, "points the run at a model outside the recipe"))
    data_path = cfg.data.path
    if data_path:
        resolved = (DATASETS_DIR / data_path).resolve()
        if Path(data_path).is_absolute() or DATASETS_DIR.resolve() not in resolved.parents:
            found.append(("data.path", f"{data_path!r} leaves datasets_ita/"))
    if cfg.eval.include_path:
        resolved = (PROJECT_ROOT / cfg.eval.include_path).resolve()
        if Path(cfg.eval.include_path).is_absolute() or PROJECT_ROOT.resolve() not in resolved.parents:
            found.append(("eval.include_path", f"{cfg.eval.include_path!r} leaves the project"))
    if "/" in cfg.launcher.template or "\\" in cfg.launcher.template:
        found.append(("launcher.template", "must name a file in slurm/"))
    for name in cfg.hardware.slurm.env:
        if not SAFE_ENV.fullmatch(name):
            found.append((f"hardware.slurm.env.{name}", "is not a variable a shared recipe may set in the job"))
    for directive in cfg.hardware.slurm.extra_directives:
        if directive.split("=", 1)[0] not in SAFE_DIRECTIVES:
            found.append((f"hardware.slurm.extra_directives[{directive}]", "is not a directive a shared recipe may add"))
    if cfg.tracking.name not in ("none", "tensorboard"):
        found.append(("tracking", f"sends the run's metrics to {cfg.tracking.name} ({cfg.tracking.uri or 'its servers'})"))
    for key in cfg.stage.axolotl:
        if UNSAFE_AXOLOTL.fullmatch(str(key)):
            found.append((f"stage.axolotl.{key}", "loads code, sends data off the machine or names a path"))
    return found


def checked_config(record: dict, allow: tuple[str, ...] = ()) -> LlamantinoConfig:
    """The recipe's config checked against the schema and the allow-list, as data (``${...}`` stays text).

    ``allow`` names keys (or key prefixes) the user accepts outside the allow-list, e.g.
    ``hardware.slurm.env.LD_LIBRARY_PATH``.
    """
    config = record["config"]
    _refuse_code(config)
    cfg = from_plain(LlamantinoConfig, config, "config")
    check_run_name(cfg.run.name or "")
    for key, why in unsafe_settings(cfg):
        if not any(key == name or key.startswith(name + ".") for name in allow):
            raise ConfigError(f"recipe {key} {why}: a shared recipe may not set it; if you trust this file, "
                              f"pass --allow {shlex.quote(key)}")
    return cfg


def import_record(record: dict, dest_root: Path, *, allow_mismatch: bool = False,
                  allow_version_mismatch: bool = False, allow: tuple[str, ...] = ()) -> Path:
    """Re-create the run directory; returns it. Verifies checksum, versions, data hashes, renders."""
    if checksum(record) != record["checksum"] and not allow_mismatch:
        raise ConfigError("recipe checksum mismatch: the file was changed after export (tampered or damaged); "
                          "pass --allow-mismatch to import it anyway")
    _compatible(record, allow_version_mismatch)
    cfg = checked_config(record, allow)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_root=str(Path(dest_root).resolve())))
    run_dir = unique_path(Path(dest_root).resolve() / cfg.run.name, "imported")
    prepared = stage_for(cfg).build(cfg, run_dir, overrides=list(record["overrides"]), choices={}, validate=True)
    expected = (record.get("lock") or {}).get("data", {}).get("sha256")
    found = (prepared.inputs.data or {}).get("sha256")
    if expected and found != expected and not allow_mismatch:
        raise ConfigError(f"data {cfg.data.name}: sha256 {found} here, {expected} in the recipe: the data "
                          "differs; pass --allow-mismatch to use this data anyway")
    launcher_for(cfg).prepare(prepared)  # its job script; submission checks run when it is launched
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
