"""``python -m llamantino site init``: a hardware option for the cluster this runs on.

    python -m llamantino site init --name mycluster --out ~/llamantino-site
    export LLAMANTINO_CONFIG_PATH=~/llamantino-site     # every composition finds hardware=mycluster

Reads ``sinfo`` (partitions: nodes, CPUs, memory, GPUs, time limit) and ``sacctmgr`` (QoS node and
time limits) and writes ``<out>/hardware/<name>.yaml``, checked against the schema.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llamantino.argparsing import ArgumentParser


def cmd_init(args) -> None:
    from llamantino.launchers.cluster import hardware_option, header, write_site_option

    option = hardware_option(args.name, args.partition, accelerator=args.accelerator, gpu_memory_gb=args.gpu_memory_gb,
                             offline=not args.online)
    path = write_site_option(Path(args.out), option, header(option))
    print(f"wrote {path}: export LLAMANTINO_CONFIG_PATH={path.parent.parent} and use hardware={args.name}")


def main(argv=None) -> int:
    from llamantino.config.schema import ACCELERATORS

    parser = ArgumentParser(prog="python -m llamantino site", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="write a hardware option from sinfo and sacctmgr")
    init.add_argument("--name", required=True, help="the option's name (hardware=<name>)")
    init.add_argument("--out", required=True, help="the site config folder (for LLAMANTINO_CONFIG_PATH)")
    init.add_argument("--partition", help="default: the cluster's default partition")
    init.add_argument("--accelerator", choices=list(ACCELERATORS), help="default: from the partition's GRES")
    init.add_argument("--gpu-memory-gb", type=float, help="GPU memory (default: the accelerator kind's, "
                      "llamantino/config/schema.py ACCELERATORS)")
    init.add_argument("--online", action="store_true", help="compute nodes reach the internet (default: offline)")
    args = parser.parse_args(argv)
    cmd_init(args)
    return 0

