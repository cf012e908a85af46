"""``python -m llamantino plan <overrides>``: tokens, FLOPs, GPU hours and budget before you submit.

    python -m llamantino plan experiment=llamantino2_7b_adapt
    python -m llamantino plan model=llama2_13b stage=sft data=ultrachat_ita hardware=leonardo_booster hardware.nodes=2

Formulas (printed with every plan):
  tokens     max_steps x micro_batch x grad_accum x world_size x sequence_len, or, for epochs,
             rows x epochs x tokens_per_row (tokens_per_row defaults to sequence_len: padded or
             packed rows; DPO counts chosen and rejected: 2 x sequence_len per pair)
  FLOPs      full fine-tune 6·N·T; LoRA/QLoRA 4·N·T (forward 2NT + backward through the
             activations 2NT; frozen weights get no weight gradient, adapters are negligible);
             gradient checkpointing recomputes the forward: +2·N·T; DPO adds the reference
             model's forward: +2·N·T (N = parameters, T = tokens)
  GPU hours  FLOPs / (GPUs' peak bf16 FLOP/s x utilisation) / 3600
  memory     per GPU: weights and optimizer state (16 bytes/parameter full, sharded by FSDP; 2 LoRA;
             0.55 QLoRA) x 1.2 + 2 GB, plus activations of one micro batch b of sequence_len s:
             s·b·h·(34 + 5·a·s/h) bytes per layer (Korthikanti et al. 2022; the 5·a·s/h term only with
             eager attention), only 2·s·b·h per layer plus one full layer with gradient checkpointing
  budget     node hours x the hardware's billing units per node hour (Leonardo: core hours,
             32 per node hour, whole nodes billed)
"""

from __future__ import annotations

import argparse
import json

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino plan", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m llamantino")
    parser.add_argument("--mfu", type=float, help="model FLOPs utilisation (default: 0.40 full, 0.35 LoRA, 0.25 QLoRA)")
    parser.add_argument("--tokens-per-row", type=int, help="average tokens per row (default: sequence_len)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from llamantino.config.compose import compose_config
    from llamantino.orchestrate.costs import format_plan, plan

    result = plan(compose_config(args.overrides), args.mfu, args.tokens_per_row)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0

