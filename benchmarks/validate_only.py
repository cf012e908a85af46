"""Baseline of benchmark 1: Axolotl's own validation of a recipe, in a minimal script.

    python benchmarks/validate_only.py <axolotl.yaml> <hardware option>

What any tool that validates Axolotl recipes has to pay: importing Axolotl, registering the
plugin, validating with the target's capabilities. llamantino's render is measured against it.
"""

import os
import sys

import yaml

os.environ.update(AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1")
from axolotl.cli.config import prepare_plugins  # noqa: E402
from axolotl.utils.config import validate_config  # noqa: E402
from axolotl.utils.dict import DictDefault  # noqa: E402

recipe = DictDefault(yaml.safe_load(open(sys.argv[1])))
prepare_plugins(recipe)
gpu = sys.argv[2] != "cpu"
validate_config(recipe, capabilities={"bf16": gpu, "fp8": False, "tf32": gpu, "n_gpu": 1, "n_node": 1,
                                      "compute_capability": "sm_80" if gpu else None},
                env_capabilities={"torch_version": "2.13.0"})
print("valid")
