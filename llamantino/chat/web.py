"""``llamantino chat --web``: the same chat as a page in the browser, served by Gradio from this machine.

One model answers one message at a time (the others wait in Gradio's queue); each answer streams
into the page as it is generated. The page names the model, its template, its run and whether it
answers greedily; chat models show the system prompt, prefilled with the one they were trained
with, in a box the user can edit (empty: none). The conversation stays on the machine: no share
link or button, no analytics, Gradio's own font rather than Google's.
"""

from __future__ import annotations

import errno
import html
import ipaddress
import os
import signal
import socket
import sys
import threading

from llamantino.chat.model import ChatModel
from llamantino.errors import ConfigError

TEXT_PART = "text"  # Gradio's type of a message part that holds text (files are other parts)
ADDRESSES = "use 127.0.0.1 (the default), ::1, or 0.0.0.0 (all of this machine's addresses)"


def serve(model: ChatModel, *, host: str, port: int, system: str | None, sampling: dict) -> None:
    """Serve the chat page on ``host``:``port`` (0: any free port) until Ctrl-C or SIGTERM."""
    host = host.strip("[]")  # "[::1]" as typed in a URL
    port = claim_port(host, port)
    if not _is_loopback(host):
        print(f"notice: --host={host} listens beyond this machine: anyone who can reach it on port {port} can talk "
              f"to the model, without a login; keep the default 127.0.0.1 and use an SSH tunnel to stay private",
              file=sys.stderr, flush=True)
    demo = chat_page(model, system, sampling)
    url_host = f"[{host}]" if ":" in host else host
    # Gradio checks its own server over HTTP; a cluster's proxy settings must not take those requests.
    no_proxy = [entry for entry in os.environ.get("NO_PROXY", "").split(",") if entry]
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join([*no_proxy, "localhost", "127.0.0.1", "::1", host])
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            demo.launch(server_name=url_host, server_port=port, share=False, quiet=True, prevent_thread_lock=True,
                        show_error=True, ssr_mode=False, mcp_server=False, theme=_offline_theme())
        except OSError as exc:
            if "Cannot find empty port" not in str(exc):
                raise
            # taken between claim_port and Gradio's own bind
            raise ConfigError(f"--port={port} on {host} was taken as the server started; give another --port, "
                              f"or --port 0 for any free one") from exc
        print(f"llamantino chat: serving {model.target.label} at http://{url_host}:{port}/ (Ctrl-C stops it)",
              flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        demo.close(verbose=False)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def chat_page(model: ChatModel, system: str | None, sampling: dict):
    """The Gradio page (not launched): a header, the chat, and the system prompt box for chat models."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported and when a page is built
    import gradio as gr

    chat = model.kind == "chat"

    def respond(message, history, system_prompt=None):
        answer = ""
        for piece in model.stream(_conversation(history), _text(message), system_prompt if chat else None,
                                  **sampling):
            answer += piece
            yield answer
        if not answer:  # the model ended its turn at once: an empty answer, still a turn of the conversation
            yield ""

    extra = {}
    if chat:
        box = gr.Textbox(model.default_system if system is None else system, label="System prompt",
                         info="What the model was trained with; edit it for the next message, empty: none.",
                         lines=3, max_lines=12, elem_id="system-prompt")
        extra = {"additional_inputs": [box], "additional_inputs_accordion": gr.Accordion("System prompt", open=False)}
    return gr.ChatInterface(respond, title=html.escape(model.target.label), description=_header(model, sampling),
                            # no "share" button: it posts the conversation to Hugging Face
                            chatbot=gr.Chatbot(label="Conversation", buttons=["copy", "copy_all"], scale=1),
                            concurrency_limit=1,  # one model: one answer at a time, the others wait in the queue
                            flagging_mode="never", analytics_enabled=False, **extra)


def _header(model: ChatModel, sampling: dict) -> str:
    """What answers and how, as Markdown (names escaped: a run name must not become markup)."""
    target, kind = model.target, model.kind
    template = f"template <code>{html.escape(target.template)}</code>" if target.template else \
        ("the tokenizer's chat template" if kind == "chat" else "no template (plain text)")
    if target.run_dir is not None:
        origin = f"run <code>{html.escape(target.run_dir.name)}</code>"
    else:
        origin = f"model folder <code>{html.escape(target.model_dir.name)}</code>"
    temperature = sampling.get("temperature", 0.0)
    mode = ("greedy (the same message gets the same answer)" if not temperature
            else f"sampling (temperature {temperature:g}, top-p {sampling.get('top_p', 1.0):g})")
    parts = [template, origin, mode,
             f"at most {sampling.get('max_new_tokens', 256)} new tokens", f"on {html.escape(model.device)}"]
    notes = {"instruction": "An instruction model: each message is answered on its own, without the earlier "
                            "turns; no system prompt is used.",
             "plain": "A plain language model: it continues the text you send; no system prompt is used."}
    return " · ".join(parts) + (f"\n\n{notes[kind]}" if kind in notes else "")


def _text(content) -> str:
    """A message's text: Gradio gives a string, a {"text": ...} dict, or a list of parts (files are skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return (content.get("text") or "") if content.get("type", TEXT_PART) == TEXT_PART else ""
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return ""


def _conversation(history) -> list[dict]:
    """Gradio's message dicts as the model's turns: user and assistant text only, trimmed like the terminal's."""
    turns = []
    for message in history or []:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("user", "assistant"):
            turns.append({"role": role, "content": _text(message.get("content")).strip()})
    return turns


def _offline_theme():
    """Gradio's default look with the font it ships: the default one is fetched from Google's servers."""
    import gradio as gr
    from gradio.themes.utils.fonts import LocalFont

    return gr.themes.Default(font=(LocalFont("IBM Plex Sans"), "ui-sans-serif", "system-ui", "sans-serif"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only "localhost" is known to stay on this machine
        return False


def claim_port(host: str, port: int) -> int:
    """The port to serve on: ``port``, checked free on ``host``, or (0) a free one; a bad address or a
    taken port is one ConfigError (cheap: callers can check before loading the model)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host={host} is not a known address ({exc.strerror}); {ADDRESSES}") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"--host={host} is not an address of this machine; {ADDRESSES}") from exc
            reason = {errno.EADDRINUSE: "is in use by another program",
                      errno.EACCES: "needs root (ports below 1024)"}.get(exc.errno, f"cannot be used ({exc.strerror})")
            raise ConfigError(f"--port={port} on {host} {reason}; give another --port, or --port 0 for any free one"
                              ) from exc
        return probe.getsockname()[1]
