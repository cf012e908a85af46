"""Compose configs: Hydra's DictConfig in, the typed :class:`~llamantino.config.schema.LlamantinoConfig` out.

``python -m llamantino`` composes through ``@hydra.main``; pipeline steps, recipe import, the planner,
tests and benchmarks compose through :func:`compose_config`. Both end in :func:`typed`.
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from llamantino.errors import ConfigError
from llamantino.paths import CONF_DIR
from llamantino.config.schema import LlamantinoConfig, register_configs


def check_run_name(name: str) -> str:
    """A run name becomes a folder name: any characters but path separators and dot-names."""
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise ConfigError(f"run.name={name!r} cannot be a folder name: no '/', not empty, not starting with '.'")
    return name


def default_run_name(cfg: LlamantinoConfig) -> str:
    """``<pipeline>-<model>``, else the stage's name and its ``name_parts`` (``sft-<model>-<data>``,
    ``eval-<model>-<eval>``, ``merge-<model>``)."""
    if cfg.pipeline:
        return f"{cfg.pipeline.name}-{cfg.model.name}"
    return "-".join([cfg.stage.name, *(getattr(cfg, group).name for group in cfg.stage.name_parts)])


def typed(cfg: DictConfig) -> LlamantinoConfig:
    """The composed config as the schema's dataclasses, the run name filled in and checked."""
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, LlamantinoConfig)
    name = check_run_name(config.run.name or default_run_name(config))
    return dataclasses.replace(config, run=dataclasses.replace(config.run, name=name))


def compose_config(overrides: list[str]) -> LlamantinoConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, inside or outside a running Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if not GlobalHydra.instance().is_initialized():
        # Initialised once per process and kept: later compositions reuse the search path.
        initialize_config_dir(config_dir=str(CONF_DIR))
    return typed(compose(config_name="config", overrides=list(overrides)))
