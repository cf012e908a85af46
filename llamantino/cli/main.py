"""``llamantino <verb> ...`` and ``python -m llamantino <verb> ...``: the one command.

A first argument that names a verb runs that verb (the table below); anything else is Hydra
composition, exactly as before: ``python -m llamantino stage=dpo model=llama3_8b``, ``-m`` sweeps,
``pipeline=...``. ``--help`` and ``--version`` are answered here. A bare word that is neither a
verb nor an override is an error naming the verbs.

:data:`VERBS` is the only list of commands: ``--help``, the README's command table and the tests are
generated from it or checked against it.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass

from llamantino.errors import ConfigError, entry


@dataclass(frozen=True)
class Verb:
    module: str  # a module of llamantino.cli with main(argv)
    summary: str
    usage: str  # the arguments after the verb


VERBS: dict[str, Verb] = {
    "status": Verb("llamantino.cli.status", "where every job of a run, pipeline, sweep or study stands: state, step, "
                   "ETA, elapsed, GPU hours, memory", "<run, pipeline, sweep or study dir> [--json] [--watch [SECONDS]]"),
    "runs": Verb("llamantino.cli.runs", "every run, pipeline, sweep and study under an output root, newest first",
                 "[ROOT] [--state STATE] [--json]"),
    "logs": Verb("llamantino.cli.logs", "the logs of a run's current job; -f follows them until the job ends",
                 "<run dir> [-f]"),
    "cancel": Verb("llamantino.cli.cancel", "cancel exactly the queued or running jobs of a run, pipeline, sweep or "
                   "study", "<run, pipeline, sweep or study dir> [--dry-run]"),
    "launch": Verb("llamantino.cli.launch", "start what was written earlier (launcher=dry, submit=false, imports): a run, "
                   "or a pipeline's or sweep's whole job graph; relaunch what failed (resumed) or did not run",
                   "<run, pipeline or sweep dir> [--launcher NAME] [--again] [--dry-run]"),
    "chat": Verb("llamantino.cli.chat", "talk to a trained model: terminal chat, --web page, --prompt for scripts",
                 "<run, pipeline or model dir> [--prompt TEXT] [--system TEXT] [--temperature T] [--web]"),
    "release": Verb("llamantino.cli.release", "write a run's model as a Hub repository (card with scores, licences); "
                    "--push uploads it", "<run or pipeline dir> [--push REPO_ID [--private] [--revision BRANCH]]"),
    "data": Verb("llamantino.cli.data", "the Italian dataset registry: list, check, preview, prepare, pin, cache",
                 "list | check | preview | prepare | pin ..."),
    "recipe": Verb("llamantino.cli.recipe", "share runs as files: list, export, import, diff, presets",
                   "list | export | import | diff | presets ..."),
    "plan": Verb("llamantino.cli.plan", "jobs, GPU hours, wall clock and budget of a stage, pipeline or sweep "
                 "before you submit", "<overrides> [-m] [--mfu F | --calibrate RUN] [--json]"),
    "search": Verb("llamantino.cli.search", "an Optuna study over a sweep's overrides: batches as job arrays chained "
                   "by a tell-and-ask job; --resume, --report", "<overrides and dimensions> --trials N [--batch K] "
                   "| --resume STUDY | --report STUDY"),
    "collect": Verb("llamantino.cli.collect", "runs side by side, labelled by the keys that vary: metrics, curves, "
                    "an eval sweep's scores", "<sweep, study, pipeline or run dir> [--metric M] [--log-y] [--smooth N]"),
    "compare": Verb("llamantino.cli.compare", "eval scores ± standard error by model, differences within two "
                    "standard errors marked", "<eval runs or folders>"),
    "sync": Verb("llamantino.cli.sync", "upload W&B runs trained offline", "<run, pipeline or sweep dir> [--dry-run]"),
    "site": Verb("llamantino.cli.site", "write a hardware option for the cluster this runs on", "init --name N --out DIR"),
}

_BARE_WORD = re.compile(r"[A-Za-z_][\w.-]*\Z")  # not an override (key=value, +key=value, ~key) nor an option


def verb_main(name: str):
    return importlib.import_module(VERBS[name].module).main


def version_text() -> str:
    from llamantino.records.provenance import package_versions

    versions = package_versions()
    stack = ", ".join(f"{name} {versions[name]}" for name in ("axolotl", "torch", "transformers", "hydra-core")
                      if versions.get(name))
    return f"llamantino {versions['llamantino']} (Python {sys.version.split()[0]}; {stack or 'training stack not installed'})"


def help_text() -> str:
    from llamantino.paths import CONF_DIR

    width = max(map(len, VERBS))
    lines = [
        "usage: llamantino [key=value ...]            compose a run (Hydra overrides) and launch it",
        "       llamantino -m key=a,b [key=value ...]  a sweep: every point built and checked, then launched",
        "       llamantino <verb> [arguments]          one of the verbs below",
        "       llamantino --version | --help",
        "",
        "verbs:",
        *(f"  {name.ljust(width)}  {verb.summary}" for name, verb in VERBS.items()),
        "",
        "config groups (group=option):",
    ]
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        options = sorted(p.stem for p in group.glob("*.yaml"))
        lines.append(f"  {group.name}: {', '.join(options)}")
    lines += ["", "`llamantino <verb> --help` explains a verb; `llamantino --cfg job` prints the composed config;",
              "`llamantino --hydra-help` shows Hydra's own options."]
    return "\n".join(lines)


def run(argv: list[str] | None) -> int:
    """Dispatch ``argv`` (the process's own arguments when None) to a verb or to composition."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    if first in ("--version", "-V"):
        print(version_text())
        return 0
    if first in ("--help", "-h"):
        print(help_text())
        return 0
    if first in VERBS:
        return verb_main(first)(argv[1:]) or 0
    if first is not None and _BARE_WORD.match(first):
        raise ConfigError(f"{first!r} is not a verb ({', '.join(VERBS)}) nor an override (key=value); "
                          "see llamantino --help")
    from llamantino.cli.hydra_main import run as compose_and_launch

    return compose_and_launch(argv)


def main() -> None:
    """Console entry point (also ``python -m llamantino``)."""
    raise SystemExit(entry(run))
