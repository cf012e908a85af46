"""Corpus preparation is CPU work: on a site with a CPU partition it never holds a GPU node."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT


def directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)$", script, re.MULTILINE))


def test_leonardo_tokenises_on_the_dcgp_cpu_partition(compose):
    from llamantino.records.rundir import PreparedDir
    from llamantino.render.sbatch import prepare_script

    cfg = compose("hardware=leonardo_booster", "hardware.slurm.account=PRJ")
    for step in PreparedDir.STEPS:
        found = directives(prepare_script(cfg, step, "/fast/prepared/k", "k" * 32, tasks=8))
        if step == "fetch":  # downloads need the network: the serial partition has it
            assert found["partition"] == "lrd_all_serial"
            continue
        assert found["partition"] == "dcgp_usr_prod", step
        assert "qos" not in found, step  # boost_qos_* do not apply there; the account's default does
        assert found["account"] == "PRJ"
    task = directives(prepare_script(cfg, "task", "/fast/prepared/k", "k" * 32, tasks=8))
    cores, mem = int(task["cpus-per-task"]), int(task["mem"].removesuffix("M"))
    assert 112 // cores >= 1 and (112 // cores) * mem <= 512_000  # whole tasks fit a 112-core, 512 GB node


@pytest.mark.parametrize("option", sorted(p.stem for p in (ROOT / "conf" / "hardware").glob("*.yaml")))
def test_a_named_prepare_partition_is_not_the_gpu_partition(compose, option):
    cfg = compose(f"hardware={option}")
    hardware = cfg.hardware
    if hardware.gpus_per_node and hardware.prepare.partition:
        assert hardware.prepare.partition != hardware.slurm.partition
