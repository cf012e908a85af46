"""Each template renders the exact published string of a two-turn conversation."""

from __future__ import annotations

import pytest

from llamantino_plugin.templates import render_chat, render_instruction, template_info, template_source

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


def test_template_matches_transformers_rendering(tiny_tokenizer):
    for name in ("llamantino2_chat", "anita"):
        tiny_tokenizer.chat_template = template_source(name)
        assert tiny_tokenizer.apply_chat_template(TWO_TURNS, tokenize=False) == render_chat(name, TWO_TURNS)


def test_unknown_template_lists_valid_ones():
    with pytest.raises(ValueError, match="valid templates: alpaca_it, anita, llama3, llamantino2_chat"):
        template_info("llama2")
