"""Data as an attack (issue 20, part 4): over-long records, decompression bombs, broken gzip and
Parquet files, file names that are not UTF-8. Each row is one command that must end in exactly one
``error:`` line and exit 2, write nothing and submit nothing (tests/hostile.py); the limits are
``MAX_LINE_BYTES`` and ``max_file_bytes()`` in llamantino_plugin/formats.py.

The corpus rows run the prepare job itself (``python -m llamantino.job.prepare all <entry>``) on an
entry planned from a hub mirror folder holding one hostile shard; the gzip bomb (1 MB of gzip, one
1 GiB line) runs in a subprocess under an address-space cap.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess

import pytest

from conftest import PYTHON, cli, ok, read_json, run_dir_of
from hostile import assert_refused, hostile_env, hostile_folder, snapshot

DRY = ["launcher=dry"]
TINY_ADAPT = ["stage=adapt", "stage.max_steps=3", "stage.sequence_len=64", "stage.micro_batch_size=2",
              "hardware.prepare.tasks=1"]
COLUMNS = ["--format", "instructions", "--column", "instruction=istruzione", "--column", "output=risposta"]
SHARD = "c4-it.tfrecord-00000-of-01024.json.gz"
MC4 = ("datasets", "gsarti", "clean_mc4_it", "clean")
OVER = (16 << 20) + 10  # just over MAX_LINE_BYTES
BOMB_CAP = 3 << 30  # a prepare task needs about 2 GiB of address space (torch, tokenizers); the bomb line is 1 GiB


def prepare(case: str) -> list[str]:
    return ["all", f"{{w}}/entries/{case}"]


# (id, module or verb, arguments, text the error line must contain[, environment])
ROWS = [
    ("main over-long line", "llamantino", ["data.path={w}/long.jsonl", *DRY],
     "long.jsonl:2: the line is longer than 16,777,216 bytes"),
    ("main non-utf8 data path", "llamantino", ["data.path='{w}/badname\udcff.jsonl'", *DRY],
     "badname\\xff.jsonl' is not a printable UTF-8 name"),
    ("corpus non-utf8 shard name", "llamantino",
     ["data=clean_mc4_it", *TINY_ADAPT, "hardware.storage.hub_mirror={w}/mirrors/badname",
      "hardware.storage.cache={w}/cache", *DRY], "c4-it.tfrecord-000\\xff1-of-01024.json.gz"),
    ("check over-long strict", "data", ["check", "{w}/long.jsonl", *COLUMNS, "--policy", "strict"],
     "long.jsonl:2: the line is longer than"),
    ("check over-long skip", "data", ["check", "{w}/long.jsonl", *COLUMNS, "--policy", "skip"],
     "long.jsonl: 1 bad row(s) of 3"),
    ("preview over-long", "data", ["preview", "{w}/long_first.jsonl", *COLUMNS, "-n", "1"],
     "long_first.jsonl:1: the line is longer than"),
    ("check non-utf8 name", "data", ["check", "{w}/shard\udcff.jsonl", *COLUMNS],
     "shard\\xff.jsonl': 1 bad row(s) of 2"),
    ("prepare over-long strict", "llamantino.job.prepare", prepare("long"),
     f"{SHARD}:2: the line is longer than 16,777,216 bytes"),
    ("prepare malformed line strict", "llamantino.job.prepare", prepare("malformed"), f"{SHARD}:2: malformed JSON"),
    ("prepare truncated gzip", "llamantino.job.prepare", prepare("truncated"),
     "not a readable gzip file (Compressed file ended before the end-of-stream marker"),
    ("prepare bad gzip crc", "llamantino.job.prepare", prepare("crc"), "not a readable gzip file (CRC check failed"),
    ("prepare not gzip", "llamantino.job.prepare", prepare("notgzip"), "not a readable gzip file (Not a gzipped file"),
    ("prepare empty gzip member", "llamantino.job.prepare", prepare("empty"),
     "no rows (an empty file or an empty gzip member)"),
    ("prepare file over the size cap", "llamantino.job.prepare", prepare("large"),
     "more than 500 bytes after decompression", {"LLAMANTINO_MAX_FILE_BYTES": "500"}),
    ("prepare size cap not a number", "llamantino.job.prepare", prepare("large"),
     "LLAMANTINO_MAX_FILE_BYTES='lots' must be a positive number of bytes", {"LLAMANTINO_MAX_FILE_BYTES": "lots"}),
    ("prepare broken parquet", "llamantino.job.prepare", prepare("parquet"), "not a readable Parquet file"),
]


def _docs(count: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"text": f"Documento {i}. Il gatto dorme sul divano mentre fuori piove sulla citta "
                                f"e i bambini giocano in cortile numero {i}.", "url": "https://example.it/"}).encode()
            + b"\n" for i in range(start, start + count)]


def _gzip(lines: list[bytes]) -> bytes:
    return gzip.compress(b"".join(lines), mtime=0)


def _instruction(text: str) -> bytes:
    return json.dumps({"istruzione": text, "risposta": "Va bene."}).encode() + b"\n"


def _over_long_doc() -> bytes:
    return b'{"text": "' + b"a" * OVER + b'"}\n'


def _entry(w, case: str, files: dict[str, bytes], data: str = "clean_mc4_it", folder=MC4) -> None:
    """A prepared-corpus entry at w/entries/<case>, planned from a mirror holding ``files``."""
    from llamantino.config.compose import compose_config
    from llamantino.inputs.corpus import plan_corpus
    from llamantino.inputs.tiny import ensure_tiny_model
    from llamantino.records.provenance import ModelSource, SourceKind
    from llamantino.records.rundir import PreparedDir

    mirror = w / "mirrors" / case
    (mirror.joinpath(*folder)).mkdir(parents=True)
    for name, content in files.items():
        mirror.joinpath(*folder, name).write_bytes(content)
    cfg = compose_config([f"data={data}", *TINY_ADAPT, f"hardware.storage.hub_mirror={mirror}",
                          f"hardware.storage.cache={w / 'cache'}"])
    plan = plan_corpus(cfg, ModelSource(kind=SourceKind.built, builder="tiny_llama", path=str(ensure_tiny_model())), 1)
    entry = PreparedDir(w / "entries" / case)
    entry.write(entry.REQUEST, plan.as_request())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("hostile_data")
    long_line = _instruction("a" * OVER)
    (w / "long.jsonl").write_bytes(_instruction("Ciao.") + long_line + _instruction("Grazie."))
    (w / "long_first.jsonl").write_bytes(long_line + _instruction("Ciao."))
    bad_row = json.dumps({"istruzione": "", "risposta": "x"}).encode() + b"\n"
    with open(os.fsencode(w) + b"/shard\xff.jsonl", "wb") as handle:
        handle.write(_instruction("Ciao.") + bad_row)
    with open(os.fsencode(w) + b"/badname\xff.jsonl", "wb") as handle:
        handle.write(_instruction("Ciao.") + _instruction("Grazie."))
    badname = os.fsencode(w / "mirrors" / "badname" / os.path.join(*MC4))
    os.makedirs(badname)
    with open(badname + b"/c4-it.tfrecord-000\xff1-of-01024.json.gz", "wb") as handle:
        handle.write(_gzip(_docs(40)))

    docs = _docs(40)
    good = _gzip(docs)
    crc = bytearray(good)
    crc[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    _entry(w, "long", {SHARD: _gzip([docs[0], _over_long_doc(), *docs[1:]])})
    _entry(w, "malformed", {SHARD: _gzip([docs[0], b'{"text": "a\n', *docs[1:]])})
    _entry(w, "truncated", {SHARD: good[: len(good) // 2]})
    _entry(w, "crc", {SHARD: bytes(crc)})
    _entry(w, "notgzip", {SHARD: b"".join(docs)})
    _entry(w, "empty", {SHARD: gzip.compress(b"", mtime=0)})
    _entry(w, "large", {SHARD: _gzip(_docs(40))})
    _entry(w, "parquet", {"train-00000-of-00001.parquet": b"PAR1 this is not parquet PAR1"},
           data="wikipedia_it", folder=("datasets", "wikimedia", "wikipedia", "20231101.it"))
    return hostile_folder(w)


def test_the_table_has_its_rows():
    assert len(ROWS) >= 10 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_data_is_one_error_line_and_leaves_nothing(work, row):
    name, module, args, needle, *env = row
    # a name that is not UTF-8 runs as a real process: its bytes pass through argv and stdout
    assert_refused(work, module, args, needle, env=env[0] if env else None,
                   subprocess=any("\udcff" in arg for arg in args))


def test_a_gzip_bomb_stops_in_bounded_memory_and_leaves_no_slice(work, tmp_path):
    """1 MB of gzip holding one 1 GiB line: before, preparation read the line whole (9.2 GB, then an
    abort); now it is skipped in MAX_LINE_BYTES pieces and refused as one over-long record."""
    shard = tmp_path / SHARD
    with open(shard, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as out:
        out.write(b'{"text": "')
        block = b"a" * (1 << 20)
        for _ in range(1024):
            out.write(block)
        out.write(b'"}\n')
    assert shard.stat().st_size < 2 << 20
    _entry(tmp_path, "bomb", {SHARD: shard.read_bytes()})
    entry = tmp_path / "entries" / "bomb"
    before = snapshot(tmp_path)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (BOMB_CAP, BOMB_CAP))

    proc = subprocess.run([PYTHON, "-m", "llamantino.job.prepare", "all", str(entry)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, preexec_fn=cap,
                          env={**os.environ, **hostile_env(work)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{SHARD}:1: the line is longer" in lines[0], lines
    assert snapshot(tmp_path) == before  # no slice, no partial slice, no report


def test_skip_counts_an_over_long_shard_line_as_a_bad_row(work, tmp_path):
    """stage.bad_rows=skip: the over-long line is counted (invalid) and the entry completes."""
    import shutil

    from llamantino.records.rundir import PreparedDir

    entry = tmp_path / "long"
    shutil.copytree(work / "entries" / "long", entry)
    request = read_json(entry / PreparedDir.REQUEST)
    (entry / PreparedDir.REQUEST).write_text(json.dumps({**request, "bad_rows": "skip"}))
    ok(cli("all", str(entry), module="llamantino.job.prepare", cwd=tmp_path))
    counts = read_json(entry / PreparedDir.MANIFEST)["sources"]["clean_mc4_it"]
    assert counts["invalid"] == 1 and counts["blocks"] >= request["blocks"]


def test_skip_counts_an_over_long_line_of_sft_data_as_a_bad_row(work, tmp_path):
    run = run_dir_of(ok(cli(f"data.path={work / 'long.jsonl'}", "stage.bad_rows=skip", *DRY, cwd=tmp_path)))
    report = read_json(run / "provenance.json")["data"]["report"]
    assert (report["rows"], report["kept"], report["skipped"]) == (3, 2, 1)
    assert "long.jsonl:2: the line is longer than" in report["errors"][0]


def test_a_refused_shard_in_the_main_command_leaves_no_slice(work, tmp_path):
    """launcher=local prepares after writing the run: the preparation fails in one line and its cache
    entry holds its request only (no slice, no partial slice)."""
    proc = cli("data=clean_mc4_it", *TINY_ADAPT, f"hardware.storage.hub_mirror={work / 'mirrors' / 'long'}",
               f"hardware.storage.cache={tmp_path / 'cache'}", "launcher=local", f"run.output_root={tmp_path / 'runs'}",
               cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and f"{SHARD}:2: the line is longer" in lines[0], proc.stderr
    (entry,) = (tmp_path / "cache" / "prepared").iterdir()
    assert sorted(p.name for p in entry.rglob("*")) == ["request.json"]


def test_read_lines_never_holds_more_than_one_line_limit(tmp_path, monkeypatch):
    from llamantino_plugin import formats

    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 8)
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(b"1234567\n" + b"x" * 50 + b"\n\n12345678\n" + b"y" * 9))
    assert list(formats.read_lines(path)) == [(1, b"1234567\n"), (2, None), (4, None), (5, None)]
    monkeypatch.setenv("LLAMANTINO_MAX_FILE_BYTES", "20")
    with pytest.raises(formats.DataFileError, match=r"x.jsonl.gz:2: more than 20 bytes after decompression"):
        list(formats.read_lines(path))


def test_names_that_are_not_utf8_are_shown_as_bytes():
    from llamantino_plugin.formats import is_text_name, shown_path

    assert shown_path("/d/shard\udcff.jsonl") == "b'/d/shard\\xff.jsonl'"
    assert shown_path("/d/a\nb.jsonl") == "b'/d/a\\nb.jsonl'" and not is_text_name("/d/a\nb.jsonl")
    assert shown_path("/d/perché.jsonl") == "/d/perché.jsonl" and is_text_name("/d/perché.jsonl")

