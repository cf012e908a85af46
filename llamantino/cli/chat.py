"""``llamantino chat <run, pipeline or model folder>``: talk to a trained model.

In the terminal by default: the run's own template and system prompt, the conversation kept from
turn to turn, each answer streamed as it is generated, greedy (reproducible) unless
``--temperature`` is above 0. ``--prompt TEXT`` (or text piped on stdin) answers once and exits,
for scripts. ``--web`` serves a chat page instead (on 127.0.0.1 unless ``--host`` says otherwise;
from a laptop, reach a compute node's page through an SSH tunnel: ``ssh -L 7860:<node>:7860 <login
node>``, then open http://127.0.0.1:7860). A pipeline talks through its last model; an adapter run
loads its base and the adapter; a release, what it released.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llamantino.argparsing import ArgumentParser
from llamantino.errors import ConfigError


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="a finished run, a pipeline (its last model), a release, or a "
                                                  "model folder")
    parser.add_argument("--system", default=None, help="the system prompt (default: the one the model was trained "
                                                       "with; '' for none)")
    parser.add_argument("--prompt", default=None, help="answer this once and exit (also: text piped on stdin)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sampling")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling with --temperature (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="at most this many tokens per answer")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--web", action="store_true", help="serve a chat page instead of the terminal chat")
    parser.add_argument("--host", default="127.0.0.1", help="--web: the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="--web: the port (default 7860; 0: any free port)")
    args = parser.parse_args(argv)
    from llamantino.chat.model import sampling_options

    sampling = sampling_options(args.temperature, args.top_p, args.max_new_tokens)
    if args.web and args.prompt is not None:
        raise ConfigError("--web and --prompt do not go together: --prompt answers once in the terminal")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port={args.port} must be between 0 and 65535")

    from llamantino.chat.model import ChatModel, resolve_target

    target = resolve_target(args.target)  # refused before anything is loaded
    port = args.port
    if args.web:  # a taken port or an unknown address, said before the model loads
        from llamantino.chat.web import claim_port

        port = claim_port(args.host.strip("[]"), args.port)
    prompt = args.prompt
    if prompt is None and not args.web and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise ConfigError("chat: stdin is not a terminal and held no text; pass --prompt TEXT or type in a terminal")
    print(f"llamantino chat: loading {target.label} from {target.model_dir}", file=sys.stderr, flush=True)
    model = ChatModel(target, args.device)
    if args.web:
        from llamantino.chat.web import serve

        serve(model, host=args.host, port=port, system=args.system, sampling=sampling)
        return 0
    from llamantino.chat.terminal import answer_once, converse

    if prompt is not None:
        answer_once(model, prompt, args.system, sampling)
        return 0
    converse(model, args.system, sampling)
    return 0
