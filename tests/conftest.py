"""Shared helpers: the commands in process (or in a subprocess), in-process composition, the tiny model.

``cli()`` runs a command the way a user would, but in this process: argument parsing, Hydra, the
one error handler, stdout and stderr, the exit code. Training and evaluation still run in their
own processes (the local launcher starts them), so end-to-end tests stay end to end; only the
~10 s import of Axolotl is paid once. ``cli(..., subprocess=True)`` starts a fresh interpreter
(tests/test_entry_points.py does that once per command).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import time
import subprocess as _subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable
# Each xdist worker trains in its own processes: threads beyond the worker's share of the cores
# make OpenMP spin against the other workers (3 s a step instead of 0.3 on two cores).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("MKL_NUM_THREADS", _threads)
# What jobs run on compute nodes (module -> function); everything a user types goes through the one command.
from llamantino.job import JOB_COMMANDS  # noqa: E402
ENTRY_POINTS = {"llamantino": "llamantino.cli.main:run",
                **{f"llamantino.job.{name}": f"llamantino.job.{name}:main" for name in JOB_COMMANDS}}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Keep ``xdist_group`` tests on one worker under pytest 9: pytest-xdist 3.8 marks a group by
    renaming ``item._nodeid``, which pytest 9 no longer reads (its node ids live in ``item._id``), so
    the groups were silently ignored and the trained runs they share were trained once per worker."""
    if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
        return
    for item in items:
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            grouped = f"{item.nodeid}@{'_'.join(groups)}"
            node_id = getattr(item, "_id", None)
            if node_id is not None and not isinstance(node_id, str):
                item._id = type(node_id).parse(grouped)
            else:
                item._nodeid = grouped
    # A group that mostly waits (SLURM forgetting a job after MinJobAge) starts first, so its minutes of
    # waiting overlap the other tests instead of following them. Every worker orders its items alike.
    items[:] = sorted(items, key=lambda item: not item.nodeid.endswith(WAITING_FIRST))


WAITING_FIRST = ("@slurm_truth",)


@contextlib.contextmanager
def _environment(cwd: Path, env: dict | None):
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    os.chdir(cwd)
    os.environ.update(env or {})
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def cli(*args: str, cwd: Path, verb: str | None = None, module: str = "llamantino", timeout: int = 900,
        env: dict | None = None, subprocess: bool = False):
    """Run ``python -m <module> [<verb>] <args>``; returns a CompletedProcess (returncode, stdout, stderr)."""
    if verb is not None:
        args = (verb, *args)
    if subprocess or (env and "PYTHONPATH" in env):
        return _subprocess.run([PYTHON, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                               timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    from llamantino.errors import entry

    module_name, function = ENTRY_POINTS[module].split(":")
    main = getattr(importlib.import_module(module_name), function)
    out, err = io.StringIO(), io.StringIO()
    with _environment(cwd, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = entry(main, list(args))
        except SystemExit as exc:  # argparse's usage errors and --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return _subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def command(name: str) -> dict:
    """cli() keywords for a name in a test table: a verb of the one command, or a module (the main
    command ``llamantino``, a job module)."""
    from llamantino.cli.main import VERBS

    return {"verb": name} if name in VERBS else {"module": name}


def run_dir_of(proc) -> Path:
    """The ``run_dir: <path>`` the CLI prints as its last stdout line."""
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("run_dir: "), f"no run_dir line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return Path(lines[-1].split(": ", 1)[1])


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something true; fail saying ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from llamantino.inputs.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="session")
def default_job(tmp_path_factory):
    """(the command's CompletedProcess, run directory) of the embedded default job, run once per
    session: the tests of what it prints and of talking to its model share it (xdist_group "chat")."""
    folder = tmp_path_factory.mktemp("default-job")
    proc = ok(cli(cwd=folder))
    return proc, run_dir_of(proc)


#: The first rows of the sample instructions: few enough that the tiny model learns their answers in
#: 40 short steps, so each template's model can be asked one of them.
CHAT_ROWS = 8


#: The tiny twin whose tokenizer (and model) each template family trains with: the tiny Llama's
#: tokenizer holds both Llama formats' tokens; an instruction template ("any") runs on it too.
FAMILY_TWINS = {"llama2": "tiny_llama", "llama3": "tiny_llama", "any": "tiny_llama", "mixtral": "tiny_mixtral",
                "phi3": "tiny_phi3", "qwen2": "tiny_qwen2", "gemma2": "tiny_gemma2"}


def twin_of(template: str) -> str:
    """The tiny model builder of ``template``'s family (``conf/model/<builder>.yaml``)."""
    from llamantino_plugin.templates import template_info

    return FAMILY_TWINS[template_info(template).family]


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory):
    """``chat_run(template, model="tiny_llama")``: a tiny model (``model``: its option, a tiny twin)
    instruction-tuned in ``template`` on CHAT_ROWS sample rows until it answers them (once per
    template and model per session; tests using it share xdist_group "chat")."""
    from llamantino.paths import SAMPLES_DIR

    made: dict[tuple[str, str], Path] = {}
    data = tmp_path_factory.mktemp("chat-data") / "istruzioni.jsonl"
    data.write_text("".join((SAMPLES_DIR / "it_istruzioni.jsonl").read_text().splitlines(keepends=True)[:CHAT_ROWS]))

    def trained(template: str, model: str = "tiny_llama") -> Path:
        if (template, model) not in made:
            folder = tmp_path_factory.mktemp(f"chat-{template}" if model == "tiny_llama" else f"chat-{template}-{model}")
            choice = [] if model == "tiny_llama" else [f"model={model}"]  # the default job's model
            made[template, model] = run_dir_of(ok(cli(*choice, f"prompt.template={template}", f"data.path={data}",
                                                      "stage.num_epochs=40", f"stage.micro_batch_size={CHAT_ROWS}",
                                                      f"run.output_root={folder}", cwd=folder)))
        return made[template, model]

    return trained


@pytest.fixture
def compose():
    """Compose conf/ in-process: ``compose("stage=dpo", "model=llama3_8b")`` -> the typed config."""
    from llamantino.config.compose import compose_config

    return lambda *overrides: compose_config(list(overrides))


def build(cfg, run_dir: Path, overrides=(), known=None, validate=True):
    """Build a run with its stage type (and its launcher's files), writing nothing."""
    from llamantino.launchers import launcher_for
    from llamantino.stages import stage_for

    run = stage_for(cfg).build(cfg, run_dir, overrides=list(overrides), choices={}, validate=validate,
                               known_runs=known)
    launcher_for(cfg).prepare(run)
    return run
