"""What a SLURM cluster says about itself: partitions (``sinfo``) and QoS limits (``sacctmgr``).

``python -m llamantino site init`` turns it into a hardware option; the SLURM launcher checks QoS
limits against ``sacctmgr`` when it answers (the YAML's ``qos_limits`` otherwise).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

from llamantino.errors import ConfigError
from llamantino.config.schema import ACCELERATORS, QosLimit, time_seconds

QUERY_TIMEOUT_S = 30  # a controller that has not answered by then is down or unreachable: never wait for good


def _run(argv: list[str]) -> str | None:
    """The output of a SLURM query; None when the command is missing, fails or does not answer in time."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _slurm_time(text: str) -> str | None:
    """sinfo/sacctmgr time (``1-00:00:00``, ``24:00:00``, ``UNLIMITED``, ``infinite``) or None."""
    text = text.strip()
    return None if not text or text.lower() in ("infinite", "unlimited", "n/a") else text


def partitions() -> list[dict]:
    """One record per partition: name, default, nodes, CPUs and memory (MB) per node, GPUs, time limit."""
    out = _run(["sinfo", "-h", "-o", "%P|%D|%c|%m|%G|%l|%a"])
    if out is None:
        raise ConfigError(f"sinfo does not answer here (missing, failed, or no answer in {QUERY_TIMEOUT_S} s): run "
                          "`python -m llamantino site init` on a login node of the cluster")
    records = []
    for line in out.splitlines():
        name, nodes, cpus, memory, gres, limit, state = (line.split("|") + [""] * 7)[:7]
        match = re.search(r"gpu(?::([A-Za-z0-9_]+))?:(\d+)", gres)
        records.append({"name": name.rstrip("*"), "default": name.endswith("*"), "nodes": int(nodes or 0),
                        "cpus": int(re.sub(r"\D.*", "", cpus) or 1), "memory_mb": int(re.sub(r"\D.*", "", memory) or 0),
                        "gpus": int(match.group(2)) if match else 0,
                        "gpu_type": (match.group(1) or "").lower() if match else "",
                        "time": _slurm_time(limit), "up": state == "up"})
    return records


def qos_limits() -> dict[str, QosLimit] | None:
    """Node and wall-time limits per QoS from ``sacctmgr`` (None when it does not answer)."""
    out = _run(["sacctmgr", "-nP", "show", "qos", "format=Name,MaxWall,MaxTRES,MinTRES"])
    if out is None:
        return None
    limits = {}
    for line in out.splitlines():
        name, wall, max_tres, min_tres = (line.split("|") + [""] * 4)[:4]
        most = re.search(r"node=(\d+)", max_tres)
        least = re.search(r"node=(\d+)", min_tres)
        wall = _slurm_time(wall)
        if most or wall:
            limits[name] = QosLimit(min_nodes=int(least.group(1)) if least else 1,
                                    max_nodes=int(most.group(1)) if most else 1_000_000, max_time=wall or "365-00:00:00")
    return limits


def hardware_option(name: str, partition: str | None, *, accelerator: str | None, gpu_memory_gb: float | None,
                    offline: bool) -> dict:
    """A hardware option (as conf/hardware/*.yaml holds) for one partition of this cluster."""
    found = partitions()
    chosen = next((p for p in found if p["name"] == partition), None) if partition else \
        next((p for p in found if p["default"]), found[0] if found else None)
    if chosen is None:
        raise ConfigError(f"--partition {partition!r} is not a partition here ({', '.join(p['name'] for p in found)})")
    gpus = chosen["gpus"]
    gpu_types = {name for name in ACCELERATORS if name != "cpu"}
    kind = accelerator or (chosen["gpu_type"] if chosen["gpu_type"] in gpu_types else ("a100" if gpus else "cpu"))
    if kind != "cpu" and gpus == 0:
        raise ConfigError(f"partition {chosen['name']} has no GPUs (sinfo GRES); use --accelerator cpu")
    memory = gpu_memory_gb or ACCELERATORS[kind].memory_gb
    limits = qos_limits() or {}
    option = {"name": name, "accelerator": kind, "nodes": 1, "gpus_per_node": gpus if kind != "cpu" else 0,
              "gpu_memory_gb": float(memory or 0), "cpus_per_node": chosen["cpus"], "bf16": kind != "cpu",
              "tf32": kind != "cpu", "attn_implementation": "flash_attention_2" if kind != "cpu" else "sdpa",
              "peak_tflops": ACCELERATORS[kind].peak_tflops, "offline": offline,
              "slurm": {"partition": chosen["name"], "time": chosen["time"] or "24:00:00",
                        "mem": f"{int(chosen['memory_mb'] * 0.95)}M" if chosen["memory_mb"] else None,
                        "qos_limits": {qos: {"min_nodes": limit.min_nodes, "max_nodes": limit.max_nodes,
                                             "max_time": limit.max_time} for qos, limit in limits.items()}}}
    if chosen["time"] and time_seconds(chosen["time"]) < time_seconds(option["slurm"]["time"]):
        option["slurm"]["time"] = chosen["time"]
    return option


def header(option: dict) -> str:
    return (f"# Written by `python -m llamantino site init` on {time.strftime('%Y-%m-%d')} from sinfo and sacctmgr:\n"
            f"# partition {option['slurm']['partition']}. Check gpu_memory_gb, peak_tflops, offline (do compute\n"
            "# nodes reach the internet?) and add modules, env and storage for your site.\n")


def write_site_option(folder, option: dict, comment: str):
    """``<folder>/hardware/<name>.yaml``, checked against the schema first; never overwrites."""
    import os
    from pathlib import Path

    import yaml

    from llamantino.config.compose import check_run_name
    from llamantino.config.schema import HardwareConfig, from_plain

    check_run_name(option["name"])  # a file name, like a run name
    from_plain(HardwareConfig, option, f"hardware ({option['name']})")
    path = Path(folder).expanduser().resolve() / "hardware" / f"{option['name']}.yaml"
    if path.exists():
        raise ConfigError(f"{path} exists; choose another --name or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(comment + yaml.safe_dump(option, sort_keys=False))
    os.replace(tmp, path)
    return path
