"""``python -m llamantino.launch <run dir> [--local | --slurm]``: start a run directory written earlier.

For runs rendered with ``launcher=dry`` or ``launcher.submit=false``, imported recipes, and runs
prepared for an offline cluster (``python -m llamantino.data prepare``). ``--slurm`` submits the
run's job.sbatch after the same pre-submit checks as ``launcher=slurm``; ``--local`` runs the stage
here. Without a flag the run's own launcher decides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from llamantino.errors import ConfigError, LlamantinoError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.launch", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--local", dest="mode", action="store_const", const="local")
    mode.add_argument("--slurm", dest="mode", action="store_const", const="slurm")
    args = parser.parse_args(argv)
    try:
        config_path = args.run_dir / "config.yaml"
        if not config_path.is_file():
            raise ConfigError(f"{args.run_dir} is not a llamantino run directory (no config.yaml)")
        cfg = yaml.safe_load(config_path.read_text())
        mode = args.mode or cfg["launcher"]["name"]
        if mode == "slurm":
            from llamantino.launch.slurm import submit_existing

            print(f"submitted job {submit_existing(args.run_dir)}")
        elif mode == "local":
            from llamantino.launch.local import run_local
            from llamantino.prepare import STAGE_COMMANDS
            from llamantino.tiny import ensure_tiny_model

            if cfg["model"]["builder"] == "tiny_llama":
                ensure_tiny_model()
            status = run_local(args.run_dir, STAGE_COMMANDS[cfg["stage"]["task"]])
            print(f"done: {status['state']}")
        else:
            raise ConfigError(f"{args.run_dir} was rendered with launcher={mode}: pass --local or --slurm")
    except LlamantinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
