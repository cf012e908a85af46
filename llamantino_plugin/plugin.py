"""The Axolotl plugin class: ``plugins: [llamantino_plugin.plugin.LlamantinoPlugin]``."""

from __future__ import annotations

import os
import socket

from axolotl.integrations.base import BasePlugin

from llamantino_plugin.templates import template_info, template_source


class LlamantinoPlugin(BasePlugin):
    """Italian data loaders, the LLaMAntino prompt templates, and data accounting for Axolotl.

    Hooks:
        register: turns ``llamantino_template`` (+ ``llamantino_system_prompt``) into Axolotl's
            ``chat_template: jinja`` / ``chat_template_jinja``, so the tokenizer saved with the
            model carries the exact training format.
        load_datasets: on CPU-only multi-process runs, maps every rank to the CPU (Axolotl maps
            rank N to device N, which does not exist); for DPO, counts the pairs Axolotl will drop
            for length and stops with a clear message when none would be left.
    """

    def get_input_args(self) -> str:
        return "llamantino_plugin.args.LlamantinoArgs"

    def register(self, cfg: dict) -> None:
        name = cfg.get("llamantino_template")
        if not name:
            return
        info = template_info(name)
        if info.kind != "chat":
            return
        if cfg.get("chat_template_jinja") or cfg.get("chat_template") not in (None, "jinja"):
            raise ValueError(
                "llamantino_template sets the chat template; remove chat_template/chat_template_jinja from the recipe"
            )
        cfg["chat_template"] = "jinja"
        cfg["chat_template_jinja"] = template_source(name, cfg.get("llamantino_system_prompt"))

    def load_datasets(self, cfg, preprocess: bool = False):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
            print(f"llamantino: rank {os.environ.get('RANK', '0')}/{world} joined on node {node}", flush=True)
            import torch

            if not torch.cuda.is_available():
                cfg.device_map = {"": "cpu"}
        if cfg.rl:
            _account_preferences(cfg)
        return None


def _account_preferences(cfg) -> None:
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.data.shared import datasets_with_name_generator, load_dataset_with_config

    from llamantino_plugin import report
    from llamantino_plugin.preferences import PreferenceError, account

    if not any(str(d.get("type") or "") == "llamantino_plugin.dpo" for d in cfg.datasets or []):
        return
    tokenizer = load_tokenizer(cfg)
    for index, ds_cfg in enumerate(datasets_with_name_generator(cfg.datasets)):
        if str(ds_cfg.get("type") or "") != "llamantino_plugin.dpo":
            continue
        dataset = load_dataset_with_config(ds_cfg, cfg.hf_use_auth_token, streaming=False)
        if hasattr(dataset, "keys"):  # a DatasetDict: Axolotl trains on its train split
            dataset = dataset["train"]
        counts = account(cfg, dataset, index, tokenizer)
        name = str(ds_cfg.get("path"))
        report.record(cfg, name, "preferences", counts)
        if counts["kept"] == 0:
            raise PreferenceError(
                f"dataset {name}: every preference pair would be dropped ({report.describe(counts)}): "
                f"prompt+answer needs at least {counts.get('shortest_pair_tokens', '?')} tokens but "
                f"sequence_len is {cfg.sequence_len}; raise sequence_len or set excess_length_strategy: truncate"
            )
