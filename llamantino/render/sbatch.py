"""Render sbatch scripts from the editable Jinja templates in ``slurm/``: a pure function.

Shell safety is structural, not a matter of care: the Jinja environment *finalizes* every
``{{ value }}`` with ``shlex.quote`` unless the value was built here as a :class:`Shell` fragment,
and the only fragments built here are checked names, numbers and ``"${VAR}"`` references taken
from config fields the schema declares ``SHELL_EXPRESSION`` (the storage roots, the container).
A run name like ``x$(touch pwned)`` and a tag like ``$HF_TOKEN`` therefore reach the script as
``'x$(touch pwned)'`` and ``'$HF_TOKEN'``: every other environment value is literal text. ``#SBATCH``
lines are parsed by sbatch, not by a shell, so their values must match a strict character set
(job names are sanitised, everything else is refused with the key that holds it).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llamantino.errors import ConfigError
from llamantino.paths import SLURM_DIR
from llamantino.config.schema import LlamantinoConfig
from llamantino.records.rundir import RunDir

# Whole-string patterns (fullmatch), ASCII only: "\d" would take other scripts' digits, "$" a trailing newline.
_WORD = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)
_TIME = re.compile(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", re.ASCII)
_MEM = re.compile(r"\d+[KMGT]?", re.ASCII)
_GRES = re.compile(r"[A-Za-z0-9:_.-]+", re.ASCII)
_DIRECTIVE = re.compile(r"--[a-z][a-z-]*(=[A-Za-z0-9._,:%@/+=\[\]-]+)?", re.ASCII)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class JobShape:
    """What a stage's job asks the scheduler for, and how it starts its processes."""

    nodes: int
    processes_per_node: int
    gpus_per_node: int
    cpus_per_node: int
    mem: str | None
    distributed: bool  # torchrun across the allocation's nodes, rather than one plain process
    requeue: bool  # checkpoint and requeue at the time limit (training only)
    signal_lead_s: int = 0  # requeue: USR1 this long before the time limit


class Shell(str):
    """A fragment built by this module that may reach the script unquoted."""


def shell_value(value: str) -> Shell:
    """Quote ``value`` for bash, keeping ``$VAR``/``${VAR}`` references live and nothing else.

    ``${WORK}/hf_home`` becomes ``"${WORK}"'/hf_home'``: the variable expands at job time, while
    ``$(...)``, backticks, ``;`` and quotes stay literal text.
    """
    parts, last = [], 0
    for match in _ENV_REF.finditer(value):
        if match.start() > last:
            parts.append(shlex.quote(value[last:match.start()]))
        parts.append('"${%s}"' % (match.group(1) or match.group(2)))
        last = match.end()
    if last < len(value) or not parts:
        parts.append(shlex.quote(value[last:]))
    return Shell("".join(parts))


def shell_field(section, name: str) -> list[Shell] | Shell | None:
    """A config value that is a shell expression, its ``$VAR``s kept live: only for fields whose schema
    declaration says so (``SHELL_EXPRESSION``); asking for any other field is a bug."""
    declared = next((f for f in dataclasses.fields(section) if f.name == name), None)
    if declared is None or not declared.metadata.get("shell"):
        raise TypeError(f"{type(section).__name__}.{name} is not declared a shell expression")
    value = getattr(section, name)
    if value is None:
        return None
    return [shell_value(str(item)) for item in value] if isinstance(value, list) else shell_value(str(value))


def _env_pairs(cfg: LlamantinoConfig, env: dict) -> list[tuple[Shell, str]]:
    """``export`` pairs: names checked; values literal text (quoted on output), except a variable whose value
    is a storage field declared a shell expression and exported under that name (HF_HOME: ``${WORK}/hf_home``)."""
    storage = cfg.hardware.storage
    live = {f.metadata["exported_as"]: f.name for f in dataclasses.fields(storage) if f.metadata.get("exported_as")}
    pairs = []
    for name, value in env.items():
        field_name = live.get(name)
        shell = field_name is not None and getattr(storage, field_name) == value
        pairs.append((Shell(_checked(_ENV_NAME, name, "hardware.slurm.env")),
                      shell_field(storage, field_name) if shell else str(value)))
    return pairs


def _finalize(value):
    if isinstance(value, Shell):
        return value
    if isinstance(value, bool):
        raise TypeError("booleans are not rendered into scripts; test them with {% if %}")
    return shlex.quote(str(value))


@lru_cache(maxsize=None)
def _environment():
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(loader=FileSystemLoader(str(SLURM_DIR)), finalize=_finalize,
                               undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                               lstrip_blocks=True, autoescape=False)
    # A comment runs to the end of its line: text without line breaks cannot escape it.
    env.filters["comment"] = lambda text: Shell(re.sub(r"[\r\n]+", " ", str(text)))
    env.filters["words"] = lambda items: Shell(" ".join(shlex.quote(str(item)) for item in items))
    return env


def _checked(pattern: re.Pattern, value, key: str) -> str:
    value = str(value)
    if not pattern.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is not valid in an #SBATCH line (allowed: {pattern.pattern})")
    return value


def job_name(run_name: str) -> str:
    """``llamantino-<run name>`` reduced to characters sbatch and shells take literally."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"llamantino-{run_name}")[:120]


def directives(cfg: LlamantinoConfig, shape: JobShape, array: str | None = None) -> list[Shell]:
    """The ``#SBATCH`` options of a job, each checked against a strict character set."""
    hw, slurm, launcher = cfg.hardware, cfg.hardware.slurm, cfg.launcher
    lines = [f"--job-name={job_name(cfg.run.name)}",
             f"--nodes={int(shape.nodes)}", "--ntasks-per-node=1", f"--cpus-per-task={int(shape.cpus_per_node)}"]
    gres = slurm.gres or (f"gpu:{int(shape.gpus_per_node)}" if hw.gpu and shape.gpus_per_node else None)
    if gres:
        lines.append(f"--gres={_checked(_GRES, gres, 'hardware.slurm.gres')}")
    if shape.mem:
        lines.append(f"--mem={_checked(_MEM, shape.mem, 'hardware.slurm.mem')}")
    lines.append(f"--time={_checked(_TIME, cfg.time_limit, 'launcher.time' if launcher.time else 'hardware.slurm.time')}")
    for key in ("partition", "qos", "account"):
        value = getattr(slurm, key)
        if value:
            lines.append(f"--{key}={_checked(_WORD, value, f'hardware.slurm.{key}')}")
    if slurm.exclusive:
        lines.append("--exclusive")
    lines.append("--output=logs/%x-%A_%a.out" if array else "--output=logs/%x-%j.out")
    lines.append("--open-mode=append")
    if shape.requeue:
        lines += ["--requeue", f"--signal=B:USR1@{int(shape.signal_lead_s)}"]
    if array:
        lines.append(f"--array={array}")
    for extra in slurm.extra_directives:
        lines.append(_checked(_DIRECTIVE, extra, "hardware.slurm.extra_directives"))
    return [Shell(line) for line in lines]


def script_context(cfg: LlamantinoConfig, command: list[str], shape: JobShape, *, job_env: dict,
                   run_dirs: list[str] | None = None, array: str | None = None, header: list[str] = ()) -> dict:
    """Everything the template reads; strings that are not Shell fragments get quoted on output.

    ``job_env`` (telemetry off, offline flags, tracker tags) is exported first, then the hardware's own
    ``slurm.env`` (NCCL settings), all as literal text (:func:`_env_pairs`).
    """
    slurm = cfg.hardware.slurm
    env = _env_pairs(cfg, {**job_env, **slurm.env})
    return {
        "header": list(header),
        "directives": directives(cfg, shape, array),
        "modules": list(slurm.modules),
        "env": env,
        "offline": bool(cfg.hardware.offline),
        "distributed": shape.distributed,
        "stage_args": list(command),
        "nodes": int(shape.nodes),
        "nproc_per_node": int(shape.processes_per_node),
        "rdzv_port": int(slurm.rdzv_port),
        "requeue": shape.requeue,
        "signal_lead_s": int(shape.signal_lead_s),
        "run_dirs": run_dirs,
        "container": container_command(cfg),
    }


def container_command(cfg: LlamantinoConfig) -> Shell | None:
    """``apptainer exec [--nv] [--bind ...] <image>``, each word quoted with ``$VAR``s kept live
    (``$WORK/images/x.sif``), or None without ``hardware.container``."""
    container = cfg.hardware.container
    if container is None:
        return None
    argv = [shlex.quote(str(container.runtime)), "exec"] + (["--nv"] if cfg.hardware.gpu else [])
    for bind in shell_field(container, "binds"):
        argv += ["--bind", bind]
    return Shell(" ".join(argv + [shell_field(container, "image")]))


def render_sbatch(template: str, context: dict) -> str:
    """Render ``slurm/<template>`` with a context from :func:`script_context`."""
    from jinja2 import TemplateNotFound

    try:
        return _environment().get_template(template).render(**context)
    except TemplateNotFound:
        available = ", ".join(sorted(p.name for p in SLURM_DIR.glob("*.j2")))
        raise ConfigError(f"launcher.template={template!r} is not in slurm/ (available: {available})") from None


def prepare_script(cfg: LlamantinoConfig, step: str, entry: str, key: str, tasks: int = 1,
                   module: str = "llamantino.job.prepare") -> str:
    """The sbatch text of one corpus preparation step (``PreparedDir.STEPS``); the steps in
    ``PreparedDir.ARRAY_STEPS`` are arrays of ``tasks``."""
    from llamantino.records.rundir import PreparedDir

    array = step in PreparedDir.ARRAY_STEPS
    rows = step == PreparedDir.ROWS_STEP  # one process with hardware.prepare.cpus workers
    slurm, prepare = cfg.hardware.slurm, cfg.hardware.prepare
    download = step == "fetch" and not prepare.network and prepare.download_partition
    partition = prepare.download_partition if download else (prepare.partition or slurm.partition)
    qos = prepare.download_qos if download else (prepare.qos or (slurm.qos if not prepare.partition else None))
    time = prepare.download_time if download else prepare.time
    cpus = prepare.cpus if array or rows else 1
    lines = [f"--job-name=llamantino-prepare-{key[:12]}-{step}", "--nodes=1", "--ntasks=1",
             f"--cpus-per-task={int(cpus)}",
             f"--time={_checked(_TIME, time, 'hardware.prepare.download_time' if download else 'hardware.prepare.time')}"]
    if prepare.mem and (array or rows):
        lines.append(f"--mem={_checked(_MEM, prepare.mem, 'hardware.prepare.mem')}")
    for name, value, key_name in (("partition", partition, "hardware.prepare.partition"),
                                  ("qos", qos, "hardware.prepare.qos"),
                                  ("account", slurm.account, "hardware.slurm.account")):
        if value:
            lines.append(f"--{name}={_checked(_WORD, value, key_name)}")
    lines.append("--output=logs/%x-%A_%a.out" if array else "--output=logs/%x-%j.out")
    lines.append("--open-mode=append")
    if array:
        lines.append(f"--array=0-{int(tasks) - 1}")
    env = {"TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": str(int(cpus)), "PYTHONUNBUFFERED": "1"}
    if cfg.hardware.storage.hf_home:
        env["HF_HOME"] = cfg.hardware.storage.hf_home
    if rows:  # Axolotl reads hub sources itself: offline where the cluster is (a download job fetched them)
        env["AXOLOTL_DO_NOT_TRACK"] = "1"
        offline = cfg.hardware.offline
    else:
        offline = step != "fetch" or (cfg.hardware.offline and not prepare.network and not prepare.download_partition)
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    pairs = _env_pairs(cfg, {**slurm.env, **env})
    context = {"header": [f"llamantino {'rows' if rows else 'corpus'} {key}: {step}"], "directives": [Shell(line) for line in lines],
               "modules": list(slurm.modules), "env": pairs, "entry": entry,
               "command": [module] if module != "llamantino.job.prepare" else [module, step]}
    return render_sbatch("prepare.sbatch.j2", context)


def push_script(cfg: LlamantinoConfig, run_dir, repo_id: str, private: bool, revision: str | None) -> str:
    """The sbatch text of a push job: one process on the partition with network (the download
    partition on offline clusters). HF_TOKEN reaches it through sbatch's environment, not this file."""
    slurm, prepare = cfg.hardware.slurm, cfg.hardware.prepare
    download = cfg.hardware.offline and not prepare.network
    partition = prepare.download_partition if download else slurm.partition
    qos = prepare.download_qos if download else slurm.qos
    time = prepare.download_time if download else prepare.time
    lines = ["--job-name=llamantino-push", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
             f"--time={_checked(_TIME, time, 'hardware.prepare.download_time' if download else 'hardware.prepare.time')}"]
    for name, value, key_name in (("partition", partition, "hardware.prepare.download_partition"),
                                  ("qos", qos, "hardware.prepare.download_qos"),
                                  ("account", slurm.account, "hardware.slurm.account")):
        if value:
            lines.append(f"--{name}={_checked(_WORD, value, key_name)}")
    lines += [f"--output={RunDir.LOGS}/%x-%j.out", "--open-mode=append"]
    env = {"PYTHONUNBUFFERED": "1"}
    if cfg.hardware.storage.hf_home:
        env["HF_HOME"] = cfg.hardware.storage.hf_home
    command = ["llamantino.job.push", "--repo-id", repo_id] + (["--private"] if private else []) + \
        (["--revision", revision] if revision else [])
    context = {"header": [f"llamantino push of {Path(run_dir).name} to {repo_id}"],
               "directives": [Shell(line) for line in lines], "modules": list(slurm.modules),
               "env": _env_pairs(cfg, {**slurm.env, **env}), "entry": str(run_dir), "command": command}
    return render_sbatch("prepare.sbatch.j2", context)


def search_step_script(cfg: LlamantinoConfig, study_dir) -> str:
    """The sbatch text of a study's tell-and-ask job: one CPU process on the preparation partition
    that tells Optuna the finished batch's results, then asks and submits the next batch (it renders
    and checks the trials with Axolotl, so it gets the preparation jobs' memory)."""
    slurm, prepare = cfg.hardware.slurm, cfg.hardware.prepare
    lines = [f"--job-name={job_name(cfg.run.name)}-search", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
             f"--time={_checked(_TIME, prepare.time, 'hardware.prepare.time')}"]
    if prepare.mem:
        lines.append(f"--mem={_checked(_MEM, prepare.mem, 'hardware.prepare.mem')}")
    qos = prepare.qos or (slurm.qos if not prepare.partition else None)
    for name, value, key_name in (("partition", prepare.partition or slurm.partition, "hardware.prepare.partition"),
                                  ("qos", qos, "hardware.prepare.qos"),
                                  ("account", slurm.account, "hardware.slurm.account")):
        if value:
            lines.append(f"--{name}={_checked(_WORD, value, key_name)}")
    lines += ["--output=logs/%x-%j.out", "--open-mode=append"]
    env = {"PYTHONUNBUFFERED": "1", "AXOLOTL_DO_NOT_TRACK": "1"}
    if cfg.hardware.storage.hf_home:
        env["HF_HOME"] = cfg.hardware.storage.hf_home
    if cfg.hardware.offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    context = {"header": [f"llamantino search: tell the finished batch, ask and submit the next ({Path(study_dir).name})"],
               "directives": [Shell(line) for line in lines], "modules": list(slurm.modules),
               "env": _env_pairs(cfg, {**slurm.env, **env}), "entry": str(study_dir),
               "command": ["llamantino", "search", "--step"]}
    return render_sbatch("prepare.sbatch.j2", context)
