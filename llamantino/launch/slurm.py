"""Submit run directories to SLURM with ``sbatch --parsable``; never wait for a job.

Checks that can fail (QoS node and time limits, the account, data an offline cluster cannot
download) run before anything is written or submitted. Job ids go to ``<run>/job.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from llamantino.errors import ConfigError, LaunchError
from llamantino.provenance import now_iso
from llamantino.render.sbatch import render_sbatch, script_context

JOB_FILE = "job.json"
SCRIPT = "job.sbatch"


def time_seconds(text: str) -> int:
    """SLURM time (``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS``, ``MM``) in seconds."""
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = (parts[0], parts[1], 0) if days else (0, parts[0], parts[1])
    else:
        hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def check_submittable(cfg: dict, inputs=None) -> None:
    """Refuse before writing anything what the cluster would refuse or what would fail there."""
    hw, launcher = cfg["hardware"], cfg["launcher"]
    slurm = hw["slurm"]
    time_limit = launcher["time"] or slurm["time"]
    limits = slurm["qos_limits"].get(slurm["qos"]) if slurm["qos"] else None
    if limits:
        if not limits["min_nodes"] <= hw["nodes"] <= limits["max_nodes"]:
            raise ConfigError(
                f"hardware.nodes={hw['nodes']} but QoS {slurm['qos']} of {hw['name']} allows "
                f"{limits['min_nodes']}-{limits['max_nodes']} nodes; change hardware.nodes or hardware.slurm.qos"
            )
        if time_seconds(time_limit) > time_seconds(limits["max_time"]):
            raise ConfigError(
                f"time limit {time_limit} exceeds QoS {slurm['qos']}'s {limits['max_time']} on {hw['name']}; "
                "set launcher.time (the run resumes across requeues) or another hardware.slurm.qos"
            )
    if not launcher["submit"]:
        return
    if slurm.get("account_required") and not slurm["account"] and not os.environ.get("SLURM_ACCOUNT"):
        raise ConfigError(f"{hw['name']} bills every job to a project: set hardware.slurm.account=<PROJECT> "
                          "or export SLURM_ACCOUNT (`saldo -b` lists yours)")
    if inputs is not None and hw["offline"]:
        remote = []
        if inputs.model_source.get("kind") == "hub":
            remote.append(f"model {inputs.model_source['hub_id']}")
        if inputs.data is not None and inputs.data.get("hub_id"):
            remote.append(f"data {inputs.data['hub_id']}")
        if cfg["stage"]["task"] == "eval":
            from llamantino.evaluate import local_task_files

            hub_tasks = [t["name"] for t in cfg["eval"]["tasks"] if t["name"] not in local_task_files(cfg)]
            if hub_tasks:
                remote.append(f"the datasets of eval tasks {', '.join(hub_tasks)}")
        if remote:
            raise ConfigError(
                f"{hw['name']} compute nodes have no internet and this run reads {' and '.join(remote)} from the hub: "
                "render it with launcher.submit=false, prepare it where there is network "
                "(python -m llamantino.data prepare <run dir>), then submit it (python -m llamantino.launch <run dir>)"
            )
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch is not on PATH: this machine is not a SLURM submission host "
                          "(use launcher.submit=false to write job.sbatch without submitting)")


def job_resources(prepared) -> tuple:
    """What a job array must share across its tasks: directives (but the name), command, environment."""
    context = _context(prepared, None, None)
    directives = tuple(d for d in context["directives"] if not d.startswith("--job-name="))
    return (directives, tuple(context["stage_args"]), context["nproc_per_node"], tuple(context["env"]),
            tuple(context["modules"]))


def _context(prepared, run_dirs, array) -> dict:
    method = prepared.method
    train = prepared.cfg["stage"]["task"] == "train"
    nodes = method.nodes if method and train else 1
    procs = method.processes_per_node if method and train else 1
    header = [f"llamantino job: stage={prepared.cfg['stage']['name']} model={prepared.cfg['model']['name']} "
              f"hardware={prepared.cfg['hardware']['name']} nodes={nodes}"]
    if prepared.cfg.get("experiment"):
        header.append(f"preset: {prepared.cfg['experiment']}")
    return script_context(prepared.cfg, prepared.stage_args, nodes=nodes, processes_per_node=max(procs, 1),
                          job_env=prepared.provenance["env"], run_dirs=run_dirs, array=array, header=header)


def job_script(prepared, run_dirs: list[str] | None = None, array: str | None = None) -> str:
    """The sbatch text of a prepared run (or, with run_dirs, of a job array over several)."""
    return render_sbatch(prepared.cfg["launcher"]["template"], _context(prepared, run_dirs, array))


def add_job_script(prepared) -> None:
    prepared.files[SCRIPT] = job_script(prepared)


def record_job(run_dir: Path, job_id: str, **extra) -> None:
    """Append a submission to ``<run>/job.json`` (a run can be submitted again after a failure)."""
    path = Path(run_dir) / JOB_FILE
    record = json.loads(path.read_text()) if path.exists() else {"submissions": []}
    record["submissions"].append({"job_id": job_id, "submitted": now_iso(), **extra})
    record["job_id"] = job_id
    tmp = path.with_name(f".{JOB_FILE}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def sbatch(script: Path, *, dependency: str | None = None) -> str:
    """``sbatch --parsable`` from the script's folder; returns the job id."""
    argv = ["sbatch", "--parsable"]
    if dependency:
        argv += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    argv.append(script.name)
    env = {**os.environ, "LLAMANTINO_PYTHON": sys.executable}
    proc = subprocess.run(argv, cwd=script.parent, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise LaunchError(f"sbatch refused {script}: {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job_id):
        raise LaunchError(f"sbatch answered {proc.stdout.strip()!r}, not a job id")
    return job_id


def submit_run(run_dir: Path, dependency: str | None = None) -> str:
    job_id = sbatch(Path(run_dir) / SCRIPT, dependency=dependency)
    record_job(run_dir, job_id, dependency=dependency)
    return job_id


def submit_or_defer(prepared, multirun: bool) -> str | None:
    """Submit now; in a Hydra multirun, hand the point to the sweep (one job array at the end)."""
    if multirun:
        from llamantino.sweep import register_point

        register_point(prepared)
        return None
    if not prepared.cfg["launcher"]["submit"]:
        print(f"not submitted (launcher.submit=false): python -m llamantino.launch {prepared.run_dir}")
        return None
    if prepared.inputs.build_tiny:
        from llamantino.tiny import ensure_tiny_model

        ensure_tiny_model()
    job_id = submit_run(prepared.run_dir)
    print(f"submitted job {job_id}: squeue -j {job_id}; python -m llamantino.status {prepared.run_dir}")
    return job_id


def submit_existing(run_dir: Path) -> str:
    """Submit a run directory written earlier (launcher.submit=false, or prepared for offline)."""
    import yaml

    run_dir = Path(run_dir)
    if not (run_dir / SCRIPT).is_file():
        raise ConfigError(f"{run_dir} has no {SCRIPT}: render it with launcher=slurm")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["launcher"]["submit"] = True
    check_submittable(cfg)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    remote = (provenance.get("model") or {}).get("kind") == "hub" or bool((provenance.get("data") or {}).get("hub_id"))
    remote = remote or cfg["stage"]["task"] == "eval" and not cfg["eval"]["include_path"]
    if cfg["hardware"]["offline"] and remote and not (run_dir / "prepared" / "llamantino_lock.json").is_file():
        raise ConfigError(f"{run_dir} reads from the hub but {cfg['hardware']['name']} is offline: run "
                          f"python -m llamantino.data prepare {run_dir} on a machine with network first")
    if provenance.get("model", {}).get("kind") == "tiny_llama":
        from llamantino.tiny import ensure_tiny_model

        ensure_tiny_model()
    return submit_run(run_dir)
