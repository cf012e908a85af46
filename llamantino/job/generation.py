"""Generation that ends where the template's turn ends, for whoever loads a trained output.

Axolotl saves the tokenizer it trained with: the base's ``eos_token`` (``</s>`` on the tiny model
and Llama-2) and no ``generation_config.json`` for adapters, so a Llama-3-format model generated
through dozens of ``<|eot_id|>`` to the token limit. After a run finishes, its output gets the
template's stop tokens (``llamantino_plugin/templates/index.yaml``: ``stop_tokens``) as
``generation_config.json``'s ``eos_token_id`` (the tokenizer's own EOS kept last), and a chat
template's turn end as the saved tokenizer's ``eos_token``. Merges carry the adapter's template, so
the merged model is sealed the same way.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.records.files import load_object, write_json, write_text

TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE = "chat_template.jinja"  # where transformers 5 saves a tokenizer's chat template
MAX_TOKENIZER_CONFIG_BYTES = 64 << 20  # real ones hold every added token (Llama-3: 256 of them)


def stop_tokens(template: str | None) -> tuple[str, ...]:
    """The tokens that end an answer in ``template`` (none named: the tokenizer's EOS alone)."""
    if not template:
        return ()
    from llamantino_plugin.templates import template_info

    return template_info(template).stop_tokens


def stop_token_ids(tokenizer, template: str | None) -> list[int]:
    """Ids of the template's stop tokens that the tokenizer knows, then its own EOS; no duplicates."""
    ids: list[int] = []
    for token in stop_tokens(template):
        index = tokenizer.convert_tokens_to_ids(token)
        if isinstance(index, int) and index != tokenizer.unk_token_id and index not in ids:
            ids.append(index)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def seal_generation(out_dir: Path, template: str | None, system_prompt: str | None = None) -> list[int]:
    """Write the output's ``generation_config.json``, a chat template's turn end as the tokenizer's
    ``eos_token``, and the chat template itself where the tokenizer was saved without it (Axolotl's
    merge-lora saves the base's tokenizer); returns the stop ids. An output without a tokenizer is
    left as it is."""
    from transformers import AutoTokenizer, GenerationConfig

    out_dir = Path(out_dir)
    if not (out_dir / TOKENIZER_CONFIG).is_file():
        return []
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    if template and not tokenizer.chat_template:
        from llamantino_plugin.templates import template_info, template_source

        if template_info(template).kind == "chat":
            write_text(out_dir / CHAT_TEMPLATE, template_source(template, system_prompt))
    ids = stop_token_ids(tokenizer, template)
    tokens = [token for token in stop_tokens(template) if tokenizer.convert_tokens_to_ids(token) in ids]
    if tokens and tokens[0] != tokenizer.eos_token:
        settings = load_object(out_dir / TOKENIZER_CONFIG, "a tokenizer configuration", MAX_TOKENIZER_CONFIG_BYTES)
        settings["eos_token"] = tokens[0]
        write_json(out_dir / TOKENIZER_CONFIG, settings)
    if (out_dir / GENERATION_CONFIG).is_file():
        generation = GenerationConfig.from_pretrained(str(out_dir))
    elif (out_dir / "config.json").is_file():
        generation = GenerationConfig.from_model_config(_model_config(out_dir))
    else:  # an adapter: its base's generation settings do not know the template
        generation = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    generation.eos_token_id = ids if len(ids) > 1 else ids[0]
    generation.use_cache = True  # training switched the KV cache off in the saved model config
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[-1]
    generation.save_pretrained(str(out_dir))
    return ids


def _model_config(out_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(out_dir))
