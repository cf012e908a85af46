"""Compose configs outside ``python -m llamantino``: pipeline steps, recipe import, tests, benchmarks."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from llamantino.paths import CONF_DIR
from llamantino.schema import register_configs


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python data (what the renderers read)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def compose_config(overrides: list[str]) -> dict:
    """Compose ``conf/config.yaml`` with Hydra overrides, inside or outside a running Hydra app."""
    register_configs()
    if GlobalHydra.instance().is_initialized():
        return to_plain(compose(config_name="config", overrides=list(overrides)))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return to_plain(compose(config_name="config", overrides=list(overrides)))
