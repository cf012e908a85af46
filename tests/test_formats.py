"""Row formats and file checks: each bad input names file, line and column; skip counts."""

from __future__ import annotations

import json

import pytest

from llamantino.paths import SAMPLES_DIR
from llamantino_plugin.formats import (
    DataFileError,
    RowError,
    check_file,
    columns_for,
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
    from llamantino.registry import registry

    checked = set()
    for name, entry in registry().items():
        if entry.path:
            report = check_file(SAMPLES_DIR.parent / entry.path, entry.format, columns_for(entry.format, entry.columns))
            assert report.kept == report.rows > 0, name
            checked.add(entry.path)
    assert len(checked) == 7
