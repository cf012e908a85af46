"""Token-level fidelity: what the encoders produce equals the tokenisation of the whole rendered text.

Two tokenizers: the tiny model's byte-level BPE and a Llama-2-style SentencePiece one (dummy prefix,
byte fallback) built here from the Italian samples. Nothing is trained; ids are compared for every
shipped template over the sample rows.
"""

from __future__ import annotations

import json

import pytest

from llamantino.paths import SAMPLES_DIR
from llamantino_plugin.encode import IGNORE, canonical_row, tokeniser
from llamantino_plugin.formats import columns_for
from llamantino_plugin.templates import compiled_template, render_chat, templates


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from llamantino.inputs.tiny import build_sentencepiece_tokenizer

    return AutoTokenizer.from_pretrained(str(build_sentencepiece_tokenizer(tmp_path_factory.mktemp("sp"))))


@pytest.fixture(params=["tiny_bpe", "sentencepiece"])
def tokenizer(request, tiny_tokenizer, sentencepiece_tokenizer):
    return tiny_tokenizer if request.param == "tiny_bpe" else sentencepiece_tokenizer


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLES_DIR / name).read_text().splitlines() if line.strip()][:12]


def canonical(fmt: str, file: str, as_chat: bool, columns: dict | None = None) -> list[dict]:
    found = [canonical_row(row, i, fmt=fmt, columns=columns_for(fmt, columns), as_chat=as_chat)
             for i, row in enumerate(rows(file))]
    assert found and not any(row["_error"] for row in found)
    return found


def test_the_built_tokenizer_is_sentencepiece_with_a_dummy_prefix(tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from llamantino.inputs.tiny import _iter_sample_texts, build_sentencepiece_tokenizer

    folder = build_sentencepiece_tokenizer(tmp_path)
    fast = AutoTokenizer.from_pretrained(str(folder))
    slow = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    texts = [text for text in _iter_sample_texts() if text.strip()]
    assert all(fast(text, add_special_tokens=False)["input_ids"] == slow.encode(text) for text in texts)
    # the dummy prefix: a response tokenised alone starts with "▁", inside the whole text it does not
    alone = fast.convert_ids_to_tokens(fast("Marco", add_special_tokens=False)["input_ids"])
    inside = fast.convert_ids_to_tokens(fast("Risposta:\nMarco", add_special_tokens=False)["input_ids"])
    assert alone[0].startswith("▁") and "<0x0A>" in inside and not inside[inside.index("<0x0A>") + 1].startswith("▁")


@pytest.mark.parametrize("template", sorted(name for name, info in templates().items() if info.kind == "instruction"))
@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_instruction_ids_are_the_whole_texts_ids(tokenizer, template, train_on_inputs):
    good = canonical("instructions", "it_istruzioni.jsonl", as_chat=False,
                     columns={"instruction": "istruzione", "input": "contesto", "output": "risposta"})
    batch = {key: [row[key] for row in good] for key in ("instruction", "input", "output")}
    encoded = tokeniser("instructions", template, tokenizer=tokenizer, sequence_len=4096, system_prompt=None,
                        train_on_inputs=train_on_inputs)(batch)
    env = compiled_template(template)
    for row, ids, labels in zip(good, encoded["input_ids"], encoded["labels"]):
        prompt = env.render(instruction=row["instruction"], input=row["input"])
        assert ids == tokenizer(prompt + row["output"])["input_ids"] + [tokenizer.eos_token_id]
        trained = [token for token, label in zip(ids, labels) if label != IGNORE]
        if train_on_inputs:
            assert labels == ids
        else:  # the trained tokens are the response and EOS, exactly
            assert tokenizer.decode(trained[:-1]).strip() == row["output"].strip() and trained[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("template", sorted(name for name, info in templates().items() if info.kind == "chat"))
def test_chat_ids_are_the_whole_conversations_ids(tokenizer, template):
    good = canonical("conversations", "it_conversazioni_messages.jsonl", as_chat=False)
    encoded = tokeniser("conversations", template, tokenizer=tokenizer, sequence_len=4096, system_prompt=None,
                        train_on_inputs=False)({"messages": [row["messages"] for row in good]})
    for row, ids in zip(good, encoded["input_ids"]):
        assert ids == tokenizer(render_chat(template, row["messages"], None), add_special_tokens=False)["input_ids"]


def test_the_issue_example_response_keeps_its_whole_text_tokens(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    batch = {"instruction": ["Come ti chiami?"], "input": [""], "output": ["Marco, piacere."]}
    encoded = tokeniser("instructions", "alpaca_it", tokenizer=tok, sequence_len=4096, system_prompt=None,
                        train_on_inputs=False)(batch)
    pieces = tok.convert_ids_to_tokens(encoded["input_ids"][0])
    response = pieces[[label != IGNORE for label in encoded["labels"][0]].index(True):]
    assert pieces[pieces.index(response[0]) - 1] == "<0x0A>" and not response[0].startswith("▁")
