"""After training: generation that ends at the template's turn end, and the terminal chat.

Each template trains the tiny model of its family (the tiny Llama, or the family's tiny twin) on the
Italian sample instructions (the default job with ``prompt.template=<name>``), then the trained
output is asked one of its training prompts: it must stop at a stop token of its template before the
token limit. The terminal chat is driven as a
person would, in a real pseudo-terminal (pexpect), two turns in Italian.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import PYTHON, ROOT, cli, ok, run_dir_of, twin_of

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("chat")]  # one worker: the trained runs are shared

QUESTION = "Qual è la capitale d'Italia?"  # a row of datasets_ita/samples/it_istruzioni.jsonl
LIMIT = 48


@pytest.fixture
def anita_run(chat_run):
    return chat_run("anita")


#: Each template trained on the model of its family: the Llama formats on the tiny Llama, the other
#: families' formats each on its own tiny twin (one training each: about a minute on two cores).
TRAINED = [*(pytest.param(name, "tiny_llama", id=name)
             for name in ("anita", "llama3", "llamantino2_chat", "llamantino2_chat_70b", "alpaca_it")),
           *(pytest.param(name, twin_of(name), id=f"{name}-{twin_of(name)}")
             for name in ("mistral_instruct", "phi3", "qwen2_5", "gemma"))]


@pytest.mark.parametrize("template, model", TRAINED)
def test_a_trained_model_stops_at_its_templates_turn_end(template, model, chat_run):
    from transformers import AutoTokenizer

    from llamantino.chat.model import ChatModel, resolve_target
    from llamantino.inputs.tiny import ensure_tiny_model
    from llamantino_plugin.templates import template_info

    run_dir = chat_run(template, model)
    out = run_dir / "output"
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    base_eos = AutoTokenizer.from_pretrained(str(ensure_tiny_model(model))).eos_token  # the family's own EOS
    stops = template_info(template).stop_tokens
    stop_ids = [tokenizer.convert_tokens_to_ids(token) for token in (*stops, base_eos)]
    # each stop a token of the trained tokenizer, none read as the unknown token
    assert tokenizer.unk_token_id not in stop_ids or tokenizer.unk_token in (*stops, base_eos)
    generation = json.loads((out / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert (eos if isinstance(eos, list) else [eos]) == list(dict.fromkeys(stop_ids))
    assert tokenizer.eos_token == (stops[0] if stops else base_eos)

    model = ChatModel(resolve_target(run_dir), "cpu")
    assert model.target.template == template
    tokens = model.generated_tokens([], QUESTION, max_new_tokens=LIMIT)
    assert len(tokens) < LIMIT and tokens[-1] in model.stop_ids, tokenizer.decode(tokens)
    # a chat answer ends with its template's turn end (the token its answers were trained to end with)
    info = template_info(template)
    if info.kind == "chat":
        assert tokens[-1] == tokenizer.convert_tokens_to_ids(info.eot_tokens[0]), tokenizer.decode(tokens)
    assert tokenizer.decode(tokens, skip_special_tokens=True).strip(), "an empty answer"
    # streamed: the answer arrives in pieces, and the pieces are the whole answer
    pieces = list(model.stream([], QUESTION, max_new_tokens=LIMIT))
    assert len(pieces) > 1 and "".join(pieces).strip() == tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_a_merge_keeps_the_adapters_template_and_stop_tokens(anita_run, tmp_path):
    from transformers import AutoTokenizer

    from llamantino.chat.model import ChatModel, resolve_target

    # the merge's own config names another template: the adapter's wins
    merged_run = run_dir_of(ok(cli("stage=merge", f"run.input_adapter={anita_run}", "prompt.template=llamantino2_chat",
                                   f"run.output_root={tmp_path}", cwd=tmp_path)))
    merged = merged_run / "output" / "merged"
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    assert tokenizer.eos_token == "<|eot_id|>" and "<|start_header_id|>" in tokenizer.chat_template
    eos = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") == eos[0]
    model = ChatModel(resolve_target(merged_run), "cpu")
    assert model.target.base is None and model.target.template == "anita"
    tokens = model.generated_tokens([], QUESTION, max_new_tokens=LIMIT)
    assert len(tokens) < LIMIT and tokens[-1] in model.stop_ids


def test_the_terminal_chat_holds_a_conversation_in_italian(anita_run):
    import pexpect

    from llamantino.chat.model import ChatModel, resolve_target

    expected = ChatModel(resolve_target(anita_run), "cpu").answer([], QUESTION).strip()
    assert expected

    child = pexpect.spawn(PYTHON, ["-m", "llamantino", "chat", str(anita_run)], cwd=str(ROOT), encoding="utf-8",
                          timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"},
                          dimensions=(40, 200))
    try:
        child.expect("llamantino chat: ")
        child.expect(r"\(anita, greedy, cpu\)")
        child.expect("tu> ")
        child.sendline(QUESTION)
        child.expect_exact(expected)  # the answer the model gives, streamed to the terminal
        child.expect("tu> ")
        first = child.before
        child.sendline("Scrivi un sinonimo della parola indicata.")
        child.expect("tu> ")  # the second turn, with the first in its history, answered and ended
        second = child.before
        assert second.strip() and second.strip() != first.strip()
        child.sendline("/system Rispondi in breve.")
        child.expect("system prompt set: Rispondi in breve.")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_the_history_and_system_prompt_reach_the_template(anita_run):
    from llamantino.chat.model import ChatModel, resolve_target
    from llamantino_plugin.templates import render_chat, template_info

    model = ChatModel(resolve_target(anita_run), "cpu")
    history = [{"role": "user", "content": "Ciao"}, {"role": "assistant", "content": "Ciao!"}]
    text, add_bos = model.prompt(history, QUESTION)
    assert not add_bos and text == render_chat("anita", [*history, {"role": "user", "content": QUESTION}],
                                               add_generation_prompt=True)
    assert template_info("anita").system_prompt in text
    assert template_info("anita").system_prompt not in model.prompt([], QUESTION, system="")[0]
    assert "Sii breve." in model.prompt([], QUESTION, system="Sii breve.")[0]


def test_piped_stdin_is_one_prompt_answered_once(anita_run, tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "llamantino", "chat", str(anita_run), "--max-new-tokens", str(LIMIT)],
                          input=QUESTION + "\n", capture_output=True, text=True, timeout=300, cwd=tmp_path)
    from llamantino.chat.model import ChatModel, resolve_target

    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = ChatModel(resolve_target(anita_run), "cpu").answer([], QUESTION, max_new_tokens=LIMIT).strip()
    assert proc.stdout.strip() == expected and "tu> " not in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "--temperature=-1 must be 0"),
    (["--top-p", "0"], "--top-p=0 must be above 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens=0 must be at least 1"),
])
def test_bad_options_are_refused_in_one_line(args, message, anita_run, tmp_path):
    proc = cli(str(anita_run), *args, verb="chat", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_what_is_not_a_finished_model_is_refused_by_name(anita_run, tmp_path):
    missing = cli(str(tmp_path / "nope"), "--prompt", "x", verb="chat", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = cli(str(tmp_path / "empty"), "--prompt", "x", verb="chat", cwd=tmp_path)
    assert empty.returncode == 2 and "neither a llamantino run" in empty.stderr
    # written, never run
    written = run_dir_of(ok(cli("launcher=dry", f"run.output_root={tmp_path / 'dry'}", cwd=tmp_path)))
    unfinished = cli(str(written), "--prompt", "x", verb="chat", cwd=tmp_path)
    assert unfinished.returncode == 2 and "has not finished (state: not started)" in unfinished.stderr
    # an eval run names the model it evaluated
    evaluated = run_dir_of(ok(cli("stage=eval", "eval=local_smoke", f"run.input_model={anita_run}",
                                  f"run.output_root={tmp_path / 'eval'}", cwd=tmp_path)))
    refused = cli(str(evaluated), "--prompt", "x", verb="chat", cwd=tmp_path)
    assert refused.returncode == 2 and "is an eval run" in refused.stderr and str(anita_run) in refused.stderr
    for proc in (missing, empty, unfinished, refused):
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
