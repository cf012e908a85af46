"""Golden files: a handful of rendered recipes and sbatch scripts, reviewed once, then compared.

Regenerate after an intended change with ``LLAMANTINO_UPDATE_GOLDEN=1 pytest tests/test_golden.py``
and read the diff before committing it.
"""

from __future__ import annotations

import os

import pytest

from conftest import TESTS, build

GOLDEN = TESTS / "golden"
CASES = {
    "default_sft_tiny_cpu": [],
    "llamantino2_7b_adapt_leonardo_3n": ["model=llama2_7b", "stage=adapt", "data=clean_mc4_it",
                                         "hardware=leonardo_booster", "hardware.nodes=3", "launcher=slurm",
                                         "hardware.slurm.account=IscrC_EXAMPLE"],
    "llama2_13b_sft_fsdp_leonardo_2n": ["model=llama2_13b", "stage=sft", "data=ultrachat_ita",
                                        "prompt.template=llamantino2_chat", "hardware=leonardo_booster",
                                        "hardware.nodes=2", "launcher=slurm", "hardware.slurm.account=IscrC_EXAMPLE"],
    "anita_dpo_llama3_8b_instruct": ["model=llama3_8b_instruct", "stage=dpo", "data=orpo_dpo_mix_40k",
                                     "hardware=leonardo_booster", "launcher=slurm",
                                     "hardware.slurm.account=IscrC_EXAMPLE"],
    "tiny_sft_local_slurm_2n": ["hardware=local_slurm", "launcher=slurm", "data=it_ultrachat_sample",
                                "prompt.template=llamantino2_chat"],
}


def rendered(overrides):
    from llamantino.config.compose import compose_config

    run = build(compose_config(overrides), GOLDEN / "unused", overrides)
    return {name: run.files[name] for name in ("axolotl.yaml", "job.sbatch") if name in run.files}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    for name, text in rendered(CASES[case]).items():
        path = GOLDEN / f"{case}.{name}"
        if os.environ.get("LLAMANTINO_UPDATE_GOLDEN"):
            path.write_text(text)
        assert path.is_file(), f"missing golden {path}; create it with LLAMANTINO_UPDATE_GOLDEN=1 and review it"
        assert text == path.read_text(), f"{path.name} drifted from its golden file"
