"""Corpus preparation benchmarks; writes the "Corpus preparation" section of BENCHMARKS.md.

    .venv/bin/python benchmarks/corpus.py            # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/corpus.py --quick

Every number is a ratio against a baseline measured in the same run, on a generated hub mirror
(tests/hub_mirror.py: mC4-style json.gz shards of Italian text):

1. Throughput: tokens/s of one prepare task against `axolotl preprocess`'s own data path
   (benchmarks/data_worker.py, built-in `completion` type, 1 process) on the same documents.
2. Memory: peak RSS of one prepare task, in a fresh process, reading the whole corpus at 1x and 8x.
3. Sharing: an 8-point sweep's preparation (the sweep's own prepare_inputs call) against one.
4. Time to the first training step, warm cache against cold (launcher=local, tiny model, the 8x
   corpus prepared whole).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import ENV, PY, builtin_variant, data_measure, machine, render, run, set_dataset  # noqa: E402

from hub_mirror import grow_mc4  # noqa: E402

MARK_START, MARK_END = "<!-- corpus-benchmark:start -->", "<!-- corpus-benchmark:end -->"
SEQ = 512


def mirror(work: Path, name: str, files: int, docs: int) -> Path:
    root = work / name
    grow_mc4(root, files, docs, seed=1)
    return root


def corpus_args(root: Path, cache: Path, steps: str = "null", packing: bool = True) -> list[str]:
    return ["stage=adapt", "data=clean_mc4_it", f"hardware.storage.hub_mirror={root}", f"hardware.storage.cache={cache}",
            f"stage.max_steps={steps}", f"stage.sequence_len={SEQ}", "stage.micro_batch_size=2",
            "hardware.prepare.tasks=1", f"stage.sample_packing={str(packing).lower()}"]


def prepare_entry(work: Path, root: Path, cache: Path, packing: bool = True) -> Path:
    """Render a whole-corpus run (epochs: no budget cut) and write its request; returns the entry."""
    sys.path.insert(0, str(ROOT))
    from llamantino.config.compose import compose_config
    from llamantino.orchestrate.runs import build

    cfg = compose_config(corpus_args(root, cache, packing=packing) + ["launcher=dry", f"run.output_root={work}"])
    plan = build(cfg, work / f"plan-{time.time_ns()}", overrides=[]).inputs.corpus
    entry = plan.entry_dir()
    shutil.rmtree(entry.path, ignore_errors=True)
    entry.write(entry.REQUEST, plan.as_request())
    return entry.path


def task_measure(entry: Path) -> dict:
    """One prepare task in a fresh process: wall seconds, peak RSS, its tokens and its own seconds."""
    shutil.rmtree(entry / "slices", ignore_errors=True)
    seconds, rss, _ = run([PY, "-m", "llamantino.job.prepare", "task", str(entry), "--index", "0"], cwd=entry)
    report = json.loads((entry / "slices" / "000.json").read_text())
    counts = report["sources"]["clean_mc4_it"]
    return {"wall_s": seconds, "rss_mb": rss, "task_s": report["seconds"], "tokens": counts["tokens"],
            "docs": counts["kept"], "tokens_per_s": counts["tokens"] / report["seconds"]}


def bench_throughput(work: Path, root: Path, repeats: int) -> dict:
    entry = prepare_entry(work, root, work / "cache-throughput")
    # the baseline reads the same documents with Axolotl's built-in completion strategy
    plain = work / "same_docs.jsonl"
    with open(plain, "wb") as out:
        for shard in sorted((root / "datasets/gsarti/clean_mc4_it/clean").glob("c4-it.tfrecord-*.json.gz")):
            out.write(gzip.decompress(shard.read_bytes()))
    ours_dir = render(work, "throughput", ["stage=adapt", "data=it_text_sample", f"data.path={plain}",
                                           f"stage.sequence_len={SEQ}", "hardware.cpus_per_node=1"])
    base_dir = builtin_variant(ours_dir, "throughput-builtin", lambda r: (set_dataset(r, type="completion"),
                                                                          r.update(dataset_num_proc=1)))
    ours, base = [], []
    for _ in range(repeats):
        ours.append(task_measure(entry))
        base.append(data_measure(base_dir))
    ours_rate = sorted(m["tokens_per_s"] for m in ours)[len(ours) // 2]
    base_rate = sorted(m["tokens"] / m["seconds"] for m in base)[len(base) // 2]
    return {"ours_tokens_per_s": ours_rate, "axolotl_tokens_per_s": base_rate, "ratio": ours_rate / base_rate,
            "ours_tokens": ours[0]["tokens"], "axolotl_tokens": base[0]["tokens"], "docs": ours[0]["docs"]}


def bench_memory(work: Path, files: int, docs: int, packing: bool = True) -> dict:
    """Peak RSS of one prepare task over the whole corpus at 1x and 8x; ``packing=False`` is the
    one-document-per-row layout (stage.sample_packing=false)."""
    small = work / "mirror-1x" if (work / "mirror-1x").exists() else mirror(work, "mirror-1x", files, docs)
    large = work / "mirror-8x" if (work / "mirror-8x").exists() else mirror(work, "mirror-8x", files * 8, docs)
    layout = "packed" if packing else "unpacked"
    one = task_measure(prepare_entry(work, small, work / f"cache-mem-1x-{layout}", packing))
    eight = task_measure(prepare_entry(work, large, work / f"cache-mem-8x-{layout}", packing))
    return {"rss_1x_mb": one["rss_mb"], "rss_8x_mb": eight["rss_mb"], "ratio": eight["rss_mb"] / one["rss_mb"],
            "tokens_1x": one["tokens"], "tokens_8x": eight["tokens"]}


def bench_sweep(work: Path, root: Path) -> dict:
    """The sweep's own path (build every point, then one prepare_inputs call) against one point."""
    from llamantino.config.compose import compose_config
    from llamantino.launchers.local import LocalLauncher
    from llamantino.orchestrate.runs import build

    def points(count: int, cache: Path):
        return [build(compose_config(corpus_args(root, cache) +
                                     ["launcher=local", f"stage.learning_rate={1e-4 * (i + 1)}"]),
                      work / f"point-{cache.name}-{i}", overrides=[]) for i in range(count)]

    def timed(count: int, cache: Path) -> float:
        runs = points(count, cache)
        started = time.perf_counter()
        LocalLauncher(echo=lambda *_: None).prepare_inputs(runs)
        return time.perf_counter() - started

    one = timed(1, work / "cache-one")
    eight = timed(8, work / "cache-eight")
    return {"one_s": one, "eight_s": eight, "ratio": eight / one,
            "entries": len(list((work / "cache-eight" / "prepared").iterdir()))}


def first_step_s(work: Path, root: Path, cache: Path, name: str) -> float:
    argv = [PY, "-m", "llamantino", *corpus_args(root, cache), "launcher=local", f"run.output_root={work}",
            f"run.name={name}"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    for line in proc.stdout:
        if re.search(r"step 1: loss", line):
            seen = time.perf_counter() - started
            proc.kill()  # the first step is what is measured; the rest of the epoch is not
            break
    proc.wait()
    if seen is None:
        raise RuntimeError(f"{' '.join(argv)} failed")
    return seen


def bench_first_step(work: Path, root: Path) -> dict:
    """The whole corpus (epochs): cold, the first step waits for its preparation; warm, it does not."""
    cache = work / "cache-first-step"
    cold = first_step_s(work, root, cache, "cold")
    warm = first_step_s(work, root, cache, "warm")
    return {"cold_s": cold, "warm_s": warm, "ratio": warm / cold}


def write_section(path: Path, results: dict, args) -> None:
    t, m, s, f = results["throughput"], results["memory"], results["sweep"], results["first_step"]
    u = results["memory_unpacked"]
    ok = lambda good: "met" if good else "**missed**"  # noqa: E731
    lines = [MARK_START, "## Corpus preparation (`benchmarks/corpus.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; command: "
             f"`.venv/bin/python benchmarks/corpus.py{' --quick' if args.quick else ''}`. Generated hub mirror of "
             f"mC4-style json.gz shards ({args.files} files x {args.docs} documents), sequence length {SEQ}.", "",
             "| benchmark | ours | baseline (same run) | ratio | goal |", "|---|---|---|---|---|",
             f"| prepare throughput, tokens/s of one worker | {t['ours_tokens_per_s']:,.0f} | "
             f"{t['axolotl_tokens_per_s']:,.0f} (`axolotl preprocess` data path, `completion`, 1 process) | "
             f"{t['ratio']:.2f} | >= 1.0: {ok(t['ratio'] >= 1.0)} |",
             f"| peak RSS of one prepare task, whole corpus 8x vs 1x | {m['rss_8x_mb']:.0f} MB "
             f"({m['tokens_8x']:,} tokens) | {m['rss_1x_mb']:.0f} MB ({m['tokens_1x']:,} tokens) | {m['ratio']:.2f} | "
             f"<= 1.1: {ok(m['ratio'] <= 1.1)} |",
             f"| the same, one document per row (`stage.sample_packing=false`) | {u['rss_8x_mb']:.0f} MB | "
             f"{u['rss_1x_mb']:.0f} MB | {u['ratio']:.2f} | <= 1.1: {ok(u['ratio'] <= 1.1)} |",
             f"| 8-point sweep: preparation time / one preparation | {s['eight_s']:.1f} s ({s['entries']} cache entry) | "
             f"{s['one_s']:.1f} s | {s['ratio']:.2f} | <= 1.1: {ok(s['ratio'] <= 1.1)} |",
             f"| time to the first training step, warm cache / cold | {f['warm_s']:.1f} s | {f['cold_s']:.1f} s | "
             f"{f['ratio']:.2f} | < 1 |", "",
             f"The sweep and first-step rows prepare the whole corpus ({results['memory']['tokens_1x']:,} and "
             f"{results['memory']['tokens_8x']:,} tokens): cold, the first step waits for the preparation; warm, "
             "the cache is found complete and nothing is read but the manifest.",
             "Throughput counts the tokens each side produced from the same documents (ours also normalises, "
             "deduplicates and packs into blocks). The memory row reads every document of the corpus (no budget "
             "cut), the harder case; with a budget the documents read do not grow with the corpus at all.",
             MARK_END]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_START in text:
        text = text[: text.index(MARK_START)] + "\n".join(lines) + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    path.write_text(text)


def main() -> int:
    from llamantino.argparsing import ArgumentParser  # a usage error is one line, as in every command

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    args.files, args.docs = (4, 200) if args.quick else (8, 1000)
    repeats = 1 if args.quick else 3
    results = {}
    with tempfile.TemporaryDirectory(prefix="llamantino-corpus-bench-") as tmp:
        work = Path(tmp)
        root = mirror(work, "mirror", args.files, args.docs)
        print("corpus benchmark 1: throughput", flush=True)
        results["throughput"] = bench_throughput(work, root, repeats)
        print("corpus benchmark 2: memory", flush=True)
        results["memory"] = bench_memory(work, args.files, args.docs)
        results["memory_unpacked"] = bench_memory(work, args.files, args.docs, packing=False)
        print("corpus benchmark 3: sweep sharing", flush=True)
        results["sweep"] = bench_sweep(work, root)
        print("corpus benchmark 4: time to first step", flush=True)
        results["first_step"] = bench_first_step(work, work / "mirror-8x")
    write_section(args.out, results, args)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    from llamantino.errors import entry

    sys.exit(entry(lambda argv: main()))
