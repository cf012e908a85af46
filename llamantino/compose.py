"""Compose configs outside ``python -m llamantino``: pipeline steps, recipe import, tests, benchmarks."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from llamantino.errors import ConfigError
from llamantino.paths import CONF_DIR
from llamantino.schema import register_configs


def check_run_name(name: str) -> str:
    """A run name becomes a folder name: any characters but path separators and dot-names."""
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise ConfigError(f"run.name={name!r} cannot be a folder name: no '/', not empty, not starting with '.'")
    return name


def default_name(cfg: dict) -> str:
    """``<pipeline>-<model>``, ``<stage>-<model>-<data>``, ``eval-<model>-<eval>``, ``merge-<model>``."""
    if cfg["pipeline"]:
        return f"{cfg['pipeline']['name']}-{cfg['model']['name']}"
    task = cfg["stage"]["task"]
    last = cfg["eval"]["name"] if task == "eval" else (None if task == "merge" else cfg["data"]["name"])
    return "-".join(part for part in (cfg["stage"]["name"], cfg["model"]["name"], last) if part)


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python data (what the renderers read), run name filled in."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain["run"]["name"] = check_run_name(plain["run"]["name"] or default_name(plain))
    return plain


def compose_config(overrides: list[str]) -> dict:
    """Compose ``conf/config.yaml`` with Hydra overrides, inside or outside a running Hydra app."""
    register_configs()
    if not GlobalHydra.instance().is_initialized():
        # Initialised once per process and kept: later compositions reuse the search path.
        initialize_config_dir(config_dir=str(CONF_DIR))
    return to_plain(compose(config_name="config", overrides=list(overrides)))
