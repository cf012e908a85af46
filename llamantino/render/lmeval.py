"""The lm-evaluation-harness commands of an eval job, rendered from its plan and checked with the
installed harness's (and accelerate's) own argument parsers before anything is written."""

from __future__ import annotations

import sys

from llamantino.errors import ConfigError
from llamantino.records.rundir import RunDir


# The model arguments an eval job passes to lm-eval's ``hf`` model, by name. lm-eval reads
# ``--model_args`` as ``key=value,key=value`` with no escaping: a value holding ``,`` would add an
# argument of its own (``revision=main,trust_remote_code=True`` runs the model's code).
MODEL_ARGS = ("pretrained", "revision", "peft", "dtype", "add_bos_token", "parallelize")


def model_args_text(args: dict[str, str]) -> str:
    """``--model_args`` of ``args``; a value that lm-eval would split into further arguments is refused."""
    for name, value in args.items():
        if name not in MODEL_ARGS or not value or "," in value or "=" in value:
            raise ConfigError(f"lm-eval model argument {name}={value!r}: a value may not hold ',' or '=' (lm-eval "
                              "would read further model arguments from it, e.g. trust_remote_code=True); use a plain "
                              "hub id, revision or path")
    return ",".join(f"{name}={value}" for name, value in args.items())


def checked_model_args(text: str) -> str:
    """``--model_args`` as read back from an eval plan: only the arguments llamantino writes, once each."""
    names = [item.split("=", 1)[0] for item in str(text).split(",")]
    if any(name not in MODEL_ARGS for name in names) or len(set(names)) != len(names) or not all(
            "=" in item for item in str(text).split(",")):
        raise ConfigError(f"eval plan model_args={text!r} has arguments llamantino does not write; valid: "
                          f"{', '.join(MODEL_ARGS)}, once each (was eval.json edited?)")
    return text


def lm_eval_argv(plan: dict, group: dict) -> list[str]:
    """The command of one few-shot group; with several processes, under ``accelerate launch``
    (one copy of the model per GPU, lm-eval splitting the requests between them)."""
    argv = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", checked_model_args(plan["model_args"]),
            "--tasks", ",".join(group["tasks"]), "--num_fewshot", str(group["num_fewshot"]),
            "--batch_size", plan["batch_size"], "--device", plan["device"],
            "--output_path", f"{RunDir.EVAL_RESULTS}/fewshot_{group['num_fewshot']}"]
    if plan["include_path"]:
        argv += ["--include_path", plan["include_path"]]
    if plan["limit"] is not None:
        argv += ["--limit", str(plan["limit"])]
    if plan.get("log_samples"):  # eval.log_samples: lm-eval writes samples_<task>_<time>.jsonl beside its results file
        argv.append("--log_samples")
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
