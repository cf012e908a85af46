"""Run every benchmark and write BENCHMARKS.md: each result a ratio against a baseline of the same run.

    .venv/bin/python benchmarks/run.py            # full (about 20 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # smaller data and fewer repeats, to try it

1. Render latency: a cold `python -m llamantino launcher=dry` against a minimal script calling the
   same Axolotl validation on the same recipe; a 64-point `-m` sweep against one render.
2. Data path: tokens/s of the plugin's loaders against Axolotl's built-in strategies on the same
   generated Italian data (completion, alpaca, chat_template, chatml.prompt_pairs), 2 processes.
3. Training: tokens/s of the tiny model from the rendered adapt and sft recipes against plain
   hand-written Axolotl YAMLs with the same model, data and steps.
4. Memory: peak RSS of the render path (with and without validation; is torch imported?) and of
   the data path on a generated 100 MB Italian text file, plugin against built-in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
ENV = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run(argv, cwd, env=None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB of the process, stdout) of a fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{out[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def median_of(n, fn):
    values = [fn() for _ in range(n)]
    return statistics.median(values), values


def alternating(n, ours, baseline) -> tuple[list, list]:
    """``n`` measurements of each side, taken in turns (ours, baseline, ours, ...), so a drift in the
    machine's speed during the benchmark falls on both sides alike."""
    pairs = [(ours(), baseline()) for _ in range(n)]
    return [a for a, _ in pairs], [b for _, b in pairs]


# --- generated Italian data ---------------------------------------------------------------------


def sentences() -> list[str]:
    from llamantino.paths import SAMPLES_DIR
    from llamantino_plugin.formats import iter_jsonl

    found = []
    for path in sorted(SAMPLES_DIR.glob("*.jsonl")):
        for _, row in iter_jsonl(path):
            for value in row.values():
                if isinstance(value, str) and len(value) > 30:
                    found += [s.strip() + "." for s in value.split(".") if len(s.strip()) > 20]
    return sorted(set(found))


def generate(folder: Path, rows: int, seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)
    pool = sentences()
    para = lambda k: " ".join(rng.choice(pool) for _ in range(k))  # noqa: E731
    files = {name: folder / f"{name}.jsonl" for name in ("text", "instructions", "conversations", "preferences")}
    with open(files["text"], "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": para(rng.randint(3, 12))}, ensure_ascii=False) + "\n")
    with open(files["instructions"], "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"instruction": para(1), "input": para(1) if rng.random() < 0.5 else "",
                                "output": para(rng.randint(1, 4))}, ensure_ascii=False) + "\n")
    with open(files["conversations"], "w") as f:
        for _ in range(rows):
            turns = []
            for _ in range(rng.randint(1, 3)):
                turns += [{"role": "user", "content": para(1)}, {"role": "assistant", "content": para(rng.randint(1, 3))}]
            f.write(json.dumps({"messages": turns}, ensure_ascii=False) + "\n")
    with open(files["preferences"], "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"prompt": para(1), "chosen": para(2), "rejected": para(1)}, ensure_ascii=False) + "\n")
    return files


def text_file_of_size(path: Path, megabytes: int, seed: int = 1) -> Path:
    rng = random.Random(seed)
    pool = sentences()
    target = megabytes * 1024 * 1024
    with open(path, "w") as f:
        while f.tell() < target:
            f.write(json.dumps({"text": " ".join(rng.choice(pool) for _ in range(rng.randint(3, 12)))},
                               ensure_ascii=False) + "\n")
    return path


# --- recipes ---------------------------------------------------------------------------------------


def render(work: Path, name: str, overrides: list[str]) -> Path:
    """Render a run directory with llamantino (launcher=dry) and return it."""
    out = run([PY, "-m", "llamantino", "launcher=dry", f"run.output_root={work}", f"run.name={name}", *overrides],
              cwd=work)[2]
    return Path(out.strip().splitlines()[-1].split(": ", 1)[1])


def builtin_variant(run_dir: Path, name: str, edit) -> Path:
    """A copy of a rendered run directory whose recipe uses Axolotl's built-in strategy instead."""
    import shutil

    import yaml

    target = run_dir.parent / name
    shutil.copytree(run_dir, target, symlinks=True)
    recipe = yaml.safe_load((target / "axolotl.yaml").read_text())
    for key in [k for k in recipe if k.startswith("llamantino_")] + ["plugins"]:
        recipe.pop(key, None)
    edit(recipe)
    (target / "axolotl.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return target


def set_dataset(recipe: dict, **entry):
    recipe["datasets"][0].update(entry)


# --- the benchmarks -------------------------------------------------------------------------------


def bench_render(work: Path, repeats: int) -> dict:
    run_dir = render(work, "render", [])
    baseline = [PY, str(ROOT / "benchmarks" / "validate_only.py"), str(run_dir / "axolotl.yaml"), "cpu"]
    ours = [PY, "-m", "llamantino", "launcher=dry", f"run.output_root={work / 'r'}"]
    ours_all, base_all = alternating(repeats, lambda: run(ours, work)[0], lambda: run(baseline, work)[0])
    ours_median, base_median = statistics.median(ours_all), statistics.median(base_all)
    rates = ",".join(f"{1e-5 * (i + 1):.2e}" for i in range(64))
    sweep = [PY, "-m", "llamantino", "-m", f"stage.learning_rate={rates}", "launcher=dry", f"run.output_root={work / 's'}"]
    sweep_median, sweep_all = median_of(max(1, repeats // 2), lambda: run(sweep, work)[0])
    return {"baseline_s": base_median, "render_s": ours_median, "sweep64_s": sweep_median,
            "render_ratio": ours_median / base_median, "sweep_ratio": sweep_median / ours_median,
            "samples": {"baseline": base_all, "render": ours_all, "sweep64": sweep_all}}


def data_measure(run_dir: Path) -> dict:
    import shutil

    shutil.rmtree(run_dir / "prepared", ignore_errors=True)  # never measure a cached preparation
    out = run([PY, str(ROOT / "benchmarks" / "data_worker.py"), str(run_dir)], cwd=run_dir)[2]
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def bench_data(work: Path, files: dict, repeats: int) -> list[dict]:
    from llamantino_plugin.templates import template_source

    anita = template_source("anita")
    cases = [
        ("text", "completion", ["stage=adapt", "data=it_text_sample", f"data.path={files['text']}", "stage.sequence_len=512"],
         lambda r: set_dataset(r, type="completion")),
        ("instructions", "alpaca", ["data=it_instructions_sample", f"data.path={files['instructions']}", "data.columns.instruction=instruction", "data.columns.input=input", "data.columns.output=output",
                                    "prompt.template=alpaca_it", "stage.sequence_len=512"],
         lambda r: set_dataset(r, type="alpaca")),
        ("conversations", "chat_template", ["data=it_messages_sample", f"data.path={files['conversations']}",
                                            "stage.sequence_len=512"],
         lambda r: (set_dataset(r, type="chat_template", roles_to_train=["assistant"]),
                    r.update(chat_template="jinja", chat_template_jinja=anita))),
        ("preferences", "chatml.prompt_pairs", ["stage=dpo", "data=it_preferences_sample",
                                                f"data.path={files['preferences']}", "stage.sequence_len=512"],
         lambda r: set_dataset(r, type="chatml.prompt_pairs")),
    ]
    results = []
    for fmt, builtin, overrides, edit in cases:
        ours_dir = render(work, f"data-{fmt}", overrides + ["+stage.axolotl.dataset_num_proc=2"])
        base_dir = builtin_variant(ours_dir, f"builtin-{fmt}", edit)
        ours, base = alternating(repeats, lambda: data_measure(ours_dir), lambda: data_measure(base_dir))
        ours_tps = statistics.median(m["tokens"] / m["seconds"] for m in ours)
        base_tps = statistics.median(m["tokens"] / m["seconds"] for m in base)
        results.append({"format": fmt, "builtin": builtin, "ours_tokens_per_s": ours_tps, "builtin_tokens_per_s": base_tps,
                        "ratio": ours_tps / base_tps, "ours_rows": ours[0]["rows"], "builtin_rows": base[0]["rows"],
                        "ours_s": [m["seconds"] for m in ours], "builtin_s": [m["seconds"] for m in base]})
    return results


def profile_text_work(path: Path, tokenizer_dir: Path) -> dict:
    """Where the text loader's time goes, each part timed alone on the same rows in one process:
    its extra work over `completion` (normalisation and hashing), its encoder, and the hand-over
    to datasets as Arrow (flat buffers) against datasets' own conversion of the same Python lists."""
    import hashlib
    from functools import partial

    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter
    from transformers import AutoTokenizer

    from llamantino_plugin.encode import encode_text
    from llamantino_plugin.formats import iter_jsonl, normalise_text
    from llamantino_plugin.loading import _encode_to_arrow

    texts = [row["text"] for _, row in iter_jsonl(path)]
    timings = {"documents": len(texts)}
    started = time.perf_counter()
    for text in texts:
        hashlib.blake2b(normalise_text(text).encode("utf-8"), digest_size=16).digest()
    timings["normalise_and_hash_s"] = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    encode = partial(encode_text, columns={"text": "text"}, tokenizer=tokenizer, sequence_len=512)
    batch, indices = {"text": texts}, list(range(len(texts)))
    started = time.perf_counter()
    encoded = encode(batch, indices)
    timings["encode_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with ArrowWriter(stream=pa.BufferOutputStream()) as writer:
        writer.write_batch(encoded)
        writer.finalize()
    timings["datasets_conversion_s"] = time.perf_counter() - started
    started = time.perf_counter()
    _encode_to_arrow(batch, indices, encode=lambda *_: encoded)
    timings["arrow_buffers_s"] = time.perf_counter() - started
    timings["tokens"] = sum(len(ids) for ids in encoded["input_ids"])
    return timings


_RUNTIME = re.compile(r"'train_runtime': '?([0-9.]+)")
_TOKENS = re.compile(r"'tokens/total': '?([0-9]+)")


def train_measure(run_dir: Path) -> float:
    out = run([PY, "-m", "axolotl.cli.train", "axolotl.yaml"], cwd=run_dir)[2]
    runtime = float(_RUNTIME.findall(out)[-1])
    tokens = int(_TOKENS.findall(out)[-1])
    return tokens / runtime


def bench_train(work: Path, files: dict, repeats: int, steps: int) -> list[dict]:
    common = [f"stage.max_steps={steps}", "stage.micro_batch_size=4", "stage.sequence_len=256", "stage.save_steps=null",
              "stage.saves_per_epoch=null", "stage.gradient_accumulation_steps=1"]
    cases = [
        ("adapt", "completion", ["stage=adapt", "data=it_text_sample", f"data.path={files['text']}"],
         lambda r: set_dataset(r, type="completion")),
        ("sft", "alpaca", ["data=it_instructions_sample", f"data.path={files['instructions']}", "data.columns.instruction=instruction", "data.columns.input=input", "data.columns.output=output",
                           "prompt.template=alpaca_it"], lambda r: set_dataset(r, type="alpaca")),
    ]
    from llamantino.inputs.tiny import ensure_tiny_model

    ensure_tiny_model()
    results = []
    for stage, builtin, overrides, edit in cases:
        ours_dir = render(work, f"train-{stage}", overrides + common)
        base_dir = builtin_variant(ours_dir, f"handwritten-{stage}", edit)
        ours_all, base_all = alternating(repeats, lambda: train_measure(ours_dir), lambda: train_measure(base_dir))
        ours, base = statistics.median(ours_all), statistics.median(base_all)
        results.append({"stage": stage, "builtin": builtin, "ours_tokens_per_s": ours, "handwritten_tokens_per_s": base,
                        "ratio": ours / base, "ours_all": ours_all, "handwritten_all": base_all,
                        "steps": steps})
    return results


def bench_memory(work: Path, megabytes: int) -> dict:
    probe = [PY, str(ROOT / "benchmarks" / "render_probe.py")]
    _, rss_render, out = run(probe + ["--no-validate"], work)
    torch_without = json.loads(out.strip().splitlines()[-1])["torch_imported"]
    _, rss_validate, out = run(probe, work)
    torch_with = json.loads(out.strip().splitlines()[-1])["torch_imported"]
    big = text_file_of_size(work / "big.jsonl", megabytes)
    ours_dir = render(work, "memory-text", ["stage=adapt", "data=it_text_sample", f"data.path={big}",
                                            "stage.sequence_len=512"])
    base_dir = builtin_variant(ours_dir, "memory-builtin", lambda r: set_dataset(r, type="completion"))
    ours, base = data_measure(ours_dir), data_measure(base_dir)
    return {"render_rss_mb": rss_render, "render_torch": torch_without, "validate_rss_mb": rss_validate,
            "validate_torch": torch_with, "file_mb": big.stat().st_size / 2**20,
            "ours_data_rss_mb": ours["peak_rss_mb"], "builtin_data_rss_mb": base["peak_rss_mb"],
            "ours_data_s": ours["seconds"], "builtin_data_s": base["seconds"],
            "ours_tokens": ours["tokens"], "builtin_tokens": base["tokens"]}


# --- report ---------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import version

    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, no GPU; Python {platform.python_version()}, "
            f"torch {version('torch')}, axolotl {version('axolotl')}, transformers {version('transformers')}")


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def write_report(path: Path, results: dict, args) -> None:
    r, lines = results, []
    lines += ["# Benchmarks", "",
              f"Generated by `python benchmarks/run.py{' --quick' if args.quick else ''}` on {time.strftime('%Y-%m-%d')}.",
              f"Machine: {machine()}.", "Every number is a median over repeated runs; every ratio is against a baseline "
              "measured in the same run, the two sides taken in turns. Timings are wall clock.", ""]
    if "render" in r:
        x = r["render"]
        lines += ["## 1. Render latency", "",
                  "| what | median s | ratio | target |", "|---|---|---|---|",
                  f"| baseline: Axolotl `validate_config` on the same recipe, minimal script, cold | {x['baseline_s']:.2f} | 1.00 | |",
                  f"| `python -m llamantino launcher=dry` (compose + validate + write), cold | {x['render_s']:.2f} | "
                  f"{x['render_ratio']:.3f} | < 1.10: {verdict(x['render_ratio'] < 1.10)} |",
                  f"| 64-point `-m` sweep, dry, cold | {x['sweep64_s']:.2f} | {x['sweep_ratio']:.2f} x one render | "
                  f"< 3: {verdict(x['sweep_ratio'] < 3)} |", ""]
    if "data" in r:
        lines += ["## 2. Data path (tokens/s through Axolotl's dataset preparation, 2 processes)", "",
                  "| format | plugin loader tok/s | built-in | built-in tok/s | ratio | target >= 1.0 | plugin s (runs) | built-in s (runs) |",
                  "|---|---|---|---|---|---|---|---|"]
        for x in r["data"]:
            lines.append(f"| {x['format']} | {x['ours_tokens_per_s']:,.0f} | `{x['builtin']}` | "
                         f"{x['builtin_tokens_per_s']:,.0f} | {x['ratio']:.2f} | {verdict(x['ratio'] >= 1.0)} | "
                         f"{', '.join(f'{v:.1f}' for v in x['ours_s'])} | {', '.join(f'{v:.1f}' for v in x['builtin_s'])} |")
        lines += ["", f"Rows per format: {args.rows} generated Italian rows (the plugin also checks, normalises and "
                  "deduplicates what the built-ins take as is).", ""]
        if "text_profile" in r:
            p = r["text_profile"]
            lines += [f"Profile of the text loader, each part timed alone in one process on the same "
                      f"{p['documents']:,} documents ({p['tokens']:,} tokens): Italian normalisation and BLAKE2 "
                      f"hashing, the work `completion` does not do, take {p['normalise_and_hash_s']:.2f} s; the "
                      f"whole encoder (check, normalise, hash, batched tokenisation, chunking) "
                      f"{p['encode_s']:.2f} s; handing its output to datasets as Arrow list arrays built from "
                      f"flat buffers {p['arrow_buffers_s']:.2f} s, where datasets' own conversion of the same "
                      f"Python lists (what `completion` pays) takes {p['datasets_conversion_s']:.2f} s. "
                      "Dedup and length filters are Arrow arithmetic. The rest of each run is Axolotl's own "
                      "(loading the JSON, its filters, saving the prepared set), the same on both sides; "
                      "compare any gap with the run-to-run spread in the last two columns.", ""]
    if "train" in r:
        lines += ["## 3. Training throughput (tiny model, CPU)", "",
                  "| stage | rendered recipe tok/s | hand-written YAML | hand-written tok/s | ratio | target >= 1.0 | rendered (runs) | hand-written (runs) |",
                  "|---|---|---|---|---|---|---|---|"]
        for x in r["train"]:
            lines.append(f"| {x['stage']} | {x['ours_tokens_per_s']:,.0f} | `{x['builtin']}` | "
                         f"{x['handwritten_tokens_per_s']:,.0f} | {x['ratio']:.2f} | {verdict(x['ratio'] >= 1.0)} | "
                         f"{', '.join(f'{v:,.0f}' for v in x['ours_all'])} | {', '.join(f'{v:,.0f}' for v in x['handwritten_all'])} |")
        lines += ["", "Tokens/s = `tokens/total` / `train_runtime` from Axolotl's own log; same model, data, "
                  f"{r['train'][0]['steps']} steps, batch 4 x 256 tokens padded to the sequence length on both sides "
                  "(identical tensor shapes, so the same work per step). Both sides run Axolotl's training loop on the same "
                  "tokens: sample packing, the lever that could raise the ratio, needs flash attention, which this "
                  "CPU machine lacks, so the rendered recipe leaves it off here; a ratio within the spread of the "
                  "runs is a tie.", ""]
    if "memory" in r:
        x = r["memory"]
        lines += ["## 4. Memory (peak RSS)", "", "| what | peak RSS MB | note |", "|---|---|---|",
                  f"| render path, no validation | {x['render_rss_mb']:.0f} | torch imported: {x['render_torch']} "
                  f"(target: no): {verdict(not x['render_torch'])} |",
                  f"| render path with Axolotl validation | {x['validate_rss_mb']:.0f} | torch imported: {x['validate_torch']} |",
                  f"| data path, plugin text loader, {x['file_mb']:.0f} MB file | {x['ours_data_rss_mb']:.0f} | "
                  f"{x['ours_data_s']:.0f} s, {x['ours_tokens']:,} tokens |",
                  f"| data path, built-in `completion`, same file | {x['builtin_data_rss_mb']:.0f} | "
                  f"{x['builtin_data_s']:.0f} s, {x['builtin_tokens']:,} tokens |", "",
                  f"Plugin / built-in peak RSS: {x['ours_data_rss_mb'] / x['builtin_data_rss_mb']:.2f}.", ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    from llamantino.argparsing import ArgumentParser  # a usage error is one line, as in every command

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data, fewer repeats")
    parser.add_argument("--only", nargs="*", choices=("render", "data", "train", "memory"))
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--profile-text", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_text:
        from llamantino.inputs.tiny import ensure_tiny_model

        print(json.dumps(profile_text_work(args.profile_text, ensure_tiny_model())))
        return 0
    args.rows = 2000 if args.quick else 20000
    repeats = 1 if args.quick else 3
    wanted = set(args.only or ("render", "data", "train", "memory"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="llamantino-bench-") as tmp:
        work = Path(tmp)
        files = generate(work, args.rows)
        if "render" in wanted:
            print("benchmark 1: render latency", flush=True)
            results["render"] = bench_render(work, 3 if args.quick else 5)
        if "data" in wanted:
            print("benchmark 2: data path", flush=True)
            results["data"] = bench_data(work, files, repeats)
            # In a child process: Linux carries a parent's peak RSS into the children it starts
            # (exec records the old memory map's high-water mark), so this process must stay small
            # for the memory benchmark's numbers to be the children's own.
            out = run([PY, str(Path(__file__).resolve()), "--profile-text", str(files["text"])], work)[2]
            results["text_profile"] = json.loads(out.strip().splitlines()[-1])
        if "train" in wanted:
            print("benchmark 3: training", flush=True)
            results["train"] = bench_train(work, files, repeats, 20 if args.quick else 200)
        if "memory" in wanted:
            print("benchmark 4: memory", flush=True)
            results["memory"] = bench_memory(work, 10 if args.quick else 100)
    write_report(args.out, results, args)
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    from llamantino.errors import entry

    sys.exit(entry(lambda argv: main()))
