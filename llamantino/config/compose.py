"""Compose configs: Hydra's DictConfig in, the typed :class:`~llamantino.config.schema.LlamantinoConfig` out.

``python -m llamantino`` composes through ``@hydra.main``; pipeline steps, recipe import, the planner,
tests and benchmarks compose through :func:`compose_config`. Both end in :func:`typed`.
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from llamantino.errors import ConfigError
from llamantino.paths import CONF_DIR
from llamantino.config.schema import LlamantinoConfig, folder_name, register_configs


def check_run_name(name: str) -> str:
    """A run name becomes a folder name: its NFC form, without separators, dot-names or invisible characters."""
    return folder_name("run.name", name)


def default_run_name(cfg: LlamantinoConfig) -> str:
    """``<pipeline>-<model>``, else the stage's name and its ``name_parts`` (``sft-<model>-<data>``,
    ``eval-<model>-<eval>``, ``merge-<model>``)."""
    if cfg.pipeline:
        return f"{cfg.pipeline.name}-{cfg.model.name}"
    return "-".join([cfg.stage.name, *(getattr(cfg, group).name for group in cfg.stage.name_parts)])


# Resolvers that read only the config itself or the clock. Every other one is refused before anything
# resolves: oc.env (and the old env) copy the environment, secrets included, into config.yaml, the
# provenance, the recipe header and job scripts; oc.decode and oc.create evaluate text, so they can
# reach oc.env through an escaped string; custom resolvers may read anything.
SAFE_RESOLVERS = ("oc.select", "oc.dict.keys", "oc.dict.values", "now", "hydra")


def _resolvers(text: str) -> list[str]:
    """Names of the resolvers an OmegaConf string calls, nested ones included (escaped ``\\${`` is text)."""
    from omegaconf import grammar_parser
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

    if "${" not in text:
        return []
    try:
        tree = grammar_parser.parse(text)
    except Exception:  # noqa: BLE001 - a malformed interpolation is OmegaConf's to report when it resolves
        return []
    names, pending = [], [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, OmegaConfGrammarParser.ResolverNameContext):
            names.append(node.getText())
        pending.extend(node.getChildren() if hasattr(node, "getChildren") else ())
    return names


def check_interpolations(data, key: str = "") -> None:
    """Refuse resolvers outside :data:`SAFE_RESOLVERS` anywhere in the unresolved config (the command line's
    overrides, pipeline steps, option files); ``${other.key}`` references between config values stay allowed."""
    if isinstance(data, dict):
        for name, item in data.items():
            check_interpolations(item, f"{key}.{name}" if key else str(name))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            check_interpolations(item, f"{key}[{index}]")
    elif isinstance(data, str):
        for name in _resolvers(data):
            if name in ("oc.env", "env"):
                raise ConfigError(f"{key}={data} would copy an environment variable into the run's files; secrets "
                                  "belong in the job's environment (export it before launching: jobs inherit it), "
                                  "other values on the command line as literal text")
            if name not in SAFE_RESOLVERS:
                raise ConfigError(f"{key}={data} calls the resolver {name}, which is not allowed in a config (it can "
                                  f"evaluate text or read the environment); allowed: ${{other.key}} and "
                                  f"{', '.join(SAFE_RESOLVERS)}")


def typed(cfg: DictConfig) -> LlamantinoConfig:
    """The composed config as the schema's dataclasses, the run name filled in and checked."""
    check_interpolations(OmegaConf.to_container(cfg, resolve=False))
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, LlamantinoConfig)
    name = check_run_name(config.run.name or default_run_name(config))
    return dataclasses.replace(config, run=dataclasses.replace(config.run, name=name))


def compose_config(overrides: list[str]) -> LlamantinoConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, inside or outside a running Hydra app."""
    return compose_with_choices(overrides)[0]


def compose_with_choices(overrides: list[str]) -> tuple[LlamantinoConfig, dict]:
    """:func:`compose_config`, and the option each config group took (Hydra's runtime choices)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict, read_write

    register_configs()
    if not GlobalHydra.instance().is_initialized():
        # Initialised once per process and kept: later compositions reuse the search path.
        initialize_config_dir(config_dir=str(CONF_DIR))
    composed = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    choices = {str(group): value for group, value in composed.hydra.runtime.choices.items()}
    with read_write(composed), open_dict(composed):
        del composed["hydra"]
    return typed(composed), choices
