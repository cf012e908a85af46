"""``python -m llamantino.job.envcheck <run dir>``: the first thing a job runs.

Fails in seconds, not after the queue wait and a model load, when the job's Python, llamantino,
Axolotl, torch or transformers differ from those its recipe was validated with, or when a GPU
stage sees no CUDA device. ``LLAMANTINO_SKIP_ENV_CHECK=1`` skips it (say why in your notes).
"""

from __future__ import annotations

import os
from pathlib import Path

from llamantino.argparsing import ArgumentParser
from llamantino.errors import ConfigError, entry


def cmd_check(run_dir: Path) -> None:
    from llamantino.records.provenance import environment_mismatches
    from llamantino.records.rundir import RunDir

    run = RunDir(run_dir)
    found = environment_mismatches(run.provenance(), run.config().hardware.gpu)
    if found:
        raise ConfigError(f"this job's environment is not the one {run.path.name} was validated with: "
                          f"{'; '.join(found)}. Load the same modules/venv, or re-render the run here")
    print("llamantino: job environment matches the validated one", flush=True)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.envcheck", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if os.environ.get("LLAMANTINO_SKIP_ENV_CHECK") != "1":
        cmd_check(args.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
