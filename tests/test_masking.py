"""Token-level: labels are -100 exactly on non-assistant spans, with the tiny tokenizer."""

from __future__ import annotations

import pytest

from llamantino_plugin.encode import IGNORE, assistant_spans, tokenise_chat, tokenise_instructions, tokenise_text
from llamantino_plugin.preferences import pair_strings
from llamantino_plugin.templates import render_chat

CONVERSATION = [
    {"role": "system", "content": "Sei un assistente breve."},
    {"role": "user", "content": "Qual è la capitale d'Italia?"},
    {"role": "assistant", "content": "Roma."},
    {"role": "user", "content": "E della Francia?"},
    {"role": "assistant", "content": "Parigi."},
]
ANSWERS = {
    "anita": ["Roma.<|eot_id|>", "Parigi.<|eot_id|>"],
    "llamantino2_chat": [" Roma. </s>", " Parigi. </s>"],
}


def trained_text(tokenizer, ids, labels):
    """Decode each maximal run of trained tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE:
            if current:
                runs.append(tokenizer.decode(current))
                current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("template", sorted(ANSWERS))
def test_only_assistant_turns_and_their_terminator_are_trained(tiny_tokenizer, template):
    out = tokenise_chat({"messages": [CONVERSATION]}, tokenizer=tiny_tokenizer, template=template,
                        system_prompt=None, train_on_inputs=False)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tiny_tokenizer.decode(ids) == render_chat(template, CONVERSATION)
    assert trained_text(tiny_tokenizer, ids, labels) == ANSWERS[template]
    masked = tiny_tokenizer.decode([t for t, label in zip(ids, labels) if label == IGNORE])
    assert "Sei un assistente breve." in masked and "Qual è la capitale" in masked and "Roma" not in masked


def test_spans_cover_exactly_the_answers():
    text, spans = assistant_spans("anita", None, CONVERSATION)
    assert [text[a:b] for a, b in spans] == ANSWERS["anita"]


def test_train_on_inputs_trains_everything(tiny_tokenizer):
    out = tokenise_chat({"messages": [CONVERSATION]}, tokenizer=tiny_tokenizer, template="anita",
                        system_prompt=None, train_on_inputs=True)
    assert out["labels"][0] == out["input_ids"][0]


def test_alpaca_masks_the_prompt_and_trains_answer_and_eos(tiny_tokenizer):
    out = tokenise_instructions({"instruction": ["Traduci."], "input": ["Ciao"], "output": ["Hello"]},
                                tokenizer=tiny_tokenizer, template="alpaca_it", train_on_inputs=False)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert trained_text(tiny_tokenizer, ids, labels) == ["Hello</s>"]


def test_raw_text_is_chunked_and_fully_trained(tiny_tokenizer):
    out = tokenise_text({"text": ["Quel ramo del lago di Como " * 20]}, tokenizer=tiny_tokenizer, sequence_len=32)
    assert all(len(ids) <= 32 for ids in out["input_ids"]) and len(out["input_ids"]) > 1
    assert out["labels"] == out["input_ids"]
    flat = [t for ids in out["input_ids"] for t in ids]
    assert flat[0] == tiny_tokenizer.bos_token_id and flat[-1] == tiny_tokenizer.eos_token_id


@pytest.mark.parametrize("template", sorted(ANSWERS))
def test_dpo_strings_extend_the_prompt_like_sft(template):
    pair = {"prompt": CONVERSATION[:2], "chosen": "Roma.", "rejected": "Milano."}
    strings = pair_strings(pair, template, None)
    assert strings["prompt"] == render_chat(template, CONVERSATION[:2], add_generation_prompt=True)
    assert strings["chosen"] == ANSWERS[template][0]
    assert strings["prompt"] + strings["chosen"] == render_chat(template, CONVERSATION[:3])
