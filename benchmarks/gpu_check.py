"""GPU check: the rendered recipes on one GPU, tokens/s and model FLOPs utilisation, in minutes.

    .venv/bin/python benchmarks/gpu_check.py [--steps 30] [--out gpu_check.md]

Needs one CUDA GPU (A100/H100/H200). It builds the tiny model and a ~1B-parameter random-init
Llama (22 layers, hidden 2048, the tiny tokenizer), renders llamantino recipes for them with the
matching hardware option (a100_80gb_x1, or h100_80gb_x1 on Hopper), trains each with Axolotl for a
few steps, and reports tokens/s from Axolotl's own log and MFU = (FLOPs per token x tokens/s) /
peak bf16 FLOP/s, with FLOPs per token 6N (full), 4N (LoRA/QLoRA), +2N with gradient checkpointing
(the planner's formulas, llamantino/cli/plan.py). Without flash-attn installed it uses sdpa and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
ONE_B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 16,
         "num_key_value_heads": 8, "max_position_embeddings": 4096}


def build_one_b(target: Path) -> tuple[Path, float]:
    """A ~1B random-init Llama with the tiny tokenizer; returns (folder, parameters in billions)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llamantino.inputs.tiny import ensure_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_tiny_model()))
    torch.manual_seed(0)
    config = LlamaConfig(**ONE_B, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target, params


def render(work: Path, name: str, overrides: list[str]) -> Path:
    out = subprocess.run([PY, "-m", "llamantino", "launcher=dry", f"run.output_root={work}", f"run.name={name}",
                          *overrides], cwd=work, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"render {name} failed:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1].split(": ", 1)[1])


def train(run_dir: Path) -> dict:
    out = subprocess.run([PY, "-m", "axolotl.cli.train", "axolotl.yaml"], cwd=run_dir, capture_output=True, text=True,
                         env={**__import__("os").environ, "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled"})
    log = out.stdout + out.stderr
    (run_dir / "gpu_check.log").write_text(log)
    if out.returncode != 0:
        return {"error": log[-1500:]}
    runtime = float(re.findall(r"'train_runtime': '?([0-9.]+)", log)[-1])
    tokens = int(re.findall(r"'tokens/total': '?([0-9]+)", log)[-1])
    return {"tokens_per_s": tokens / runtime, "runtime_s": runtime, "tokens": tokens}


def main() -> int:
    from llamantino.argparsing import ArgumentParser  # a usage error is one line, as in every command

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU: the GPU check needs one (run it where an accelerator is lent)", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    hardware = "h100_80gb_x1" if any(k in gpu for k in ("H100", "H200", "GH200")) else "a100_80gb_x1"
    from llamantino.config.compose import compose_config

    peak = compose_config([f"hardware={hardware}"]).hardware.peak_tflops * 1e12
    extra = [] if importlib.util.find_spec("flash_attn") else ["hardware.attn_implementation=sdpa"]
    common = [f"hardware={hardware}", f"stage.max_steps={args.steps}", "stage.save_steps=null",
              "stage.saves_per_epoch=null", "stage.sequence_len=1024", *extra]
    rows = []
    with tempfile.TemporaryDirectory(prefix="llamantino-gpu-") as tmp:
        work = Path(tmp)
        one_b, params_b = build_one_b(work / "one_b")
        cases = [
            ("tiny sft, full fine-tune", 0.0002, "full", ["stage=sft", "data=it_ultrachat_sample"]),
            ("tiny adapt (QLoRA)", 0.0002, "qlora", ["stage=adapt", "data=it_text_sample"]),
            ("1B sft, full bf16", params_b, "full", ["stage=sft", "data=it_ultrachat_sample", f"run.input_model={one_b}",
                                                     "stage.micro_batch_size=4"]),
            ("1B adapt, QLoRA", params_b, "qlora", ["stage=adapt", "data=it_text_sample", f"run.input_model={one_b}",
                                                    "stage.micro_batch_size=4"]),
        ]
        for index, (label, params, method, overrides) in enumerate(cases):
            run_dir = render(work, f"gpu{index}", common + overrides)
            recipe = (run_dir / "axolotl.yaml").read_text()
            checkpointing = "gradient_checkpointing: true" in recipe
            result = train(run_dir)
            if "error" in result:
                rows.append(f"| {label} | failed | | | {result['error'][-200:]!r} |")
                continue
            per_token = (6 if method == "full" else 4) + (2 if checkpointing else 0)
            mfu = per_token * params * 1e9 * result["tokens_per_s"] / peak
            rows.append(f"| {label} | {result['tokens_per_s']:,.0f} | {mfu:.1%} | {per_token}·N | {result['runtime_s']:.1f} s |")
    text = "\n".join([f"# GPU check on {gpu} (hardware={hardware}{', sdpa: flash-attn not installed' if extra else ''})",
                      "", "| recipe | tokens/s | MFU | FLOPs/token | train time |", "|---|---|---|---|---|", *rows, "",
                      f"Peak bf16: {peak / 1e12:g} TFLOP/s; {args.steps} steps each; sequence length 1024."])
    args.out.write_text(text + "\n")
    print(text)
    print(json.dumps({"gpu": gpu, "hardware": hardware}))
    return 0


if __name__ == "__main__":
    from llamantino.errors import entry

    sys.exit(entry(lambda argv: main()))
