"""One data-path measurement in a fresh process: Axolotl's own dataset preparation of a recipe.

    python benchmarks/data_worker.py <run dir>     # prints one JSON line

Times only the data preparation (Axolotl imported and the config validated beforehand), with the
datasets cache disabled so nothing is reused between runs, and reports rows, tokens, seconds and the
process's peak RSS (children included).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    run_dir = Path(sys.argv[1]).resolve()
    os.chdir(run_dir)
    os.environ.update(AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      WANDB_MODE="disabled")
    import datasets
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets, load_preference_datasets
    from axolotl.integrations.base import PluginManager
    from transformers import AutoTokenizer

    datasets.disable_caching()
    cfg = load_cfg("axolotl.yaml")
    started = time.perf_counter()
    meta = PluginManager.get_instance().load_datasets(cfg, preprocess=True) if cfg.plugins else None
    if meta is None:
        meta = load_preference_datasets(cfg=cfg) if cfg.rl else load_datasets(cfg=cfg)
    seconds = time.perf_counter() - started
    data = meta.train_dataset
    if "input_ids" in data.column_names:
        tokens = sum(len(ids) for ids in data["input_ids"])
    else:  # preference pairs stay text until TRL tokenises them: count what it will tokenise
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_config or cfg.base_model)
        tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"])
                     for key in ("prompt", "chosen", "rejected") for text in data[key])
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"rows": len(data), "tokens": tokens, "seconds": seconds, "peak_rss_mb": peak / 1024}))


if __name__ == "__main__":
    main()
