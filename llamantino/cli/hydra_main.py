"""Composition: Hydra composes the overrides, then one run, a pipeline, or (``-m``) a sweep starts.

``llamantino`` and ``python -m llamantino`` come here when the first argument is not a verb
(``llamantino/cli/main.py``).

    python -m llamantino                                   # the embedded default job (tiny model, CPU)
    python -m llamantino stage=dpo model=llama3_8b hardware=leonardo_booster launcher=dry
    python -m llamantino -m stage.learning_rate=1e-5,2e-5 launcher=slurm     # one SLURM job array
    python -m llamantino pipeline=llamantino2 launcher=slurm                 # chained jobs

The last line on stdout is always ``run_dir: <path>`` (the pipeline or sweep directory for those).
Errors in the user's input, Hydra's own included, print one ``error:`` line and exit 2.
Sweeps go through the Hydra Launcher plugin in ``hydra_plugins/llamantino_launcher``.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from llamantino.errors import report
from llamantino.paths import CONF_DIR
from llamantino.config.schema import register_configs

register_configs()


# The one target conf/ instantiates: the callback that removes what Hydra wrote for a refused command.
@hydra.main(config_path=str(CONF_DIR), config_name="config",
            execution_whitelist=["hydra_plugins.llamantino_launcher.leftovers.HydraLeftovers"])
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from llamantino.config.compose import typed
    from llamantino.orchestrate.pipeline import run_pipeline
    from llamantino.orchestrate.runs import start_run
    from llamantino.orchestrate.sweep import choices_of

    hydra_cfg = HydraConfig.get()
    try:
        config, overrides, choices = typed(cfg), list(hydra_cfg.overrides.task), choices_of(hydra_cfg)
        if config.pipeline:
            run_dir = run_pipeline(config, overrides, choices)
        else:
            run_dir = start_run(config, overrides, choices).path
    except Exception as exc:  # noqa: BLE001 - reported here: Hydra would add lines of its own to a failed job
        if not report(exc):
            raise
        raise SystemExit(2) from None
    print(f"run_dir: {run_dir}")


def run(argv: list[str] | None) -> int:
    """Run the main command with ``argv`` (the process's own arguments when None)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra

    from llamantino.argparsing import ArgumentParser

    # Hydra's own options, misused (--nope, --cfg x), are a usage error in one line, as for the verbs.
    ArgumentParser(prog="llamantino", parents=[get_args_parser()], add_help=False).parse_intermixed_args(
        sys.argv[1:] if argv is None else argv)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's errors reach llamantino's handler, not its own report
    GlobalHydra.instance().clear()  # a composition earlier in this process (tests) is not this command's
    saved = sys.argv
    if argv is not None:
        sys.argv = [saved[0] if saved else "llamantino", *argv]
    try:
        _main()
    finally:
        sys.argv = saved
    return 0
