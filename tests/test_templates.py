"""Each template renders the exact published string of a two-turn conversation."""

from __future__ import annotations

import copy

import pytest

from llamantino_plugin.templates import render_chat, render_instruction, template_info, template_source, templates

CHAT_TEMPLATES = sorted(name for name, info in templates().items() if info.kind == "chat")

TWO_TURNS = [
    {"role": "user", "content": "Ciao, come stai?"},
    {"role": "assistant", "content": "Bene, grazie!"},
    {"role": "user", "content": "Qual è la capitale d'Italia?"},
    {"role": "assistant", "content": "Roma."},
]

# swap-uniba/LLaMAntino-2-chat-13b-hf-UltraChat-ITA model card, character for character; the
# tokenizer adds <s> (BOS) in front.
LLAMANTINO2_SYSTEM = (
    "Sei un assistente disponibile, rispettoso e onesto. "
    "Rispondi sempre nel modo piu' utile possibile, pur essendo sicuro. "
    "Le risposte non devono includere contenuti dannosi, non etici, razzisti, sessisti, tossici, pericolosi o illegali. "
    "Assicurati che le tue risposte siano socialmente imparziali e positive. "
    "Se una domanda non ha senso o non e' coerente con i fatti, spiegane il motivo invece di rispondere in modo non corretto. "
    "Se non conosci la risposta a una domanda, non condividere informazioni false."
)
LLAMANTINO2_CARD = (
    " [INST]<<SYS>>\n" + LLAMANTINO2_SYSTEM + "\n" + "<</SYS>>\n\n"
    + "Ciao, come stai?[/INST] Bene, grazie! </s> <s> [INST]Qual è la capitale d'Italia?[/INST] Roma. </s>"
)
# LLaMAntino-3-ANITA README, including its "un an" typo; Llama-3's tokenizer template adds BOS.
ANITA_SYSTEM = (
    "Sei un an assistente AI per la lingua Italiana di nome LLaMAntino-3 ANITA "
    "(Advanced Natural-based interaction for the ITAlian language)."
    " Rispondi nella lingua usata per la domanda in modo chiaro, semplice ed esaustivo."
)
ANITA_CARD = (
    "<|start_header_id|>system<|end_header_id|>\n\n" + ANITA_SYSTEM + "<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nCiao, come stai?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nBene, grazie!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nQual è la capitale d'Italia?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nRoma.<|eot_id|>"
)


def test_llamantino2_ultrachat_format_is_the_model_cards():
    assert render_chat("llamantino2_chat", TWO_TURNS) == "<s>" + LLAMANTINO2_CARD


def test_anita_format_is_the_readmes_with_the_typo():
    assert template_info("anita").system_prompt == ANITA_SYSTEM
    assert "un an assistente" in ANITA_SYSTEM
    assert render_chat("anita", TWO_TURNS) == "<|begin_of_text|>" + ANITA_CARD


def test_anita_generation_prompt_ends_with_the_assistant_header():
    text = render_chat("anita", TWO_TURNS[:1], add_generation_prompt=True)
    assert text.endswith("Ciao, come stai?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("name", ["llamantino2_chat", "anita"])
def test_system_prompt_is_configurable_and_a_system_turn_wins(name):
    custom = render_chat(name, TWO_TURNS, system_prompt="Rispondi in rima.")
    assert "Rispondi in rima." in custom and "onesto" not in custom and "ANITA" not in custom
    none = render_chat(name, TWO_TURNS, system_prompt="")
    assert "<<SYS>>" not in none and "system<|end_header_id|>" not in none
    explicit = render_chat(name, [{"role": "system", "content": "Sii breve."}] + TWO_TURNS)
    assert "Sii breve." in explicit and "onesto" not in explicit


def test_system_prompt_with_quotes_and_newlines_is_baked_in_safely():
    tricky = 'Usa le "virgolette"\ne le \\barre {{ 7*7 }}'
    assert tricky in render_chat("anita", TWO_TURNS, system_prompt=tricky)


def test_italian_alpaca_with_and_without_input():
    with_input = render_instruction("alpaca_it", "Traduci in inglese.", "Ciao")
    assert with_input == (
        "Di seguito è riportata un'istruzione che descrive un'attività, abbinata ad un input che fornisce ulteriore "
        "informazione. Scrivi una risposta che soddisfi adeguatamente la richiesta.\n\n"
        "### Istruzione:\nTraduci in inglese.\n\n### Input:\nCiao\n\n### Risposta:\n"
    )
    assert render_instruction("alpaca_it", "Saluta.") == (
        "Di seguito è riportata un'istruzione che descrive un'attività. "
        "Scrivi una risposta che soddisfi adeguatamente la richiesta.\n\n### Istruzione:\nSaluta.\n\n### Risposta:\n"
    )


def test_unknown_roles_are_refused_by_the_template():
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError):
        render_chat("anita", [{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("name", CHAT_TEMPLATES)
def test_template_matches_transformers_rendering(tiny_tokenizer, name):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = template_source(name)
    for messages in (TWO_TURNS, [SYSTEM] + TWO_TURNS):
        assert tokenizer.apply_chat_template(messages, tokenize=False) == render_chat(name, messages)
        assert (tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
                == render_chat(name, messages[:-1], add_generation_prompt=True))


def test_unknown_template_lists_valid_ones():
    with pytest.raises(ValueError, match="valid templates: alpaca_it, anita, gemma, llama3, llamantino2_chat, "
                                         "llamantino2_chat_70b, mistral_instruct, phi3, qwen2_5$"):
        template_info("llama2")


# --- the model families of issue 28: each its own published format, pinned character for character ---

SYSTEM = {"role": "system", "content": "Sii breve."}
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
FAMILY_FORMATS = {
    # Mixtral-8x7B-Instruct-v0.1: BOS text first, a space before each [INST] and each answer; the
    # system text goes in front of the first user message, a blank line between.
    "mistral_instruct": (
        "<s> [INST] Ciao, come stai? [/INST] Bene, grazie!</s> [INST] Qual è la capitale d'Italia? [/INST] Roma.</s>",
        "<s> [INST] Sii breve.\n\nCiao, come stai? [/INST] Bene, grazie!</s>"
        " [INST] Qual è la capitale d'Italia? [/INST] Roma.</s>",
    ),
    # Phi-3.5-mini-instruct: no BOS; the conversation closes with the eos_token, <|endoftext|>.
    "phi3": (
        "<|user|>\nCiao, come stai?<|end|>\n<|assistant|>\nBene, grazie!<|end|>\n"
        "<|user|>\nQual è la capitale d'Italia?<|end|>\n<|assistant|>\nRoma.<|end|>\n<|endoftext|>",
        "<|system|>\nSii breve.<|end|>\n<|user|>\nCiao, come stai?<|end|>\n<|assistant|>\nBene, grazie!<|end|>\n"
        "<|user|>\nQual è la capitale d'Italia?<|end|>\n<|assistant|>\nRoma.<|end|>\n<|endoftext|>",
    ),
    # Qwen2.5: ChatML, no BOS, Qwen's own system turn when none is given.
    "qwen2_5": (
        "<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n"
        "<|im_start|>user\nCiao, come stai?<|im_end|>\n<|im_start|>assistant\nBene, grazie!<|im_end|>\n"
        "<|im_start|>user\nQual è la capitale d'Italia?<|im_end|>\n<|im_start|>assistant\nRoma.<|im_end|>\n",
        "<|im_start|>system\nSii breve.<|im_end|>\n"
        "<|im_start|>user\nCiao, come stai?<|im_end|>\n<|im_start|>assistant\nBene, grazie!<|im_end|>\n"
        "<|im_start|>user\nQual è la capitale d'Italia?<|im_end|>\n<|im_start|>assistant\nRoma.<|im_end|>\n",
    ),
    # Gemma-2: BOS text first, the assistant is "model"; no system role, so the system text is folded
    # into the first user turn (as Gemma-3's template does).
    "gemma": (
        "<bos><start_of_turn>user\nCiao, come stai?<end_of_turn>\n<start_of_turn>model\nBene, grazie!<end_of_turn>\n"
        "<start_of_turn>user\nQual è la capitale d'Italia?<end_of_turn>\n<start_of_turn>model\nRoma.<end_of_turn>\n",
        "<bos><start_of_turn>user\nSii breve.\n\nCiao, come stai?<end_of_turn>\n"
        "<start_of_turn>model\nBene, grazie!<end_of_turn>\n"
        "<start_of_turn>user\nQual è la capitale d'Italia?<end_of_turn>\n<start_of_turn>model\nRoma.<end_of_turn>\n",
    ),
}
GENERATION_PROMPTS = {"mistral_instruct": " [INST] Ciao, come stai? [/INST]",
                      "phi3": "<|user|>\nCiao, come stai?<|end|>\n<|assistant|>\n",
                      "qwen2_5": "<|im_start|>user\nCiao, come stai?<|im_end|>\n<|im_start|>assistant\n",
                      "gemma": "<start_of_turn>user\nCiao, come stai?<end_of_turn>\n<start_of_turn>model\n"}


@pytest.mark.parametrize("name", sorted(FAMILY_FORMATS))
def test_family_format_with_and_without_a_system_turn(name):
    plain, with_system = FAMILY_FORMATS[name]
    assert render_chat(name, TWO_TURNS) == plain
    assert render_chat(name, [SYSTEM] + TWO_TURNS) == with_system
    # prompt.system_prompt does what a system turn does
    assert render_chat(name, TWO_TURNS, system_prompt="Sii breve.") == with_system
    assert render_chat(name, TWO_TURNS[:1], add_generation_prompt=True).endswith(GENERATION_PROMPTS[name])


def test_qwen_default_system_turn_is_qwens_and_an_empty_system_prompt_drops_it():
    assert template_info("qwen2_5").system_prompt == QWEN_SYSTEM
    assert render_chat("qwen2_5", TWO_TURNS, system_prompt="") == FAMILY_FORMATS["qwen2_5"][0].split("<|im_end|>\n", 1)[1]
    assert all(template_info(name).system_prompt == "" for name in ("mistral_instruct", "phi3", "gemma"))


@pytest.mark.parametrize("name, bos", [("mistral_instruct", "<s>"), ("gemma", "<bos>"), ("phi3", ""), ("qwen2_5", "")])
def test_bos_text_is_written_once_by_the_families_that_start_with_it(name, bos):
    for add_generation_prompt in (False, True):
        text = render_chat(name, TWO_TURNS[:1] if add_generation_prompt else TWO_TURNS,
                           add_generation_prompt=add_generation_prompt)
        assert text.startswith(bos) and text.count("<s>") + text.count("<bos>") == (1 if bos else 0)


@pytest.mark.parametrize("name", sorted(FAMILY_FORMATS))
def test_family_templates_refuse_roles_out_of_place(name):
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match=name):
        render_chat(name, [{"role": "tool", "content": "x"}])
    if name in ("mistral_instruct", "gemma"):  # the two whose published templates check alternation
        with pytest.raises(TemplateError, match="alternate"):
            render_chat(name, [TWO_TURNS[0], TWO_TURNS[0]])


def _axolotl_template(name: str) -> str:
    """A chat template as Axolotl 0.19 ships it (copies of the hub files), read without importing Axolotl."""
    import importlib.util
    from pathlib import Path

    folder = Path(importlib.util.find_spec("axolotl").submodule_search_locations[0]) / "utils" / "chat_templates"
    return (folder / "templates" / f"{name}.jinja").read_text(encoding="utf-8")


# ours -> (Axolotl's copy, its bos_token and eos_token, what ours adds after a conversation with no generation prompt)
AXOLOTL_COPIES = {
    "mistral_instruct": ("mistral_v1", "<s>", "</s>", ""),
    "qwen2_5": ("qwen_25", "", "<|im_end|>", ""),
    "gemma": ("gemma", "<bos>", "<eos>", ""),
    # Axolotl's copy of Phi-3.5's template drops the hub's closing "{% else %}{{ eos_token }}"
    "phi3": ("phi_35", "<s>", "<|endoftext|>", "<|endoftext|>"),
}


@pytest.mark.parametrize("name", sorted(AXOLOTL_COPIES))
def test_family_templates_render_as_axolotls_copies_of_the_hub_templates(name):
    from llamantino_plugin.templates import _environment

    copy_name, bos, eos, closing = AXOLOTL_COPIES[name]
    theirs = _environment().from_string(_axolotl_template(copy_name))
    # Gemma-2's own template refuses a system turn; Gemma-3's folds it in as ours does
    with_system = _environment().from_string(_axolotl_template("gemma3")) if name == "gemma" else theirs
    for messages, reference in ((TWO_TURNS, theirs), ([SYSTEM] + TWO_TURNS, with_system)):
        expected = reference.render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=False)
        assert render_chat(name, messages) == expected + closing
        prompt = reference.render(messages=messages[:-1], bos_token=bos, eos_token=eos, add_generation_prompt=True)
        assert render_chat(name, messages[:-1], add_generation_prompt=True) == prompt
    assert template_info(name).closing == closing
