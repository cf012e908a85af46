"""Script-exact mode: the text and token ids the ANITA scripts trained on, built on today's stack.

Source, read (not copied): marcopoli/LLaMAntino-3-ANITA at f5919e2 (2024-04-30, the commit that trained on
Meta-Llama-3-8B-Instruct), ``model_adaptation/finetune_llama3.py`` and ``dpo_llama3.py``, run with the pins
of that commit's requirements.txt: TRL 0.8.5, transformers 4.40.1, Unsloth 88eee50 (2024-04-19).

SFT (``finetune_llama3.py``):
  * each conversation goes through the base tokenizer's stock Llama-3 template (``bos_token`` before the
    first turn, ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content|trim}<|eot_id|>`` per turn) with
    no system turn: the English system prompt sits only in the unused ``llama3_template`` variable;
  * ``<|end_of_text|>`` is appended, then every ``<|eot_id|>`` becomes ``" <|eot_id|> "`` and
    ``<|begin_of_text|>`` becomes ``"<|begin_of_text|> "``;
  * TRL 0.8.5's SFTTrainer tokenises that text with ``add_special_tokens=True`` and ``truncation=True,
    max_length=max_seq_length``: the tokenizer's BOS comes before the text's own (Unsloth's fix for this
    double BOS, 533f4ba, came on 2024-05-05, after the pin), and a long row keeps its first tokens
    instead of being dropped;
  * its collator trains every token except the pad id, which Unsloth 88eee50 sets to the tokenizer's
    pad, else its unk, else its EOS (Llama-3 has neither pad nor unk: the EOS).

DPO (``dpo_llama3.py``):
  * prompt = template(chosen[:-1]) + ``<|end_of_text|>``; each answer = template(its last turn) +
    ``<|end_of_text|>``. The stock template contains no "system", so ``maybe_insert_system_message``
    inserts nothing, and the ``.replace`` of an assistant header before ``<|end_of_text|>`` never
    matches (no generation prompt is rendered). Rejected's own prompt turns are ignored, and a pair
    whose answers are equal is kept;
  * TRL 0.8.5's ``tokenize_row``: prompt ids = [BOS] + ids(prompt); answer ids = ids(prompt + answer)
    after the prompt's, + [EOS]; when prompt + the longer answer exceed ``max_length`` the prompt keeps
    its last ``max_prompt_length`` ids (so a cut prompt loses its BOS), and if that is still too long
    each answer keeps its first ``max_length - max_prompt_length`` ids (so a cut answer has no EOS).

TRL 1.9 rebuilds ids from strings and appends an EOS to every answer not ending in one, so strings
cannot carry a cut answer; the plugin gives DPO rows their exact ids in the ``IDS_COLUMNS`` and puts
them in place after TRL has tokenised (``LlamantinoPlugin.post_trainer_create``).
"""

from __future__ import annotations

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
END = "<|end_of_text|>"
_ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"

#: The exact ids of a DPO row, beside its strings (TRL 1.9's own ids are replaced by these).
IDS_COLUMNS = {"prompt_ids": "llamantino_prompt_ids", "chosen_ids": "llamantino_chosen_ids",
               "rejected_ids": "llamantino_rejected_ids"}


def stock_chat(messages: list[dict], bos: str = BOS) -> str:
    """Meta-Llama-3-8B-Instruct's own chat template, without a generation prompt (``bos``: the
    tokenizer's ``bos_token``, which the template writes before the first turn)."""
    turns = (f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}{EOT}" for m in messages)
    return (bos if messages else "") + "".join(turns)


def _with_end(text: str) -> str:
    """The scripts' ``(apply_chat_template(...) + END).replace(header + END, END)``."""
    return (text + END).replace(_ASSISTANT_HEADER + END, END)


def sft_text(messages: list[dict], bos: str = BOS) -> str:
    """The text the SFT script built from one conversation (its replaces name Llama-3's tokens literally)."""
    return _with_end(stock_chat(messages, bos)).replace(EOT, f" {EOT} ").replace(BOS, f"{BOS} ")


def masked_id(tokenizer) -> int | None:
    """The id TRL 0.8.5's collator left untrained: the pad Unsloth 88eee50 set (pad, else unk, else EOS)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return None


def sft_example(tokenizer, messages: list[dict]) -> dict:
    """Ids and labels of one SFT row, as TRL 0.8.5 made them before its truncation (the loader keeps
    the first ``sequence_len`` tokens of a longer row, as ``truncation=True`` did)."""
    ids = tokenizer(sft_text(messages, tokenizer.bos_token or ""), add_special_tokens=True)["input_ids"]
    masked = masked_id(tokenizer)
    return {"input_ids": ids, "labels": [-100 if token == masked else token for token in ids]}


def dpo_strings(prompt: list[dict], chosen: dict, rejected: dict, bos: str = BOS) -> dict:
    """The three strings the DPO script built: the prompt turns (chosen's) and each last turn."""
    return {"prompt": _with_end(stock_chat(prompt, bos)), "chosen": _with_end(stock_chat([chosen], bos)),
            "rejected": _with_end(stock_chat([rejected], bos))}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _answer(tokenizer, prompt: str, prompt_ids: list[int], answer: str) -> tuple[list[int], list[int]]:
    """TRL 0.8.5's ``build_tokenized_answer``: the whole text's ids split where the prompt's end (one
    earlier when the tokenizer merged the prompt's last token into the answer)."""
    full = _ids(tokenizer, prompt + answer)
    start = len(prompt_ids) if full[:len(prompt_ids)] == prompt_ids else len(prompt_ids) - 1
    return full[:start], full[start:]


def dpo_ids(tokenizer, strings: dict, max_length: int | None, max_prompt: int | None) -> dict:
    """The ids TRL 0.8.5 trained one pair on: ``prompt_ids`` (masked), ``chosen_ids``, ``rejected_ids``."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompt_ids = _ids(tokenizer, strings["prompt"])
    answers = {}
    for key in ("chosen", "rejected"):
        own_prompt, answer = _answer(tokenizer, strings["prompt"], prompt_ids, strings[key])
        answers[key] = [[bos, *own_prompt], [*answer, eos]]
    longer = max(len(answers["chosen"][1]), len(answers["rejected"][1]))
    if max_length is not None and max_prompt is not None:
        for parts in answers.values():
            if len(parts[0]) + longer > max_length:
                parts[0] = parts[0][-max_prompt:]
        for parts in answers.values():
            if len(parts[0]) + longer > max_length:
                parts[1] = parts[1][:max_length - max_prompt]
    prompt = answers["chosen"][0]
    # TRL 1.9 shares one prompt between the answers; rejected's differs only when a merge moved its boundary.
    rejected = answers["rejected"][0][len(prompt):] + answers["rejected"][1] if answers["rejected"][0][:len(prompt)] \
        == prompt else answers["rejected"][1]
    return {"prompt_ids": prompt, "chosen_ids": answers["chosen"][1], "rejected_ids": rejected}
