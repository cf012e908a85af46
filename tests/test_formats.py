"""Row formats and file checks: each bad input names file, line and column; skip counts."""

from __future__ import annotations

import ast
import importlib
import json

import pytest

from conftest import ROOT
from llamantino.paths import SAMPLES_DIR
from llamantino_plugin.formats import (
    CORPUS_FORMAT,
    FORMAT_SPECS,
    DataFileError,
    DataFormat,
    RowError,
    check_file,
    columns_for,
    loader_spec,
    normalise_text,
    read_conversation,
    read_preference,
)


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join(r if isinstance(r, bytes) else (json.dumps(r, ensure_ascii=False) + "\n").encode() for r in rows))
    return path


def test_normalisation_italian():
    assert normalise_text("Il caffe\u0300 e\u0300 buono") == "Il caffè è buono"
    assert normalise_text("l\u2019acqua e l'aria") == "l'acqua e l'aria"
    assert normalise_text("\u201cciao\u201d e \u00abciao\u00bb") == '"ciao" e «ciao»'
    assert normalise_text("  a \u00a0 b\t\tc \n\n\n\n d\u200b ") == "a b c\n\nd"


@pytest.mark.parametrize("turns", [
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
    ["a", "b"],
])
def test_three_conversation_shapes_read_the_same(turns):
    assert read_conversation({"messages": turns}, columns_for("conversations")) == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


@pytest.mark.parametrize("turns, message", [
    ([{"role": "robot", "content": "a"}], "unknown role 'robot'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
     "'assistant' but 'user' was expected"),
    ([{"role": "user", "content": "a"}], "last turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
     "system turn is only allowed first"),
    ([], "non-empty list"),
])
def test_bad_conversations(turns, message):
    with pytest.raises(RowError, match=message):
        read_conversation({"messages": turns}, columns_for("conversations"))


def test_preference_chosen_equal_to_rejected():
    with pytest.raises(RowError, match="'chosen' equals 'rejected'"):
        read_preference({"prompt": "p", "chosen": "x", "rejected": " x "}, columns_for("preferences"))


def test_orpo_mix_pairs_share_their_prompt():
    columns = columns_for("preferences")
    row = {"chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "a"}],
           "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}
    with pytest.raises(RowError, match="same prompt turns"):
        read_preference(row, columns)
    row["rejected"][0]["content"] = "p"
    assert read_preference(row, columns) == {"prompt": [{"role": "user", "content": "p"}], "chosen": "a", "rejected": "b"}


def test_missing_column_names_it_and_the_available_ones(tmp_path):
    path = write(tmp_path, [{"domanda": "a", "risposta": "b"}])
    with pytest.raises(DataFileError) as error:
        check_file(path, "instructions", columns_for("instructions"))
    assert f"{path}:1 [instruction]" in str(error.value)
    assert "the row has: domanda, risposta" in str(error.value)


def test_malformed_json_and_invalid_utf8_name_their_lines(tmp_path):
    good = {"text": "una frase abbastanza lunga"}
    path = write(tmp_path, [good, b'{"text": "rotto"\n', good, b'{"text": "\xff\xfe"}\n'])
    with pytest.raises(DataFileError, match=r":2: malformed JSON"):
        check_file(path, "text", columns_for("text"))
    kept = []
    report = check_file(path, "text", columns_for("text"), "skip", keep=kept)
    assert (report.rows, report.kept, report.skipped) == (4, 2, 2)
    assert any(":4: invalid UTF-8" in error for error in report.errors)
    assert len(kept) == 2


def test_empty_and_all_bad_files(tmp_path):
    empty = write(tmp_path, [], "empty.jsonl")
    with pytest.raises(DataFileError, match="file is empty"):
        check_file(empty, "text", columns_for("text"))
    bad = write(tmp_path, [{"x": 1}], "bad.jsonl")
    with pytest.raises(DataFileError, match="no valid row left"):
        check_file(bad, "text", columns_for("text"), "skip")


def test_unknown_logical_column_is_refused():
    with pytest.raises(ValueError, match="format 'text' has no column 'testo'; it reads: text"):
        columns_for("text", {"testo": "body"})


def test_every_sample_file_passes_its_registry_check():
    from llamantino.config.registry import registry

    checked = set()
    for name, entry in registry().items():
        if entry.path:
            report = check_file(SAMPLES_DIR.parent / entry.path, entry.format, columns_for(entry.format, entry.columns))
            assert report.kept == report.rows > 0, name
            checked.add(entry.path)
    # every training sample, the domain ones (samples/domain/) included; the eval items are a task's, not the registry's
    assert checked == {str(path.relative_to(SAMPLES_DIR.parent)) for path in SAMPLES_DIR.rglob("*.jsonl")} - {"samples/it_eval_mc.jsonl"}


# --- the format table: one spec per format, and the only place a format's name is branched on --------

#: One good row per format, in a shape where only its required columns are needed (preferences as
#: message lists: with plain strings the prompt is required too).
GOOD_ROWS = {
    DataFormat.text: {"text": "Nel mezzo del cammin di nostra vita."},
    DataFormat.instructions: {"instruction": "Traduci.", "input": "Ciao", "output": "Hello", "system": "Sii breve."},
    DataFormat.conversations: {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    DataFormat.preferences: {"chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "a"}],
                             "rejected": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "b"}]},
}


def test_every_format_has_one_spec():
    from llamantino_plugin.templates import template_info

    assert list(FORMAT_SPECS) == list(DataFormat)
    for fmt, spec in FORMAT_SPECS.items():
        assert spec.format is fmt
        assert set(spec.required) <= set(spec.columns), fmt
        assert spec.default_template is None or template_info(spec.default_template).name == spec.default_template
        assert loader_spec(spec.loader_type) is spec, "each format has its own loader"
        assert (spec.to_row is None) == spec.pairs, "every supervised format says how its rows are encoded"
    assert [spec.format for spec in FORMAT_SPECS.values() if spec.corpus] == [CORPUS_FORMAT]
    assert list(GOOD_ROWS) == list(DataFormat), "a new format needs its good row here"


@pytest.mark.parametrize("fmt", list(DataFormat))
def test_a_formats_required_columns_are_those_its_reader_cannot_do_without(fmt):
    spec, columns = FORMAT_SPECS[fmt], columns_for(fmt)
    spec.reader(GOOD_ROWS[fmt], columns)
    for logical in spec.columns:
        row = {key: value for key, value in GOOD_ROWS[fmt].items() if key != columns[logical]}
        if logical in spec.required:
            with pytest.raises(RowError):
                spec.reader(row, columns)
        else:
            spec.reader(row, columns)


@pytest.mark.parametrize("fmt", list(DataFormat))
def test_each_loader_type_is_a_loader_axolotl_finds(fmt):
    """SFT types name a module with ``load`` (Axolotl imports it); DPO ones a top-level function."""
    loader_type = FORMAT_SPECS[fmt].loader_type
    if FORMAT_SPECS[fmt].pairs:
        module, name = loader_type.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))
    else:
        assert callable(importlib.import_module(loader_type).load)


#: What names a format in code: its name, and the Axolotl type of its loader.
FORMAT_NAMES = {str(fmt) for fmt in DataFormat} | {spec.loader_type for spec in FORMAT_SPECS.values()}
#: Branches outside this clean-up's files, waiting to ask the spec (``format_spec(self.format).corpus``).
KNOWN_ELSEWHERE: set[tuple[str, str]] = set()  # none: every format branch is a spec lookup


def _names_a_format(node) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in FORMAT_NAMES
    if isinstance(node, ast.Attribute):  # DataFormat.text
        return isinstance(node.value, ast.Name) and node.value.id == "DataFormat"
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):  # fmt in ("text", "preferences")
        return any(_names_a_format(element) for element in node.elts)
    return False


def format_branches(source: str) -> list[str]:
    """Where a module branches on a format: comparisons (``==``, ``!=``, ``in``, ``is``) and ``case``
    patterns with a format's name, its loader's type or a ``DataFormat`` member, and dicts keyed by
    them (a table parallel to FORMAT_SPECS)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(map(_names_a_format, (node.left, *node.comparators))):
            found.append(ast.get_source_segment(source, node))
        elif isinstance(node, ast.MatchValue) and _names_a_format(node.value):
            found.append(f"case {ast.get_source_segment(source, node)}")
        elif isinstance(node, ast.Dict) and sum(_names_a_format(key) for key in node.keys if key is not None) > 1:
            found.append(ast.get_source_segment(source, node))
    return found


@pytest.mark.parametrize("snippet", [
    'if fmt == "text": pass',
    'x = data["format"] != "preferences"',
    'ok = "text" not in [str(f) for f in formats]',
    'ok = fmt in ("text", "preferences")',
    'ok = fmt is DataFormat.conversations',
    'match fmt:\n    case "instructions": pass',
    'TABLE = {"text": 1, "instructions": 2}',
    'dpo = any(d["type"] == "llamantino_plugin.dpo" for d in datasets)',
])
def test_the_scan_finds_a_format_branch(snippet):
    assert format_branches(snippet)


def test_only_the_format_table_branches_on_a_format():
    found = {(path.relative_to(ROOT).as_posix(), branch)
             for package in ("llamantino", "llamantino_plugin") for path in sorted((ROOT / package).rglob("*.py"))
             if path.relative_to(ROOT).as_posix() != "llamantino_plugin/formats.py"
             for branch in format_branches(path.read_text())}
    offenders = sorted(found - KNOWN_ELSEWHERE)
    assert offenders == [], "ask the format's spec (llamantino_plugin/formats.py) instead"
