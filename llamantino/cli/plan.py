"""``python -m llamantino plan <overrides>``: jobs, GPU hours, wall clock and budget before you submit.

    python -m llamantino plan experiment=llamantino2_7b_adapt
    python -m llamantino plan pipeline=llamantino2 model=llama2_7b hardware=leonardo_booster hardware.nodes=3
    python -m llamantino plan -m experiment=llamantino2_7b_adapt stage.learning_rate=1e-4,2e-4
    python -m llamantino plan stage=eval eval=ita_leaderboard model=llama3_8b hardware=leonardo_booster
    python -m llamantino plan experiment=llamantino2_7b_adapt --calibrate <finished training run>
    python -m llamantino plan experiment=anita_8b_dpo 'stage.learning_rate=tag(log,interval(1e-6,1e-4))' --trials 24 --batch 6

A stage, every step of a pipeline (pipeline=...) or every point of a sweep (-m) is planned as the
launcher would submit it: its job shape, partition, hours and billing, then the totals. Nothing is written.

Formulas (each plan line says which it used):
  tokens     max_steps x micro_batch x grad_accum x world_size x sequence_len, or, for epochs,
             rows x epochs x tokens_per_row (tokens_per_row defaults to sequence_len: padded or
             packed rows; DPO counts chosen and rejected: 2 x sequence_len per pair)
  FLOPs      full fine-tune 6·N·T; LoRA/QLoRA 4·N·T (forward 2NT + backward through the
             activations 2NT; frozen weights get no weight gradient, adapters are negligible);
             gradient checkpointing recomputes the forward: +2·N·T; DPO adds the reference
             model's forward: +2·N·T (N = parameters, T = tokens)
  GPU hours  FLOPs / (GPUs' peak bf16 FLOP/s x utilisation) / 3600
  MFU        assumed (0.40 full, 0.35 LoRA, 0.25 QLoRA), --mfu, or --calibrate <run>: a finished
             training run's trainer-measured samples/s x tokens per row (else planned tokens /
             status.json's elapsed time) x FLOPs per token / (its own hardware's peak x its GPUs)
  eval       forward 2·N·T, T = per task: items (counted for the project's own tasks, else 10,000
             assumed) x 4 choices x (few-shot + 1) x 150 tokens; 30% MFU assumed; + model load
  merge      bf16 model read and written (2 x 2N bytes) at hardware.storage.write_gbps + 120 s start
  release    the model (or adapter) read and written in shards, as merge
  prepare    corpus tokens / (array tasks x cores x 200,000 tokens/s per core, assumed): CPU only;
             SFT/DPO rows: data.mix_rows or data.num_rows x sequence_len (else one epoch's trained
             tokens) / (hardware.prepare.cpus x 200,000 tokens/s), one task
  memory     per GPU: weights and optimizer state (16 bytes/parameter full, sharded by FSDP; 2 LoRA;
             0.55 QLoRA) x 1.2 + 2 GB, plus activations of one micro batch b of sequence_len s:
             s·b·h·(34 + 5·a·s/h) bytes per layer (Korthikanti et al. 2022; the 5·a·s/h term only with
             eager attention), only 2·s·b·h per layer plus one full layer with gradient checkpointing
  budget     hours x nodes x the share of a node the job holds (the largest of its CPUs, GPUs and
             memory: a job holding all CPUs bills the whole node, idle GPUs included) x the node's
             billing units (Leonardo: core hours, 32 per node hour); prepare: cores x hours
  sweep      points x their cost; wall clock: one job array, launcher.array_parallelism at once
             (fewer when the QoS's max_nodes holds fewer points)
  study      --trials N x the costliest corner of the space (all low, all high, each bound alone);
             wall clock: the batches' job arrays one after the other
"""

from __future__ import annotations

import argparse
import json

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino plan", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m llamantino")
    parser.add_argument("-m", "--multirun", action="store_true", help="plan a sweep: key=a,b,c gives one point each")
    parser.add_argument("--mfu", type=float, help="model FLOPs utilisation (default: 0.40 full, 0.35 LoRA, 0.25 QLoRA)")
    parser.add_argument("--calibrate", metavar="RUN_DIR",
                        help="use the MFU measured in this finished training run (on its own GPU hardware)")
    parser.add_argument("--tokens-per-row", type=int, help="average tokens per row (default: sequence_len)")
    parser.add_argument("--trials", type=int, help="plan a study (llamantino search) of this many trials over the "
                                                   "search dimensions given (key=interval(...), choice(...))")
    parser.add_argument("--batch", type=int, default=4, help="a study's trials per batch (default 4)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_intermixed_args(argv)
    from llamantino.errors import ConfigError
    from llamantino.orchestrate.plans import calibrate, format_command_plan, plan_command

    if args.mfu is not None and args.calibrate:
        raise ConfigError("--mfu and --calibrate both set the MFU: give one of them")
    mfu = calibrate(args.calibrate) if args.calibrate else args.mfu
    if args.trials is not None:
        if args.multirun:
            raise ConfigError("-m plans a grid sweep and --trials a study: give one of them")
        from llamantino.search.plan import format_study_plan, plan_study

        result = plan_study(args.overrides, args.trials, args.batch, mfu, args.tokens_per_row)
        print(json.dumps(result, indent=2, default=str) if args.json else format_study_plan(result))
        return 0
    result = plan_command(args.overrides, multirun=args.multirun, mfu=mfu, tokens_per_row=args.tokens_per_row)
    print(json.dumps(result, indent=2, default=str) if args.json else format_command_plan(result))
    return 0
