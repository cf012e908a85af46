"""A trained model to talk to: what a path names, loaded once, answering in its own template.

``resolve_target`` turns what the user typed (a run, a pipeline, a release, a model folder) into a
:class:`ChatTarget`; :class:`ChatModel` loads it (an adapter on its base, or a full model) and
streams answers token by token. The terminal and the web chat are two faces of this one class.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llamantino.errors import ConfigError, RunDirError
from llamantino.records.provenance import OutputKind, RunOutput
from llamantino.records.rundir import PipelineDir, RunDir


GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}  # unset: no sampling warnings


@dataclass(frozen=True)
class ChatTarget:
    """A model folder (or adapter folder and its base) and how it answers."""

    label: str  # what the chat names: the run's name, or the folder's
    model_dir: Path  # the full model, or the adapter
    base: str | None = None  # adapters: the base model (a folder or a hub id)
    template: str | None = None  # a llamantino template; None: the tokenizer's own chat template, if any
    system_prompt: str | None = None  # what the model was trained with; None: the template's default
    run_dir: Path | None = None


def resolve_target(path: Path) -> ChatTarget:
    """What ``llamantino chat PATH`` talks to; anything else is one ConfigError saying what to give."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"chat: {path} does not exist; give a finished run, a pipeline or a model folder")
    pipeline = PipelineDir(path)
    if pipeline.is_pipeline():
        return _last_model(pipeline)
    run = RunDir(path)
    if run.is_run():
        return _run_target(run)
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return _folder_target(path)
    raise ConfigError(f"chat: {path} is neither a llamantino run, a pipeline nor a model folder (no config.json)")


def _last_model(pipeline: PipelineDir) -> ChatTarget:
    """A pipeline's last step that made a model (or released one)."""
    for step in reversed(pipeline.manifest().steps):
        run = RunDir(step.run_dir)
        if run.is_run() and (run.provenance().output.trained or run.provenance().output.kind == OutputKind.release):
            return _run_target(run)
    raise ConfigError(f"chat: pipeline {pipeline.path} has no step that makes a model")


def _run_target(run: RunDir) -> ChatTarget:
    output = run.provenance().output
    if output.kind == OutputKind.eval_results:
        evaluated = run.eval_plan().evaluated_run
        hint = f"llamantino chat {evaluated}" if evaluated else "the model folder it evaluated"
        raise ConfigError(f"chat: {run.path} is an eval run, it has scores, not a model; chat with {hint}")
    if not output.trained and output.kind != OutputKind.release:
        raise ConfigError(f"chat: {run.path} produced no model (output: {output.kind})")
    status = run.read_status()
    if status is None or not status.state.done:
        raise ConfigError(f"chat: {run.path} has not finished (state: {status.state if status else 'not started'}); "
                          f"follow it with llamantino logs {run.path} -f")
    folder = run.output_path()
    if folder is None or not folder.is_dir():
        raise ConfigError(f"chat: {run.path} records an output that is not there ({output.path})")
    label = run.config().run.name or run.name
    if output.kind == OutputKind.release:
        plan = run.release_plan()
        released = RunDir(plan.model_run).provenance().output
        base = _base_of(released) if plan.what == "adapter" else None
        return ChatTarget(label, folder, base, plan.template, plan.system_prompt, run.path)
    base = _base_of(output) if output.kind == OutputKind.adapter else None
    return ChatTarget(label, folder, base, output.template, output.system_prompt, run.path)


def _base_of(output: RunOutput) -> str:
    base = output.base_model
    if base is None or not (base.local or base.ref):
        raise RunDirError("the adapter's record names no base model")
    return base.local or base.ref


def _folder_target(path: Path) -> ChatTarget:
    base = None
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        from llamantino.records.files import load_object

        base = load_object(path / "adapter_config.json", "an adapter folder").get("base_model_name_or_path")
        if not isinstance(base, str) or not base:
            raise ConfigError(f"chat: {path}/adapter_config.json names no base_model_name_or_path")
    return ChatTarget(path.resolve().name, path, base)


def sampling_options(temperature: float, top_p: float, max_new_tokens: int) -> dict:
    """Checked generation settings: temperature 0 is greedy (reproducible), above 0 samples."""
    if not temperature >= 0 or temperature == float("inf"):
        raise ConfigError(f"--temperature={temperature:g} must be 0 (greedy) or a finite number above it")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p={top_p:g} must be above 0 and at most 1")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={max_new_tokens} must be at least 1")
    return {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}


class ChatModel:
    """A loaded model that answers a conversation, streamed; greedy unless a temperature is given."""

    def __init__(self, target: ChatTarget, device: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        self.target = target
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        dtype = torch.bfloat16 if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(str(target.model_dir))
        if target.base is not None:
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(target.base, dtype=dtype)
            model = PeftModel.from_pretrained(base, str(target.model_dir))
        else:
            model = AutoModelForCausalLM.from_pretrained(str(target.model_dir), dtype=dtype)
        self.model = model.to(self.device).eval()
        self.stop_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        """The output's own generation settings (written when it finished), else the template's."""
        from transformers import GenerationConfig

        from llamantino.job.generation import GENERATION_CONFIG, stop_token_ids

        if (self.target.model_dir / GENERATION_CONFIG).is_file():
            eos = GenerationConfig.from_pretrained(str(self.target.model_dir)).eos_token_id
            if eos is not None:
                return list(eos) if isinstance(eos, (list, tuple)) else [eos]
        return stop_token_ids(self.tokenizer, self.target.template)

    @property
    def kind(self) -> str:
        """chat (multi-turn, a system prompt), instruction (one instruction at a time) or plain (continuation)."""
        from llamantino_plugin.templates import template_info

        if self.target.template:
            return template_info(self.target.template).kind
        return "chat" if self.tokenizer.chat_template else "plain"

    @property
    def default_system(self) -> str:
        """The system prompt the model was trained with: the run's, else its template's published one."""
        from llamantino_plugin.templates import template_info

        if self.target.system_prompt is not None:
            return self.target.system_prompt
        return template_info(self.target.template).system_prompt if self.target.template else ""

    def prompt(self, history: list[dict], message: str, system: str | None = None) -> tuple[str, bool]:
        """(the text the model continues, whether the tokenizer adds BOS to it), rendered exactly as
        the model was trained: ``system`` None keeps the trained system prompt, "" drops it."""
        from llamantino_plugin.templates import render_chat, render_instruction

        kind = self.kind
        if kind == "instruction":  # the format has no history: each instruction stands alone
            return render_instruction(self.target.template, message), True
        if kind == "plain":
            return message, True
        messages = [{"role": m["role"], "content": m["content"]} for m in history if m["role"] in ("user", "assistant")]
        messages.append({"role": "user", "content": message})
        chosen = self.default_system if system is None else system
        if self.target.template:
            return render_chat(self.target.template, messages, chosen, add_generation_prompt=True), False
        messages = ([{"role": "system", "content": chosen}] if chosen else []) + messages
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), False

    def _encoded(self, history: list[dict], message: str, system: str | None):
        """(the prompt's token ids on the model's device, the padding id generate needs)."""
        text, add_bos = self.prompt(history, message, system)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=add_bos).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        return ids, pad

    def stream(self, history: list[dict], message: str, system: str | None = None, *, temperature: float = 0.0,
               top_p: float = 1.0, max_new_tokens: int = 256) -> Iterator[str]:
        """The answer, piece by piece as it is generated; it ends at the template's turn end."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        abandoned = threading.Event()  # the reader left (Stop in the page, Ctrl-C): generation ends too

        class WhenAbandoned(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return abandoned.is_set()

        ids, pad = self._encoded(history, message, system)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else GREEDY
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(**ids, streamer=streamer, max_new_tokens=max_new_tokens,
                                        eos_token_id=self.stop_ids, pad_token_id=pad,
                                        stopping_criteria=StoppingCriteriaList([WhenAbandoned()]), **sampling)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            abandoned.set()
            worker.join()
        if failure:
            raise failure[0]

    def answer(self, history: list[dict], message: str, system: str | None = None, **sampling) -> str:
        return "".join(self.stream(history, message, system, **sampling))

    def generated_tokens(self, history: list[dict], message: str, system: str | None = None,
                         max_new_tokens: int = 256) -> list[int]:
        """The greedy answer's token ids, stop token included when there is one (for checks)."""
        import torch

        ids, pad = self._encoded(history, message, system)
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids,
                                      pad_token_id=pad, **GREEDY)
        return out[0][ids["input_ids"].shape[1]:].tolist()
