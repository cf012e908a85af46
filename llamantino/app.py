"""``python -m llamantino``: compose with Hydra, render, validate, write the run directory, launch.

    python -m llamantino                                   # the embedded default job (tiny model, CPU)
    python -m llamantino stage=dpo model=llama3_8b hardware=leonardo_booster launcher=dry
    python -m llamantino -m stage.learning_rate=1e-5,2e-5 launcher=slurm     # one SLURM job array
    python -m llamantino pipeline=llamantino2 launcher=slurm                 # chained jobs

The last line on stdout is always ``run_dir: <path>`` (the pipeline or sweep directory for those).
Errors in the user's input print one ``error:`` line naming the key, file or option and exit 2.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from llamantino.compose import to_plain
from llamantino.errors import ConfigError, LlamantinoError
from llamantino.paths import CONF_DIR
from llamantino.schema import register_configs

GROUPS = ("model", "data", "stage", "hardware", "launcher", "eval", "pipeline", "experiment")
# The only `_target_` Hydra may instantiate: our own sweep callback (configs are data, not code).
EXECUTION_WHITELIST = ("llamantino.sweep.SweepCallback",)

register_configs()


def hydra_context() -> tuple[list[str], dict, bool, HydraConfig]:
    """(task overrides, group choices, is multirun, the Hydra config)."""
    hc = HydraConfig.get()
    choices = {group: value for group, value in hc.runtime.choices.items() if group in GROUPS and value is not None}
    return list(hc.overrides.task), choices, hc.mode == RunMode.MULTIRUN, hc


def run_dir_for(cfg: dict, multirun: bool, hc) -> Path:
    """A new, unique run directory (sweep points: <sweep dir>/<job number>)."""
    from llamantino.rundir import unique_run_dir

    if multirun:
        return Path(os.path.abspath(hc.sweep.dir)) / f"{hc.job.num:03d}"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(os.path.abspath(cfg["run"]["output_root"]))
    return unique_run_dir(root / cfg["run"]["name"], stamp)


def check_local_hardware(hw: dict) -> None:
    """launcher=local runs here: the hardware option must describe this machine's GPUs."""
    if hw["accelerator"] == "cpu":
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < hw["gpus_per_node"] or hw["nodes"] > 1:
        raise ConfigError(
            f"hardware={hw['name']} needs {hw['nodes']} node(s) x {hw['gpus_per_node']} GPUs but this machine has "
            f"{found} CUDA GPU(s): use hardware=cpu here, launcher=slurm for a cluster, or launcher=dry to render only"
        )


def run_stage(cfg: dict, overrides: list[str], choices: dict, multirun: bool, hc) -> Path:
    """Prepare, write and launch one stage; returns its run directory."""
    from llamantino.launch.local import run_local
    from llamantino.prepare import prepare_run
    from llamantino.rundir import write_run_dir

    launcher = cfg["launcher"]
    run_dir = run_dir_for(cfg, multirun, hc)
    prepared = prepare_run(cfg, run_dir, overrides=overrides, choices=choices, validate=launcher["validate"])
    for notice in prepared.notices:
        print(f"notice: {notice}")
    if launcher["name"] == "slurm":
        from llamantino.launch.slurm import add_job_script, check_submittable

        check_submittable(prepared.cfg, prepared.inputs)
        add_job_script(prepared)
    elif launcher["name"] == "local":
        check_local_hardware(prepared.cfg["hardware"])
    elif launcher["name"] != "dry":
        raise ConfigError(f"launcher.name={launcher['name']!r} is not valid; use dry, local or slurm")
    write_run_dir(run_dir, prepared.files, prepared.links)
    print(f"wrote {run_dir}: {', '.join(sorted(name for name in prepared.files if '/' not in name))}")
    if launcher["name"] == "local":
        if prepared.inputs.build_tiny:
            from llamantino.tiny import ensure_tiny_model

            print(f"llamantino: tiny model at {ensure_tiny_model()}")
        status = run_local(run_dir, prepared.stage_args)
        losses = status.get("losses")
        if prepared.cfg["stage"]["task"] == "eval":
            print(f"done: results in {run_dir / 'results.md'} and {run_dir / 'results.json'}")
        else:
            print(f"done: {(prepared.output or {}).get('kind', 'output')} in {status.get('output', run_dir)}")
        if losses:
            print(f"loss: first {losses['first']:.4f}, last {losses['last']:.4f} ({losses['count']} logged steps)")
    elif launcher["name"] == "slurm":
        from llamantino.launch.slurm import submit_or_defer

        submit_or_defer(prepared, multirun)
    return run_dir


@hydra.main(config_path=str(CONF_DIR), config_name="config",
            execution_whitelist=EXECUTION_WHITELIST)
def _main(cfg: DictConfig) -> None:
    overrides, choices, multirun, hc = hydra_context()
    try:
        plain = to_plain(cfg)
        if plain["pipeline"]:
            from llamantino.pipeline import run_pipeline

            run_dir = run_pipeline(plain, overrides, choices)
        else:
            run_dir = run_stage(plain, overrides, choices, multirun, hc)
    except LlamantinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"run_dir: {run_dir}")


def main() -> None:
    """Console entry point (also ``python -m llamantino``)."""
    _main()
