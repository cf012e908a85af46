"""What the prepare jobs run: download the sampled files, deduplicate, tokenise units, finish the entry.

    python -m llamantino.job.prepare fetch  <entry>             hub files of the sample (needs network)
    python -m llamantino.job.prepare scan   <entry> --index i   document keys of task i's units, by shard
    python -m llamantino.job.prepare dedup  <entry> --index s   shard s of every key: the documents to drop
    python -m llamantino.job.prepare task   <entry> --index i   tokenise task i's units -> units/<unit>.arrow
    python -m llamantino.job.prepare finish <entry>             check the units, write manifest.json
    python -m llamantino.job.prepare all    <entry>             every step here, in order
    python -m llamantino.job.prepare rows   <entry>             SFT/DPO rows: llamantino/job/prepare_rows.py

The sample is deterministic and does not depend on the task count: each source's files are listed,
sorted and shuffled with ``data.sample_seed`` (a sliced split, ``train[:N]``, keeps file order), and
the first ``read_files`` of that order are read (all when the source has no size estimate). Each file
is a **unit** (a sliced split is one unit, read up to its last row); task ``i`` of ``n`` makes units
``i, i+n, ...``, in ``hardware.prepare.cpus`` processes. Every unit is read whole, so whatever the files
hold reaches the finish, whichever task read them. Documents are checked and normalised by the plugin
(the corpus format's reader, ``normalise_text``; a source with ``normalize: false`` is taken as read);
those under ``min_chars`` are dropped, and so are
duplicates of an earlier document of the sample (exact: a digest of the text; near: MinHash bands),
found by the scan and dedup steps with every key sharded across tasks, so no process holds all of
them. BOS + text + EOS is appended to the unit's buffer and cut into ``sequence_len`` blocks (the
last partial block of a unit is dropped and counted). The finish takes each source's blocks unit by
unit, in sampled order, up to its share of the budget: a smaller budget reads a prefix of the same
entry. Token ids are stored in the smallest unsigned type that holds the vocabulary; labels and the
attention mask are derived when the plugin reads them. The units and their reading are in
``llamantino/job/units.py``, deduplication in ``llamantino/job/dedup.py``.
"""

from __future__ import annotations

import fnmatch
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from llamantino.argparsing import ArgumentParser
from llamantino.errors import DataError, entry
from llamantino.job.dedup import dedup_shard, scan_unit, unit_drops
from llamantino.job.units import (
    BATCH_DOCS,
    Unit,
    UnitReader,
    read_request,
    sample_units,
    source_order,
    task_units,
)
from llamantino.records.files import leftover_suffix, load_object, remove_leftovers, removed_unless_finished
from llamantino.records.rundir import PreparedDir, write_json
from llamantino_plugin.prepared import select_units

# A change here that alters the blocks a sample turns into raises PreparedDir.LAYOUT (part of every key).
WRITE_BLOCKS = 1024  # blocks per Arrow record batch
PROGRESS_SECONDS = 30  # a unit being tokenised says how far it is at least this often


def amount(count: int) -> str:
    """``950``, ``120,000``, ``40.1M``, ``2.3B``."""
    for limit, suffix in ((10**9, "B"), (10**6, "M")):
        if count >= limit:
            return f"{count / limit:.1f}{suffix}"
    return f"{count:,}"


# --- tokenising a unit ------------------------------------------------------------------------------


def token_type(tokenizer):
    """The smallest unsigned Arrow type that holds every token id of the tokenizer."""
    import pyarrow as pa

    return pa.uint16() if len(tokenizer) <= 2**16 else pa.uint32()


def _batch(blocks: list[list[int]], id_type):
    import numpy as np
    import pyarrow as pa

    flat = np.fromiter((token for block in blocks for token in block), dtype=id_type.to_pandas_dtype())
    offsets = np.concatenate([[0], np.cumsum([len(block) for block in blocks])]).astype(np.int32)
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=id_type))
    return pa.record_batch([ids], names=["input_ids"])


def tokenise_unit(entry_dir: PreparedDir, request: dict, unit: Unit, tokenizer, progress=None) -> dict:
    """The unit's blocks into ``units/<unit>.arrow`` (renamed into place after its report);
    ``progress`` (a callable taking a line) hears how far it is every PROGRESS_SECONDS."""
    import pyarrow as pa

    target = entry_dir.unit(unit.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(3)}{leftover_suffix('partial')}")
    started = time.time()
    length, pack = request["sequence_len"], request.get("pack", True)
    id_type = token_type(tokenizer)
    reader = UnitReader(unit, request)
    counts = {"tokens": 0, "blocks": 0, "block_tokens": 0, "cut_tokens": 0, "leftover_tokens": 0}
    buffer: list[int] = []
    said = time.monotonic()
    with removed_unless_finished(partial):  # refused data, a bug, an interrupt, SIGTERM: no partial unit stays
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("input_ids", pa.list_(id_type))])) as writer:
            pending: list[list[int]] = []
            texts: list[str] = []

            def flush_texts():
                nonlocal buffer, said
                for ids in tokenizer(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]:
                    ids.append(tokenizer.eos_token_id)
                    counts["tokens"] += len(ids)
                    if not pack:  # one document per row, cut at the sequence length
                        counts["cut_tokens"] += max(0, len(ids) - length)
                        pending.append(ids[:length])
                        continue
                    buffer.extend(ids)
                    full = len(buffer) // length
                    pending.extend(buffer[i * length:(i + 1) * length] for i in range(full))
                    buffer = buffer[full * length:]
                texts.clear()
                if progress is not None and time.monotonic() - said >= PROGRESS_SECONDS:
                    said = time.monotonic()
                    progress(f"{reader.counts['kept']:,} documents, {amount(counts['tokens'])} tokens so far")

            for _, text in reader.documents(unit_drops(entry_dir, request, unit)):
                texts.append(text)
                if len(texts) >= BATCH_DOCS:
                    flush_texts()
                if len(pending) >= WRITE_BLOCKS:
                    _write(writer, pending, counts, id_type)
            if texts:
                flush_texts()
            if pending:
                _write(writer, pending, counts, id_type)
        counts["leftover_tokens"] = len(buffer)
        report = {"unit": unit.name, "source": unit.source["name"], **reader.counts, **counts,
                  "read_files": reader.files, "token_type": str(id_type), "seconds": round(time.time() - started, 3)}
        write_json(entry_dir.unit_report(unit.name), report)  # the report first: a unit in place is a finished one
        os.replace(partial, target)
    return report


def _write(writer, pending: list[list[int]], counts: dict, id_type) -> None:
    writer.write_batch(_batch(pending, id_type))
    counts["blocks"] += len(pending)
    counts["block_tokens"] += sum(map(len, pending))
    pending.clear()


def load_tokenizer(request: dict):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(request["tokenizer"], revision=request.get("tokenizer_revision"))


# --- the array steps: task i's units, in hardware.prepare.cpus processes ---------------------------

_WORKER: dict = {}


def _work(job: tuple[str, str, str, str]) -> dict:
    """One unit of one step, in a worker process (the request and tokenizer loaded once per process);
    ``label`` starts the lines it prints while it works."""
    step, path, name, label = job
    if _WORKER.get("path") != path:
        entry_dir = PreparedDir(Path(path))
        request = read_request(entry_dir)
        units = {unit.name: unit for unit in sample_units(entry_dir, request)}
        _WORKER.clear()
        _WORKER.update(path=path, entry=entry_dir, request=request, units=units, tokenizer=None)
    entry_dir, request, unit = _WORKER["entry"], _WORKER["request"], _WORKER["units"][name]
    if step == "scan":
        return scan_unit(entry_dir, request, unit)
    if _WORKER["tokenizer"] is None:
        _WORKER["tokenizer"] = load_tokenizer(request)
    return tokenise_unit(entry_dir, request, unit, _WORKER["tokenizer"],
                         progress=lambda line: print(f"{label}: {line}", flush=True))


def run_units(entry_dir: PreparedDir, step: str, index: int, echo=print) -> list[dict]:
    """Step ``scan`` or ``task`` for task ``index``'s units not yet made (a requeued task resumes)."""
    request = read_request(entry_dir)
    tasks = request["tasks"]
    if not 0 <= index < tasks:
        raise DataError(f"task index {index} is outside 0-{tasks - 1}")
    mine = task_units(sample_units(entry_dir, request), index, tasks)
    done = entry_dir.scan if step == "scan" else entry_dir.unit
    folder = entry_dir.path / (PreparedDir.SCAN if step == "scan" else PreparedDir.UNITS)
    folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)  # the partial files of tasks killed outright
    todo = [unit for unit in mine if not done(unit.name).is_file()]
    task = f"llamantino prepare: {'scan' if step == 'scan' else 'task'} {index + 1}/{tasks}"
    before = len(mine) - len(todo)  # a requeued task's units made before
    jobs = [(step, str(entry_dir.path), unit.name, f"{task}: unit {unit.name}") for unit in todo]
    workers = max(1, min(int(request.get("workers", 1)), len(jobs)))
    results: list[dict] = []
    if workers == 1:
        for job in jobs:
            _said_done(task, _work(job), results, before, len(mine), echo)
    else:
        import multiprocessing

        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core, not threads on top
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for result in pool.imap_unordered(_work, jobs):  # each unit said as it finishes
                _said_done(task, result, results, before, len(mine), echo)
    return results


def _said_done(task: str, result: dict, results: list[dict], before: int, units: int, echo) -> None:
    """Add a finished unit to ``results`` and say it, with the task's documents and tokens so far."""
    results.append(result)
    documents = sum(done["kept"] for done in results)
    tokens = sum(done.get("tokens", 0) for done in results)
    made = (f"{result['keys']:,} keys of {result['kept']:,} documents" if "keys" in result else
            f"{result['blocks']:,} blocks from {result['kept']:,} documents ({result['duplicates']:,} duplicates)")
    echo(f"{task}: unit {before + len(results)}/{units} {result['unit']} done: {made}; "
         f"{documents:,} documents" + (f", {amount(tokens)} tokens" if tokens else "") + " so far")


def run_dedup(entry_dir: PreparedDir, shard: int) -> dict:
    request = read_request(entry_dir)
    if not 0 <= shard < request["tasks"]:
        raise DataError(f"shard {shard} is outside 0-{request['tasks'] - 1}")
    return dedup_shard(entry_dir, request, shard, sample_units(entry_dir, request))


# --- finish ---------------------------------------------------------------------------------------


def finish(entry_dir: PreparedDir) -> dict:
    """Check every unit is there, take each source's share in sample order, write manifest.json."""
    request = read_request(entry_dir)
    units = sample_units(entry_dir, request)
    missing = [unit.name for unit in units if not entry_dir.unit(unit.name).is_file()]
    if missing:
        raise DataError(f"{entry_dir.path}: units {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} are "
                        "missing; their prepare tasks did not finish")
    reports = [load_object(entry_dir.unit_report(unit.name)) for unit in units]
    listed = [{"name": unit.name, "source": unit.source["name"], "blocks": int(report["blocks"]),
               "tokens": int(report["block_tokens"])} for unit, report in zip(units, reports)]
    wanted = {source["name"]: source["blocks"] for source in request["sources"]}
    taken = select_units(listed, wanted)
    source_of = {unit["name"]: unit["source"] for unit in listed}
    sources = {}
    for source in request["sources"]:
        mine = [report for unit, report in zip(units, reports) if unit.source["name"] == source["name"]]
        total: dict = {"read_files": sorted(name for report in mine for name in report["read_files"])}
        for report in mine:
            for key, value in report.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        total.update(origin=source["origin"], hub_id=source["hub_id"], subset=source["subset"],
                     revision=source["revision"], weight=source["weight"], wanted_blocks=source["blocks"],
                     available_blocks=total.get("blocks", 0),
                     blocks=sum(rows for name, rows in taken if source_of[name] == source["name"]),
                     available_files=len(source["files"]) if source["origin"] != "hub" else None)
        sources[source["name"]] = total
    blocks = sum(rows for _, rows in taken)
    needed = request["blocks"]
    if blocks == 0:  # epochs over the whole corpus (no budget) and nothing in it, e.g. every row bad
        counts = ", ".join(f"{name}: {s['rows']} rows, {s['invalid']} bad, {s['too_short']} too short, "
                           f"{s['duplicates']} duplicates" for name, s in sources.items())
        raise DataError(f"the sample has no block of text ({counts}); the sources hold no usable document")
    if needed is not None and blocks < needed:
        raise DataError(shortfall(request, sources, blocks, needed))
    for source in request["sources"]:
        rows = source.get("rows")
        got = sources[source["name"]]["rows"]
        if rows and rows[1] is not None and got < rows[1] - rows[0]:
            raise DataError(f"data {source['name']}: the split asks for rows {rows[0]}-{rows[1]} but the "
                            f"{sources[source['name']]['files']} files read hold {got:,} of them; raise "
                            "data.num_rows' accuracy (it sizes how many files are fetched) or slice fewer rows")
    manifest = {"key": request["key"], "base": request.get("base"), "blocks": blocks,
                "tokens": _taken_tokens(entry_dir, taken, request),
                "budget_tokens": request["budget_tokens"], "needed_blocks": needed,
                "sequence_len": request["sequence_len"], "seed": request["seed"], "tokenizer": request["tokenizer"],
                "token_type": reports[0]["token_type"] if reports else None,
                "units": listed, "sources": sources, "unit_seconds": round(sum(r["seconds"] for r in reports), 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entry_dir.write(PreparedDir.MANIFEST, manifest)
    for folder in (PreparedDir.SCAN, PreparedDir.DEDUP):  # intermediate: the units hold what they decided
        shutil.rmtree(entry_dir.path / folder, ignore_errors=True)
    return manifest


def shortfall(request: dict, sources: dict, blocks: int, needed: int) -> str:
    """Why the files read cannot hold the budget, with the numbers and what to change."""
    length = request["sequence_len"]
    parts = []
    for source in request["sources"]:
        got = sources[source["name"]]
        line = (f"{source['name']}: {got['available_blocks']:,} blocks of {source['blocks'] or 0:,} wanted from "
                f"{got['files']} files ({got['tokens']:,} tokens; dropped {got['duplicates']:,} duplicates, "
                f"{got['too_short']:,} too short, {got['invalid']:,} bad)")
        per_file = source.get("approx_tokens_per_file")
        if per_file and got["files"]:
            line += (f"; data.approx_tokens puts {per_file:,.0f} tokens in a file, these hold "
                     f"{got['tokens'] / got['files']:,.0f}")
        parts.append(line)
    return (f"the sample has {blocks:,} blocks of {length} but the budget needs {needed:,} "
            f"({needed * length:,} tokens): {'; '.join(parts)}. The files read hold too little text: correct "
            "data.approx_tokens (it sizes how many files are read), raise data.budget_margin, add sources, or lower "
            "stage.max_steps")


def _taken_tokens(entry_dir: PreparedDir, taken: list[tuple[str, int]], request: dict) -> int:
    """Tokens of the blocks taken (packed blocks are full; unpacked rows are read for their lengths)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if request.get("pack", True):
        return sum(rows for _, rows in taken) * request["sequence_len"]
    total = 0
    for name, rows in taken:
        with pa.memory_map(str(entry_dir.unit(name))) as source:
            table = pa.ipc.open_stream(source).read_all()
            total += int(pc.sum(pc.list_value_length(table.column("input_ids").slice(0, rows))).as_py() or 0)
    return total


def fetch(entry_dir: PreparedDir) -> dict:
    """Download the sampled files of the hub sources (and nothing else) into HF_HOME."""
    from huggingface_hub import HfApi, snapshot_download

    request = read_request(entry_dir)
    fetched = {}
    for source in request["sources"]:
        if source["origin"] != "hub":
            continue
        names = [name for name in HfApi().list_repo_files(source["hub_id"], repo_type="dataset",
                                                           revision=source["revision"])
                 if any(fnmatch.fnmatch(name, pattern) for pattern in source["patterns"])]
        if not names:
            raise DataError(f"{source['hub_id']} has no file matching {', '.join(source['patterns'])}")
        order = source_order(names, request, source)
        chosen = order[: source["read_files"] or len(order)]
        folder = snapshot_download(source["hub_id"], repo_type="dataset", revision=source["revision"],
                                   allow_patterns=chosen)
        fetched[source["name"]] = [[name, str(Path(folder) / name)] for name in chosen]
        print(f"llamantino: fetched {len(chosen)} of {len(order)} files of {source['hub_id']}", flush=True)
    if request["tokenizer"] and not Path(request["tokenizer"]).exists():  # a hub model: its tokenizer files only
        snapshot_download(request["tokenizer"], revision=request.get("tokenizer_revision"),
                          allow_patterns=["tokenizer*", "special_tokens_map.json", "*.model", "config.json"])
    entry_dir.write(PreparedDir.FETCHED, fetched)
    return fetched


def run_all(entry_dir: PreparedDir, echo=print) -> dict:
    """Every step in this process, in order (the local launcher and ``data prepare``)."""
    request = read_request(entry_dir)
    steps = request["steps"]
    made = {folder: not (entry_dir.path / folder).is_dir() for folder in (PreparedDir.UNITS, PreparedDir.SCAN,
                                                                          PreparedDir.DEDUP)}
    try:
        for step in steps:
            if step == "fetch":
                fetch(entry_dir)
            elif step == "scan" or step == "task":
                for index in range(request["tasks"]):
                    run_units(entry_dir, step, index, echo)
            elif step == "dedup":
                for shard in range(request["tasks"]):
                    run_dedup(entry_dir, shard)
        return finish(entry_dir)
    except BaseException:  # one failed step fails the entry: nothing of it stays behind
        for folder, new in made.items():
            if new:
                shutil.rmtree(entry_dir.path / folder, ignore_errors=True)
        raise


def rows_in_child(entry_dir: PreparedDir, echo=print) -> dict:
    """The rows step in a child process (Axolotl's data code sets process-wide state), its output
    logged to ``logs/rows-<time>.log`` and said as it comes; DataError naming the log when it fails."""
    import subprocess

    logs = entry_dir.path / PreparedDir.LOGS
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"rows-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}.log"
    last = ""
    with open(log, "w", encoding="utf-8") as sink:
        child = subprocess.Popen([sys.executable, "-m", "llamantino.job.prepare", PreparedDir.ROWS_STEP,
                                  str(entry_dir.path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, errors="replace", env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in child.stdout:
            sink.write(line)
            if line.startswith("llamantino"):
                echo(line.rstrip())
            if line.strip():
                last = line.strip()
        code = child.wait()
    if code != 0:
        said = last[len("error: "):] if last.startswith("error: ") else f"it failed (exit {code}): {last[-300:]}"
        raise DataError(f"preparing rows {entry_dir.path.name[:12]}: {said} (log: {log})")
    return entry_dir.manifest()


def prepare_here(entry_dir: PreparedDir, what: str, request: dict | None = None, echo=print) -> dict:
    """Make an entry here (the local launcher, ``data prepare``): its request written when given,
    every step, then the line that says what it holds. The caller holds the entry's lock."""
    echo(f"{what}: preparing in {entry_dir.path}")
    if request is not None:
        entry_dir.write(PreparedDir.REQUEST, request)
    if entry_dir.request().get("kind") == "rows":
        return rows_in_child(entry_dir, echo=echo)
    manifest = run_all(entry_dir, echo=echo)
    echo(f"llamantino: prepared {manifest['blocks']} blocks ({manifest['tokens']:,} tokens) in {entry_dir.path}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=[*PreparedDir.STEPS, "all"])
    parser.add_argument("entry", type=Path, help="the prepared corpus entry (<cache>/prepared/<key>)")
    parser.add_argument("--index", type=int, default=None, help="task index (default: $SLURM_ARRAY_TASK_ID)")
    args = parser.parse_args(argv)
    entry_dir = PreparedDir(args.entry)
    index = args.index if args.index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "-1"))
    if args.step == "fetch":
        fetch(entry_dir)
    elif args.step in ("scan", "task"):
        run_units(entry_dir, args.step, index)
    elif args.step == "dedup":
        result = run_dedup(entry_dir, index)
        print(f"llamantino: dedup shard {index}: {result['drops']} duplicates among {result['keys']} keys", flush=True)
    elif args.step == PreparedDir.ROWS_STEP:
        from llamantino.job.prepare_rows import prepare_rows

        prepare_rows(entry_dir)
    elif args.step == "finish":
        manifest = finish(entry_dir)
        print(f"llamantino: prepared {manifest['blocks']} blocks ({manifest['tokens']:,} tokens) in {entry_dir.path}",
              flush=True)
    else:
        run_all(entry_dir)
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
