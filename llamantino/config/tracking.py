"""What the experiment trackers are told about a run, and whether they can work where it starts.

One place for the rules every tracker shares: the command's overrides as ``key: value`` pairs
(MLflow tags, TensorBoard HParams), tags within each tracker's limits, the run's name and group
(unique per sweep point and pipeline step), the default MLflow store, and the check made before
anything is written that the tracker's package (and, for W&B online, a login) is there.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from llamantino.errors import ConfigError

#: Overrides that are no property of the experiment: the tracker's settings, Hydra's, the launcher, machine paths,
#: the cluster's settings and the job's environment (which may hold secrets).
UNTRACKED_PREFIXES = ("tracking", "hydra.", "launcher", "run.output_root", "run.input_model", "run.input_adapter",
                      "hardware.storage", "hardware.slurm", "hardware.container")
#: MLflow's tag and param keys: alphanumerics, underscores, dashes, periods, spaces and slashes.
_MLFLOW_KEY_CHAR = re.compile(r"[^0-9A-Za-z_\-. /]")
MLFLOW_KEY_MAX = 250
MLFLOW_VALUE_MAX = 500  # a tag value may be longer (8000); an override longer than this says nothing more
WANDB_TAG_MAX = 64  # W&B refuses longer tags
#: The tracker packages a run needs in the job's environment, and how to install them.
PACKAGES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}
INSTALL = "pip install 'llamantino[tracking]'"
WANDB_HOST = "api.wandb.ai"


def override_pairs(overrides: list[str]) -> dict[str, str]:
    """The command's ``key=value`` overrides that describe the experiment, as legal MLflow keys and
    bounded values: ``stage.learning_rate=2e-4`` -> ``{"stage.learning_rate": "2e-4"}``, a group choice
    ``model=tiny_llama`` -> ``{"model": "tiny_llama"}``; the tracker's settings, Hydra's and paths are left out."""
    pairs: dict[str, str] = {}
    for override in overrides:
        key, sep, value = str(override).lstrip("+~").partition("=")
        if not sep or key.startswith(UNTRACKED_PREFIXES):
            continue
        key = _MLFLOW_KEY_CHAR.sub("_", key)[:MLFLOW_KEY_MAX]
        if key:
            pairs[key] = _printable(value)[:MLFLOW_VALUE_MAX]
    return pairs


def _printable(text: str) -> str:
    """A value safe in an environment variable and a YAML scalar: control characters become spaces."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", str(text)).strip()


def mlflow_tags(base: dict[str, str], overrides: list[str], user_tags: list[str]) -> dict[str, str]:
    """MLflow tags: the run's own (model, data, stage, commit, name, group), the overrides as pairs,
    the user's ``tracking.tags`` (``key:value`` or a bare word, kept as ``<word>: ""``)."""
    tags = {**base, **override_pairs(overrides)}
    for tag in user_tags:
        key, _, value = str(tag).partition(":")
        key = _MLFLOW_KEY_CHAR.sub("_", key.strip())[:MLFLOW_KEY_MAX]
        if key:
            tags[key] = _printable(value)[:MLFLOW_VALUE_MAX]
    return tags


def wandb_tags(base: dict[str, str], overrides: list[str], user_tags: list[str]) -> list[str]:
    """W&B tags (a comma-separated WANDB_TAGS): ``key:value`` of the run's own and of the overrides, the
    user's tags; each at most 64 characters, no commas, each once."""
    tags = [f"{key}:{value}" for key, value in {**base, **override_pairs(overrides)}.items()]
    tags += [str(tag) for tag in user_tags]
    cleaned = [_printable(tag).replace(",", ";")[:WANDB_TAG_MAX] for tag in tags]
    return list(dict.fromkeys(tag for tag in cleaned if tag))


def tracking_identity(run_name: str, run_dir: Path) -> tuple[str, str]:
    """(the run's name, its group) in a tracker, from where llamantino writes it: a pipeline step
    (``<root>/pipelines/<pipeline>/<step>``, run.name ``<pipeline>-<step>``) is grouped by its pipeline;
    a sweep point (``<sweep dir>/<NNN>``) by ``<run.name>-<sweep dir>``, its name ending in the point;
    a single run (``<root>/<run.name>/<time>``) by its run name, its name ending in its time."""
    here, parent = run_dir.name, run_dir.parent.name
    if run_name.startswith(f"{parent}-"):
        return run_name, parent
    group = run_name if parent == run_name else f"{run_name}-{parent}"
    return f"{group}-{here}", group


def default_mlflow_uri(output_root: Path) -> str:
    """The MLflow store when ``tracking.uri`` is unset: one SQLite file under the runs' storage, so every run,
    sweep point and pipeline step under that root lands in one store (``mlflow ui --backend-store-uri``)."""
    return f"sqlite:///{Path(output_root).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str | None) -> None:
    """``tracking.uri``: an MLflow tracking server (http, https) or a SQLite store (sqlite:///<file>)."""
    if uri is None:
        return
    scheme = urlparse(uri).scheme
    if scheme == "file" or (not scheme and uri):
        raise ConfigError(f"tracking.uri={uri!r}: MLflow 3 no longer writes folder stores (file:, a plain path); "
                          "use a SQLite file, tracking.uri=sqlite:////abs/path/mlflow.db, a server, "
                          "tracking.uri=http://host:5000, or leave it unset (<run.output_root>/mlflow.db)")
    if scheme not in ("http", "https", "sqlite") or (scheme == "sqlite" and not uri.startswith("sqlite:///")):
        raise ConfigError(f"tracking.uri={uri!r} must be an MLflow server (http://host:port, https://...) or a "
                          "SQLite file (sqlite:////abs/path/mlflow.db)")
    if re.search(r"[\s\"'`$\\]", uri):
        raise ConfigError(f"tracking.uri={uri!r} contains a space, quote, backslash or '$'; percent-encode them")


def package_missing(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is None
    except (ImportError, ValueError):  # a broken install counts as none
        return True


def wandb_logged_in() -> bool:
    """Whether W&B has a key here: WANDB_API_KEY, or a ``wandb login`` (the netrc entry of its host)."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or f"https://{WANDB_HOST}").hostname or WANDB_HOST
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def check_tracker_ready(tracker: str, online: bool) -> None:
    """Refuse, before anything is written, a tracker whose package is not installed here (the job runs in
    this environment) or W&B online without a key (it would stop the training with a UsageError)."""
    package = PACKAGES.get(tracker)
    if package and package_missing(package):
        raise ConfigError(f"tracking={tracker} needs the {package} package, which is not installed: {INSTALL} "
                          f"(or pip install {package}), or choose tracking=tensorboard or tracking=none")
    if tracker == "wandb" and online and not wandb_logged_in():
        raise ConfigError("tracking=wandb online needs a W&B API key: set WANDB_API_KEY (or run `wandb login`), or "
                          "write the run offline with tracking.mode=offline and upload it later with "
                          "`python -m llamantino sync <run>`")
