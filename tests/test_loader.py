"""The Axolotl-side loader (``ItalianDataset.wrap_dataset``) on an in-memory dataset: what it hands
to Axolotl is exactly what the encoders produce (the preview shows the same), with the Arrow types
datasets would infer itself, and its counts are those of the rows given."""

import datasets
import pytest
from axolotl.utils.dict import DictDefault

from llamantino_plugin.encode import LlamantinoDataError, tokenise_instructions, tokenise_text
from llamantino_plugin.loading import ItalianDataset

INSTRUCTIONS = [
    {"instruction": "Traduci in inglese.", "input": "", "output": "Buongiorno a tutti voi."},
    {"instruction": "Riassumi il testo.", "input": "Il gatto dorme sul divano tutto il giorno.", "output": "Un gatto dorme."},
    {"instruction": "Scrivi un saluto.", "input": "", "output": "Ciao, come stai oggi?"},
]


def wrap(tokenizer, rows, fmt, tmp_path, **settings):
    cfg = DictDefault({"sequence_len": 512, "output_dir": str(tmp_path), **settings})
    dataset = datasets.Dataset.from_list(rows)
    return ItalianDataset(tokenizer, cfg, {"path": "memoria"}, fmt).wrap_dataset(dataset, process_count=1)


def test_instructions_match_the_encoder_token_for_token(tiny_tokenizer, tmp_path):
    wrapped = wrap(tiny_tokenizer, INSTRUCTIONS, "instructions", tmp_path)
    columns = {key: [row[key] for row in INSTRUCTIONS] for key in ("instruction", "input", "output")}
    expected = tokenise_instructions(columns, tokenizer=tiny_tokenizer, template="alpaca_it", train_on_inputs=False)
    assert wrapped.column_names == ["input_ids", "attention_mask", "labels"]
    for key in ("input_ids", "attention_mask", "labels"):
        assert wrapped[key] == expected[key]
    assert [feature.feature.dtype for feature in wrapped.features.values()] == ["int32", "int8", "int64"]


def test_text_drops_duplicates_and_short_documents_and_chunks_the_rest(tiny_tokenizer, tmp_path):
    long_text = " ".join(["La nebbia agli irti colli piovigginando sale."] * 12)
    short, other = "Breve.", "Sotto il maestrale urla e biancheggia il mar."
    # the second row equals the first once its whitespace is normalised
    rows = [{"text": long_text}, {"text": long_text + "  "}, {"text": short}, {"text": other}]
    wrapped = wrap(tiny_tokenizer, rows, "text", tmp_path, sequence_len=64)
    expected = tokenise_text({"text": [long_text, other]}, tokenizer=tiny_tokenizer, sequence_len=64)
    assert wrapped["input_ids"] == expected["input_ids"]
    assert wrapped["labels"] == wrapped["input_ids"]
    assert len(wrapped) > 2  # the long document spans several chunks
    report = (tmp_path / "llamantino_data_report.json").read_text()
    assert '"duplicates": 1' in report and '"too_short": 1' in report and '"rows": 4' in report


def test_nothing_left_is_a_clear_error(tiny_tokenizer, tmp_path):
    with pytest.raises(LlamantinoDataError, match="no trainable row left"):
        wrap(tiny_tokenizer, [{"text": "Corto."}], "text", tmp_path)
