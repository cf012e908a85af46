"""Token-level fidelity: what the encoders produce equals the tokenisation of the whole rendered text.

Two tokenizers for every template: the tiny model's byte-level BPE and a Llama-2-style SentencePiece
one (dummy prefix, byte fallback) built here from the Italian samples; and each chat template with
its own family's tokenizer (its tiny twin's: the family's special tokens and bos/eos roles), where the
trained tokens are exactly the answers and turn ends, BOS comes once, and every stop token is one
special token. Nothing is trained; ids are compared for every shipped template over the sample rows.
"""

from __future__ import annotations

import json

import pytest

from conftest import FAMILY_TWINS, twin_of

from llamantino.paths import SAMPLES_DIR
from llamantino_plugin.encode import IGNORE, canonical_row, tokeniser
from llamantino_plugin.formats import columns_for
from llamantino_plugin.templates import compiled_template, render_chat, template_info, templates

CHAT_TEMPLATES = sorted(name for name, info in templates().items() if info.kind == "chat")


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


# --- each chat template with its own family's tokenizer -------------------------------------------


@pytest.fixture(scope="module")
def twin_tokenizers():
    """``twin_tokenizers(builder)``: the tokenizer of a tiny twin (built once, cached on disk)."""
    from transformers import AutoTokenizer

    from llamantino.inputs.tiny import ensure_tiny_model

    loaded = {}

    def get(builder: str):
        if builder not in loaded:
            loaded[builder] = AutoTokenizer.from_pretrained(str(ensure_tiny_model(builder)))
        return loaded[builder]

    return get


def test_every_template_family_has_a_tiny_twin():
    from llamantino.inputs.tiny import TINY_BUILDERS

    assert {info.family for info in templates().values()} <= set(FAMILY_TWINS)
    assert set(FAMILY_TWINS.values()) <= set(TINY_BUILDERS)
    # every twin but the tiny Llama's is some chat template's family tokenizer
    assert {twin_of(name) for name in CHAT_TEMPLATES} == set(TINY_BUILDERS)


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_chat_ids_with_the_familys_own_tokenizer(twin_tokenizers, template, train_on_inputs):
    from llamantino_plugin.encode import assistant_spans

    tokenizer = twin_tokenizers(twin_of(template))
    good = canonical("conversations", "it_conversazioni_messages.jsonl", as_chat=False)
    assert any(row["messages"][0]["role"] == "system" for row in good)  # the system turn is exercised too
    encoded = tokeniser("conversations", template, tokenizer=tokenizer, sequence_len=4096, system_prompt=None,
                        train_on_inputs=train_on_inputs)({"messages": [row["messages"] for row in good]})
    eot = {tokenizer.convert_tokens_to_ids(token) for token in template_info(template).eot_tokens}
    for row, ids, labels in zip(good, encoded["input_ids"], encoded["labels"]):
        text, spans = assistant_spans(template, None, row["messages"])
        whole = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert ids == whole["input_ids"]
        # BOS: the ids hold it exactly where the template writes its text (first, once, for Mistral and
        # Gemma; before every turn in the LLaMAntino-2 card's format), never added a second time
        if tokenizer.bos_token is not None:
            assert ids.count(tokenizer.bos_token_id) == text.count(tokenizer.bos_token)
            assert (ids[0] == tokenizer.bos_token_id) == text.startswith(tokenizer.bos_token)
        if train_on_inputs:
            assert labels == ids
            continue
        # the trained tokens are exactly the answers' characters, turn ends included, no role header
        trained = [offsets for offsets, label in zip(whole["offset_mapping"], labels) if label != IGNORE]
        assert "".join(text[begin:end] for begin, end in trained) == "".join(text[begin:end] for begin, end in spans)
        assert [label for label in labels if label in eot] and all(
            label == token for label, token in zip(labels, ids) if label != IGNORE)
        assert sum(label in eot for label in labels) == sum(m["role"] == "assistant" for m in row["messages"])


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_every_turn_end_and_stop_token_is_one_special_token_of_the_familys_tokenizer(twin_tokenizers, template):
    from llamantino.job.generation import stop_token_ids

    tokenizer = twin_tokenizers(twin_of(template))
    info = template_info(template)
    ids = {}
    for token in (*info.eot_tokens, *info.stop_tokens):
        ids[token] = tokenizer.convert_tokens_to_ids(token)
        assert token in tokenizer.get_vocab() and token in tokenizer.all_special_tokens, (template, token)
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [ids[token]], (template, token)
        assert tokenizer(f"ciao{token}\nciao", add_special_tokens=False)["input_ids"].count(ids[token]) == 1
    # what generation_config.json gets: the stop tokens in order, then the tokenizer's own EOS
    assert stop_token_ids(tokenizer, template) == list(dict.fromkeys(
        [ids[token] for token in info.stop_tokens] + [tokenizer.eos_token_id]))
    assert info.stop_tokens[0] in info.eot_tokens  # the first stop is the turn end the answers are trained to write
