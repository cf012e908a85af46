"""The lm-evaluation-harness commands of an eval job, rendered from its plan and checked with the
installed harness's (and accelerate's) own argument parsers before anything is written."""

from __future__ import annotations

import sys

from llamantino.errors import ConfigError
from llamantino.records.rundir import RunDir


def lm_eval_argv(plan: dict, group: dict) -> list[str]:
    """The command of one few-shot group; with several processes, under ``accelerate launch``
    (one copy of the model per GPU, lm-eval splitting the requests between them)."""
    argv = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", plan["model_args"],
            "--tasks", ",".join(group["tasks"]), "--num_fewshot", str(group["num_fewshot"]),
            "--batch_size", plan["batch_size"], "--device", plan["device"],
            "--output_path", f"{RunDir.EVAL_RESULTS}/fewshot_{group['num_fewshot']}"]
    if plan["include_path"]:
        argv += ["--include_path", plan["include_path"]]
    if plan["limit"] is not None:
        argv += ["--limit", str(plan["limit"])]
    processes = plan.get("processes", 1)
    if processes > 1:
        argv[1:2] = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    return argv


def parse_eval_argv(argv: list[str]) -> None:
    """Parse a command from ``lm_eval_argv`` with the installed harness's (and accelerate's) own
    parsers; a ConfigError names what they refuse."""
    import contextlib
    import io

    from lm_eval._cli.harness import HarnessCLI

    args = argv[1:]
    parsers = []
    if args[:2] == ["-m", "accelerate.commands.launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = args[2:]
        split = launch.index("lm_eval")
        parsers.append(("accelerate launch", launch_command_parser(), launch))
        args = ["-m", "lm_eval", *launch[split + 1:]]
    parsers.append(("lm-eval", HarnessCLI()._parser, ["run", *args[2:]]))
    for name, parser, parsed in parsers:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args(parsed)
        except SystemExit:
            last = (err.getvalue().strip().splitlines() or ["refused"])[-1]
            raise ConfigError(f"the eval job's {name} command does not parse: {last}") from None
