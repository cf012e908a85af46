"""``python -m llamantino.submit <run dir>``: submit a run directory written earlier.

For runs rendered with ``launcher.submit=false`` (for instance to prepare their data for an
offline cluster first with ``python -m llamantino.data prepare``). The same pre-submit checks run
again: QoS limits, the account, and, on offline clusters, that hub inputs were prepared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from llamantino.errors import LlamantinoError


def submit_existing(run_dir: Path) -> str:
    from llamantino.errors import ConfigError
    from llamantino.launch.slurm import SCRIPT, check_submittable, submit_run

    run_dir = Path(run_dir)
    if not (run_dir / SCRIPT).is_file():
        raise ConfigError(f"{run_dir} has no {SCRIPT}: render it with launcher=slurm")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["launcher"]["submit"] = True
    check_submittable(cfg)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    remote = (provenance.get("model") or {}).get("kind") == "hub" or bool((provenance.get("data") or {}).get("hub_id"))
    if cfg["hardware"]["offline"] and remote and not (run_dir / "prepared" / "llamantino_lock.json").is_file():
        raise ConfigError(f"{run_dir} reads from the hub but {cfg['hardware']['name']} is offline: run "
                          f"python -m llamantino.data prepare {run_dir} on a machine with network first")
    return submit_run(run_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamantino.submit", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        job_id = submit_existing(args.run_dir)
    except LlamantinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
