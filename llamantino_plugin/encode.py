"""Encoding rows into training examples: canonical rows, prompt rendering, tokens and labels.

Pure functions on plain Python batches (dict of lists), shared by the Axolotl loader
(``loading.py``, inside ``datasets.map``) and by ``python -m llamantino data preview``, so the
preview shows exactly what the model trains on. No Axolotl import here.
"""

from __future__ import annotations

from functools import partial

from llamantino_plugin.formats import CORPUS_FORMAT, Encoding, RowError, format_spec
from llamantino_plugin.templates import compiled_template, render_chat, template_info

IGNORE = -100


class LlamantinoDataError(ValueError):
    """Data that cannot be trained on; the message says which dataset, row and why."""


def assistant_spans(name: str, system_prompt: str | None, messages: list) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and return the character spans of the assistant answers.

    An answer's span starts where the template's generation prompt ends and stops where the
    template's rendering of that turn stops, so the turn terminator (``</s>``, ``<|eot_id|>``) is
    trained and the role header is not. A template's ``closing`` (what it writes after the last turn,
    Phi-3.5's ``<|endoftext|>``) is not part of an earlier answer; the last answer's span includes it.
    """
    closing = template_info(name).closing
    text = render_chat(name, messages, system_prompt)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(name, messages[:index], system_prompt, add_generation_prompt=True)
        upto = render_chat(name, messages[: index + 1], system_prompt)
        if closing and index + 1 < len(messages) and upto.endswith(closing):
            upto = upto[: -len(closing)]
        if not (upto.startswith(before) and text.startswith(upto)):
            raise LlamantinoDataError(
                f"template {name!r} does not render conversations prefix by prefix; it cannot be masked by turn"
            )
        spans.append((len(before), len(upto)))
    return text, spans


# --- per-row functions (module level so datasets can pickle them for worker processes) ---------


def encoding_of(fmt: str, template: str | None) -> Encoding:
    """How the rows of ``fmt`` are encoded with ``template`` (None: no template)."""
    return format_spec(fmt).encoding_with(template_info(template).kind if template else None)


def canonical_row(row: dict, index: int, *, fmt: str, columns: dict, as_chat: bool) -> dict:
    """One row in canonical form (the fields its spec's ``to_row`` fills; ``as_chat``: rendered by a
    chat template), or an ``_error`` saying why it is bad."""
    spec = format_spec(fmt)
    if spec.to_row is None:
        raise ValueError(f"{fmt} rows are {spec.encoding} data, not rows of a supervised example")
    out = {"text": "", "messages": [], "instruction": "", "input": "", "output": "", "_error": ""}
    try:
        value = spec.reader(row, columns)
    except RowError as exc:
        out["_error"] = f"row {index + 1} [{exc.column}]: {exc.message}"
        return out
    out.update(spec.to_row(value, as_chat))
    return out


def tokenise_text(batch, *, tokenizer, sequence_len: int, per_document: bool = False) -> dict:
    """Raw text: BOS + text + EOS, split into ``sequence_len`` chunks, every token trained.

    With ``per_document`` the chunks stay grouped by document (``{"chunks": [[ids, ...], ...]}``).
    """
    documents = []
    for ids in tokenizer(batch["text"], add_special_tokens=True, return_attention_mask=False)["input_ids"]:
        ids.append(tokenizer.eos_token_id)
        documents.append([ids[start : start + sequence_len] for start in range(0, len(ids), sequence_len)])
    if per_document:
        return {"chunks": documents}
    chunks = [chunk for document in documents for chunk in document]
    return {"input_ids": chunks, "attention_mask": [[1] * len(c) for c in chunks], "labels": [list(c) for c in chunks]}


def tokenise_instructions(batch, *, tokenizer, template: str, train_on_inputs: bool) -> dict:
    """Alpaca-style prompt (masked) + response + EOS (trained).

    Prompt and response are tokenised as one string, so the ids are those of the whole text: a
    SentencePiece tokenizer (Llama-2) would give a separately tokenised response a dummy-prefix
    space (``'▁Marco'`` instead of ``'Mar', 'co'`` after a newline). A token is trained when it
    holds response characters.
    """
    env = compiled_template(template)
    prompts = [env.render(instruction=i, input=x) for i, x in zip(batch["instruction"], batch["input"])]
    encoded = tokenizer([prompt + output for prompt, output in zip(prompts, batch["output"])], add_special_tokens=True,
                        return_offsets_mapping=True, return_attention_mask=False)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, ids, offsets in zip(prompts, encoded["input_ids"], encoded["offset_mapping"]):
        ids = ids + [tokenizer.eos_token_id]
        if train_on_inputs:
            labels = list(ids)
        else:
            boundary = len(prompt)
            labels = [token if end > boundary else IGNORE for token, (_, end) in zip(ids, offsets)] + [ids[-1]]
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
    return out


def tokenise_chat(batch, *, tokenizer, template: str, system_prompt: str | None, train_on_inputs: bool,
                  script_exact: bool = False) -> dict:
    """A conversation through the chat template; only the assistant spans are trained. In script-exact
    mode, the ANITA SFT script's text and ids instead (``script_exact.py``)."""
    from llamantino_plugin.script_exact import sft_example

    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for messages in batch["messages"]:
        if script_exact:
            example = sft_example(tokenizer, messages)
            out["input_ids"].append(example["input_ids"])
            out["attention_mask"].append([1] * len(example["input_ids"]))
            out["labels"].append(example["labels"])
            continue
        text, spans = assistant_spans(template, system_prompt, messages)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
        ids = encoded["input_ids"]
        if train_on_inputs:
            labels = list(ids)
        else:
            labels = [
                token if any(start <= begin < end for start, end in spans) else IGNORE
                for token, (begin, _) in zip(ids, encoded["offset_mapping"])
            ]
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
    return out


def encode_text(batch, indices, *, columns: dict, tokenizer, sequence_len: int, fmt: str = CORPUS_FORMAT,
                normalize: bool = True) -> dict:
    """Raw text (the documents of a corpus format) in one pass: check, normalise, hash and tokenise
    each document into ``sequence_len`` chunks. Every chunk carries its document's index, digest, length and whether
    normalising changed it, so duplicates and too-short documents are dropped afterwards without
    a second pass; a bad document becomes one empty row with its ``_error``. ``normalize=False``
    (a source's ``normalize: false``): each document is hashed, measured and tokenised as read."""
    import hashlib

    from llamantino_plugin.formats import normalise_text

    names = list(batch)
    docs = []
    for values, index in zip(zip(*batch.values()), indices):
        row = canonical_row(dict(zip(names, values)), index, fmt=fmt, columns=columns, as_chat=False)
        text = "" if row["_error"] else (normalise_text(row["text"]) if normalize else row["text"])
        docs.append((index, row["_error"], text, text != row["text"] and not row["_error"]))
    good = [doc[2] for doc in docs if not doc[1]]
    chunked = iter(tokenise_text({"text": good}, tokenizer=tokenizer, sequence_len=sequence_len, per_document=True)
                   ["chunks"]) if good else iter(())
    out = {key: [] for key in ("input_ids", "attention_mask", "labels", "_doc", "_digest", "_chars", "_changed",
                               "_first", "_error")}
    for index, error, text, changed in docs:
        chunks = [[]] if error else next(chunked)
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        for number, ids in enumerate(chunks):
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(list(ids))
            out["_doc"].append(index)
            out["_digest"].append(digest)
            out["_chars"].append(len(text))
            out["_changed"].append(changed)
            out["_first"].append(number == 0)
            out["_error"].append(error)
    return out


def encode_rows(batch, indices, *, fmt: str, columns: dict, as_chat: bool, encode) -> dict:
    """Supervised rows (instructions, conversations) in one pass, one row out per row in: check,
    render, tokenise, mask. A bad row comes out with no tokens and its ``_error``."""
    names = list(batch)
    rows = [canonical_row(dict(zip(names, values)), index, fmt=fmt, columns=columns, as_chat=as_chat)
            for values, index in zip(zip(*batch.values()), indices)]
    good = [row for row in rows if not row["_error"]]
    encoded = encode({key: [row[key] for row in good] for key in ("messages", "instruction", "input", "output")})
    out = {"input_ids": [], "attention_mask": [], "labels": [], "_error": []}
    position = 0
    for row in rows:
        if row["_error"]:
            for key in ("input_ids", "attention_mask", "labels"):
                out[key].append([])
        else:
            for key in ("input_ids", "attention_mask", "labels"):
                out[key].append(encoded[key][position])
            position += 1
        out["_error"].append(row["_error"])
    return out


def tokeniser(fmt: str, template: str | None, *, tokenizer, sequence_len: int, system_prompt: str | None,
              train_on_inputs: bool, script_exact: bool = False):
    """The batched tokenise function of a format and template (its ``encoding_of``)."""
    encoding = encoding_of(fmt, template)
    if encoding is Encoding.document:
        return partial(tokenise_text, tokenizer=tokenizer, sequence_len=sequence_len)
    if encoding is Encoding.prompt_response:
        return partial(tokenise_instructions, tokenizer=tokenizer, template=template, train_on_inputs=train_on_inputs)
    if encoding is Encoding.chat:
        return partial(tokenise_chat, tokenizer=tokenizer, template=template, system_prompt=system_prompt,
                       train_on_inputs=train_on_inputs, script_exact=script_exact)
    raise ValueError(f"{fmt} rows are {encoding} data: preferences.pair_strings renders them, no tokeniser")
