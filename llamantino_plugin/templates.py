"""The LLaMAntino prompt templates: Jinja files plus metadata in ``templates/index.yaml``.

Chat templates get their default system prompt baked in (as a Jinja string literal), so the
template saved with the trained tokenizer reproduces the training format at inference too.
Rendering here uses a sandboxed Jinja environment configured like transformers' chat-template
renderer, so a template cannot reach Python objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from llamantino_plugin.formats import format_spec

TEMPLATES_DIR = Path(__file__).parent / "templates"
_PLACEHOLDER = "__DEFAULT_SYSTEM__"


@dataclass(frozen=True)
class TemplateInfo:
    """Metadata of one template."""

    name: str
    kind: str  # "chat" or "instruction"
    file: str
    family: str
    eot_tokens: tuple[str, ...]
    stop_tokens: tuple[str, ...]  # where generation ends; () : the tokenizer's own EOS
    source: str
    system_prompt: str
    variables: tuple[tuple[str, str], ...] = ()  # __NAME__ placeholders of the Jinja file, by value
    closing: str = ""  # written after the last turn when there is no generation prompt (Phi-3.5: <|endoftext|>)


@lru_cache(maxsize=None)
def templates() -> dict[str, TemplateInfo]:
    """All shipped templates by name."""
    index = yaml.safe_load((TEMPLATES_DIR / "index.yaml").read_text(encoding="utf-8"))
    return {
        name: TemplateInfo(name=name, kind=meta["kind"], file=meta["file"], family=meta["family"],
                           eot_tokens=tuple(meta["eot_tokens"]), stop_tokens=tuple(meta["stop_tokens"]), source=meta["source"],
                           system_prompt=meta["system_prompt"],
                           variables=tuple((meta.get("variables") or {}).items()), closing=meta.get("closing") or "")
        for name, meta in index.items()
    }


def default_template(fmt: str) -> str | None:
    """The template a format uses when a recipe names none (its spec's): the one default, for training and previews."""
    return format_spec(fmt).default_template


def template_info(name: str) -> TemplateInfo:
    """Metadata of a template; a clear error lists the valid names."""
    known = templates()
    if name not in known:
        raise ValueError(f"unknown prompt template {name!r}; valid templates: {', '.join(sorted(known))}")
    return known[name]


def template_source(name: str, system_prompt: str | None = None) -> str:
    """The Jinja text of a template; for chat templates with the default system prompt baked in.

    Args:
        name: a template name from ``templates/index.yaml``.
        system_prompt: ``None`` for the published default, ``""`` for no system turn, or the text
            to use instead.
    """
    info = template_info(name)
    text = (TEMPLATES_DIR / info.file).read_text(encoding="utf-8")
    for variable, value in info.variables:  # one Jinja file serves variants that differ in a string
        text = text.replace(f"__{variable}__", json.dumps(value, ensure_ascii=False))
    if info.kind != "chat":
        if system_prompt:
            raise ValueError(f"template {name!r} is not a chat template: it takes no system prompt")
        return text
    prompt = info.system_prompt if system_prompt is None else system_prompt
    return text.replace(_PLACEHOLDER, json.dumps(prompt, ensure_ascii=False))


@lru_cache(maxsize=None)
def _environment():
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


@lru_cache(maxsize=None)
def compiled_template(name: str, system_prompt: str | None = None):
    """The compiled Jinja template (compiled once per process, not once per row)."""
    return _environment().from_string(template_source(name, system_prompt))


def render_chat(name: str, messages: list[dict], system_prompt: str | None = None,
                add_generation_prompt: bool = False) -> str:
    """Render a conversation with a chat template, exactly as the tokenizer would."""
    return compiled_template(name, system_prompt).render(messages=messages, add_generation_prompt=add_generation_prompt)


def render_instruction(name: str, instruction: str, input: str = "") -> str:  # noqa: A002
    """Render the prompt part of an instruction template (the response follows it)."""
    if template_info(name).kind != "instruction":
        raise ValueError(f"template {name!r} is a chat template, not an instruction template")
    return compiled_template(name).render(instruction=instruction, input=input)
