"""The terminal chat: a conversation typed line by line, answers streamed as they are generated."""

from __future__ import annotations

import sys

from llamantino.chat.model import ChatModel

HELP = "/reset forgets the conversation, /system TEXT sets the system prompt, /exit or Ctrl-D ends"


def answer_once(model: ChatModel, prompt: str, system: str | None, sampling: dict, out=None,
                history: list[dict] | None = None) -> str:
    """One answer, streamed to ``out`` as it is generated, then a newline (``--prompt``, piped input, each turn)."""
    out = out or sys.stdout
    pieces = []
    for piece in model.stream(history or [], prompt, system, **sampling):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces)


def converse(model: ChatModel, system: str | None, sampling: dict, read=input, out=None) -> None:
    """Turns until /exit or end of input; the history goes with every turn (chat templates)."""
    out = out or sys.stdout
    history: list[dict] = []
    kind = model.kind
    mode = "greedy" if not sampling.get("temperature") else f"temperature {sampling['temperature']:g}"
    shown = model.target.template or ("the tokenizer's chat template" if kind == "chat" else "plain text")
    out.write(f"llamantino chat: {model.target.label} ({shown}, {mode}, {model.device})\n{HELP}\n")
    if kind == "instruction":
        out.write("(an instruction model: each message is answered on its own, without the earlier turns)\n")
    out.flush()
    while True:
        try:
            line = read("tu> ")
        except EOFError:
            out.write("\n")
            return
        message = line.strip()
        if not message:
            continue
        if message in ("/exit", "/quit"):
            return
        if message == "/reset":
            history = []
            out.write("(conversation cleared)\n")
            continue
        if message.startswith("/system"):
            system = message[len("/system"):].strip()
            history = []
            out.write(f"(system prompt set{': ' + system if system else ' to none'}; conversation cleared)\n")
            continue
        answer = answer_once(model, message, system, sampling, out, history)
        if kind == "chat":
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer.strip()}]
