"""``python -m llamantino.recipe``: share runs as files, reproduce them, compare them.

    python -m llamantino.recipe list                      # the published-model presets
    python -m llamantino.recipe export <run dir> [-o F]   # one self-contained, checksummed file
    python -m llamantino.recipe import F [--dest DIR]     # re-create the run directory, verified
    python -m llamantino.recipe diff A B                  # resolved settings that differ
    python -m llamantino.recipe presets [--write]         # re-render recipes/ (check or update)

A recipe file is data. Import reads it with ``yaml.safe_load``, accepts only known keys, never
instantiates ``_target_``, never evaluates ``${...}`` interpolations (they could read the
environment), refuses paths that leave the project's data folder or the destination, re-renders
the Axolotl YAML and the sbatch script from the config (the quoting renderer, never the file's own
text) and refuses when they differ from the exported ones, or when a checksum or a data hash does
not match, unless told otherwise. Nothing is overwritten: the run directory is new and atomic.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from llamantino.errors import ConfigError, run_command
from llamantino.paths import CONF_DIR, DATASETS_DIR, RECIPES_DIR

FORMAT = 1
KEYS = {"llamantino_recipe", "name", "created", "versions", "overrides", "config", "axolotl_yaml", "job_sbatch",
        "eval_json", "lock", "checksum"}
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE)", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{20,})")


def canonical(data) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def checksum(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "checksum"}).encode()).hexdigest()


def _secrets(obj, path="") -> list[str]:
    """Where a secret may hide: keys named like one, or values shaped like known tokens."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            if SECRET_NAME.search(str(key)) and value not in (None, "", False):
                found.append(here)
            found += _secrets(value, here)
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found += _secrets(value, f"{path}[{index}]")
    elif isinstance(obj, str) and (_SECRET_VALUE.search(obj) or re.search(r"(TOKEN|SECRET|PASSWORD)\s*=", obj)):
        found.append(path)
    return found


# --- export ----------------------------------------------------------------------------------------


def export_run(run_dir: Path) -> dict:
    """The share record of a run directory (refuses anything that looks like a secret)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a llamantino run directory (no config.yaml)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    provenance = json.loads((run_dir / "provenance.json").read_text())
    leaks = _secrets(config) + [f"overrides[{i}]" for i, o in enumerate(provenance["overrides"]) if _secrets(o)]
    if leaks:
        raise ConfigError("refusing to export: these look like secrets (" + ", ".join(leaks) + "); "
                          "secrets belong in the job's environment, never in a recipe")
    if config["run"]["input_model"] or config["run"]["input_adapter"]:
        raise ConfigError(f"{run_dir} continues another run (run.input_model/input_adapter); export the pipeline's "
                          "steps from a preset or the first step instead")
    data = provenance.get("data") or {}
    record = {
        "llamantino_recipe": FORMAT,
        "name": config["run"]["name"],
        "created": provenance["created"],
        "versions": {k: provenance["packages"].get(k) for k in ("llamantino", "axolotl", "torch", "transformers",
                                                                  "peft", "trl", "lm_eval")},
        "overrides": provenance["overrides"],
        "config": config,
        "axolotl_yaml": _text(run_dir / "axolotl.yaml"),
        "job_sbatch": _text(run_dir / "job.sbatch"),
        "eval_json": _text(run_dir / "eval.json"),
        "lock": {
            "git": provenance["git"],
            "model": provenance.get("model"),
            "data": {k: data.get(k) for k in ("name", "hub_id", "subset", "revision", "split", "sha256") if data.get(k)},
            "packages": provenance["packages"],
        },
    }
    record["checksum"] = checksum(record)
    return record


def _text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


# --- import ----------------------------------------------------------------------------------------


def load_record(path: Path) -> dict:
    """Read and check a recipe file: safe YAML, known keys, format, checksum (names what is wrong)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        record = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not a readable recipe (truncated or not YAML): {exc}") from None
    if not isinstance(record, dict) or "llamantino_recipe" not in record:
        raise ConfigError(f"{path}: not a llamantino recipe (no llamantino_recipe key)")
    unknown = sorted(set(record) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)}; a recipe has: {', '.join(sorted(KEYS))}")
    missing = sorted({"config", "checksum", "versions", "axolotl_yaml"} - set(record))
    if missing:
        raise ConfigError(f"{path}: truncated recipe, missing {', '.join(missing)}")
    if record["llamantino_recipe"] != FORMAT:
        raise ConfigError(f"{path}: recipe format {record['llamantino_recipe']} is not {FORMAT}; use the llamantino "
                          f"version that wrote it ({record['versions'].get('llamantino')})")
    return record


def _compatible(record: dict, allow: bool) -> None:
    from llamantino.provenance import package_versions

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


def _escape(obj):
    """Make every ``${`` literal so OmegaConf never resolves anything from a shared file."""
    if isinstance(obj, dict):
        return {key: _escape(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_escape(value) for value in obj]
    if isinstance(obj, str):
        return obj.replace("${", "\\${")
    return obj


def checked_config(record: dict) -> dict:
    """The recipe's config validated against the schema, as plain data."""
    from llamantino.schema import LlamantinoConfig

    config = record["config"]
    _refuse_code(config)
    try:
        node = OmegaConf.merge(OmegaConf.structured(LlamantinoConfig), OmegaConf.create(_escape(config)))
        plain = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except Exception as exc:  # noqa: BLE001 - OmegaConf raises several types; all mean "bad config"
        raise ConfigError(f"recipe config does not fit this llamantino's schema: {exc}") from None
    data_path = plain["data"]["path"]
    if data_path:
        resolved = (DATASETS_DIR / data_path).resolve()
        if Path(data_path).is_absolute() or DATASETS_DIR.resolve() not in resolved.parents:
            raise ConfigError(f"recipe data.path={data_path!r} leaves datasets_ita/: a shared recipe may only name "
                              "files inside the project's datasets_ita/ folder")
    from llamantino.compose import check_run_name

    check_run_name(plain["run"]["name"])
    return plain


def import_record(record: dict, dest_root: Path, *, allow_mismatch: bool = False,
                  allow_version_mismatch: bool = False) -> Path:
    """Re-create the run directory; returns it. Verifies checksum, versions, data hashes, renders."""
    from llamantino.launch.slurm import job_script
    from llamantino.prepare import prepare_run
    from llamantino.rundir import unique_run_dir, write_run_dir

    if checksum(record) != record["checksum"] and not allow_mismatch:
        raise ConfigError("recipe checksum mismatch: the file was changed after export (tampered or damaged); "
                          "pass --allow-mismatch to import it anyway")
    _compatible(record, allow_version_mismatch)
    cfg = checked_config(record)
    cfg["run"]["output_root"] = str(Path(dest_root).resolve())
    run_dir = unique_run_dir(Path(dest_root).resolve() / cfg["run"]["name"], "imported")
    prepared = prepare_run(cfg, run_dir, overrides=list(record["overrides"]), choices={}, validate=True)
    expected = (record.get("lock") or {}).get("data", {}).get("sha256")
    found = (prepared.inputs.data or {}).get("sha256")
    if expected and found != expected and not allow_mismatch:
        raise ConfigError(f"data {cfg['data']['name']}: sha256 {found} here, {expected} in the recipe: the data "
                          "differs; pass --allow-mismatch to use this data anyway")
    rendered = {"axolotl_yaml": prepared.files.get("axolotl.yaml"), "eval_json": None}
    if cfg["launcher"]["name"] == "slurm":  # submission checks run when it is launched
        prepared.files["job.sbatch"] = job_script(prepared)
        rendered["job_sbatch"] = prepared.files["job.sbatch"]
    for key, text in rendered.items():
        if key == "eval_json" or record.get(key) is None:
            continue
        if text != record[key] and not allow_mismatch:
            diff = "".join(difflib.unified_diff(record[key].splitlines(True), (text or "").splitlines(True),
                                                "recipe", "rendered here", n=1))
            raise ConfigError(f"the {key.replace('_', '.')} rendered here differs from the recipe's "
                              f"(different code or data?):\n{diff[:3000]}")
    return write_run_dir(run_dir, prepared.files, prepared.links)


# --- diff and presets -----------------------------------------------------------------------------


def config_of(target: str) -> dict:
    """A resolved config from a run directory, a recipe file or a preset name."""
    path = Path(target)
    if (path / "config.yaml").is_file():
        return yaml.safe_load((path / "config.yaml").read_text())
    if path.is_file():
        return checked_config(load_record(path))
    if (CONF_DIR / "experiment" / f"{target}.yaml").is_file():
        from llamantino.compose import compose_config

        return compose_config([f"experiment={target}"])
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
    from llamantino.compose import compose_config
    from llamantino.launch.slurm import job_script
    from llamantino.prepare import prepare_run

    overrides = [f"experiment={name}"]
    cfg = compose_config(overrides)
    prepared = prepare_run(cfg, RECIPES_DIR / name, overrides=overrides, choices={}, validate=True)
    files = {"axolotl.yaml": prepared.files["axolotl.yaml"]}
    if cfg["launcher"]["name"] == "slurm":
        files["job.sbatch"] = job_script(prepared)
    return files


def cmd_list(args) -> int:
    from llamantino.compose import compose_config

    for name in preset_names():
        cfg = compose_config([f"experiment={name}"])
        target = cfg.get("target") or {}
        scores = target.get("scores") or {}
        goal = f"target avg {sum(scores.values()) / len(scores):.4f} ({target['model_id']})" if scores else "no published target"
        print(f"{name:26} {cfg['stage']['name']:6} {cfg['model']['name']:24} {cfg['hardware']['name']} x{cfg['hardware']['nodes']}  {goal}")
    return 0


def cmd_presets(args) -> int:
    stale = []
    for name in preset_names():
        for filename, text in render_preset(name).items():
            path = RECIPES_DIR / name / filename
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
                if args.write:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
    if stale and not args.write:
        print("out of date (run with --write, then review the diff):\n  " + "\n  ".join(stale))
        return 1
    print(f"{'updated' if stale else 'up to date'}: {len(preset_names())} presets in {RECIPES_DIR}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the presets, one line each").set_defaults(fn=cmd_list)
    p = sub.add_parser("export", help="write a run directory as one self-contained recipe file")
    p.add_argument("run_dir", type=Path)
    p.add_argument("-o", "--output", type=Path)
    p.set_defaults(fn=lambda a: _export(a))
    p = sub.add_parser("import", help="re-create a run directory from a recipe file")
    p.add_argument("recipe", type=Path)
    p.add_argument("--dest", type=Path, default=Path("runs") / "imported")
    p.add_argument("--allow-mismatch", action="store_true", help="import despite checksum, hash or render mismatches")
    p.add_argument("--allow-version-mismatch", action="store_true")
    p.set_defaults(fn=lambda a: _import(a))
    p = sub.add_parser("diff", help="resolved settings that differ between two runs, recipes or presets")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(fn=lambda a: _diff(a))
    p = sub.add_parser("presets", help="check recipes/ against the presets (--write to update)")
    p.add_argument("--write", action="store_true")
    p.set_defaults(fn=cmd_presets)
    args = parser.parse_args(argv)
    return run_command(args.fn, args)


def _export(args) -> int:
    record = export_run(args.run_dir)
    output = args.output or Path(f"{record['name']}.llamantino.yaml")
    if output.exists():
        raise ConfigError(f"{output} exists; llamantino never overwrites (choose another -o)")
    output.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=120))
    print(f"exported {args.run_dir} to {output}")
    return 0


def _import(args) -> int:
    run_dir = import_record(load_record(args.recipe), args.dest, allow_mismatch=args.allow_mismatch,
                            allow_version_mismatch=args.allow_version_mismatch)
    print(f"imported {args.recipe}: launch it with python -m llamantino.launch {run_dir}")
    print(f"run_dir: {run_dir}")
    return 0


def _diff(args) -> int:
    lines = diff_configs(config_of(args.a), config_of(args.b))
    print("\n".join(lines) if lines else "no differences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
