"""Validate a rendered recipe with Axolotl's own validation, as the target hardware would.

``axolotl.utils.config.validate_config`` is called with the capabilities of the chosen hardware
(bf16, compute capability, GPU count), not of this machine, after the plugin is registered, so a
CPU login node validates exactly what the cluster will check. Axolotl silently drops keys it
does not know; this module refuses them instead. Importing Axolotl costs seconds, so it happens
here and only here, on first use.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
import warnings
from importlib import metadata

from llamantino.errors import ValidationError

# Validation needs no network and no telemetry; set only while it runs (training gets its own env).
QUIET_ENV = {"AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
             "AXOLOTL_LOG_LEVEL": "ERROR", "LOG_LEVEL": "ERROR", "TORCH_LOGS": "-all"}


def capabilities(hw) -> tuple[dict, dict]:
    """The (capabilities, env_capabilities) Axolotl would detect on the hardware's nodes."""
    gpu = hw.gpu
    world = hw.nodes * (hw.gpus_per_node if gpu else 1)
    caps = {
        "bf16": bool(hw.bf16) and gpu,
        "fp8": bool(hw.fp8) and gpu,
        "tf32": bool(hw.tf32) and gpu,
        "n_gpu": world,
        "n_node": hw.nodes,
        "compute_capability": hw.compute_capability if gpu else None,
    }
    return caps, {"torch_version": metadata.version("torch")}


def _dropped(given, kept, path: str = "") -> list[str]:
    """Keys present in ``given`` (with a value) that Axolotl's output no longer has."""
    missing = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            here = f"{path}.{key}" if path else key
            if value is None:
                continue
            if key not in kept:
                missing.append(here)
            else:
                missing.extend(_dropped(value, kept[key], here))
    elif isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        for index, (a, b) in enumerate(zip(given, kept)):
            missing.extend(_dropped(a, b, f"{path}[{index}]"))
    return missing


@contextlib.contextmanager
def _quiet():
    """Axolotl, torch and bitsandbytes log (and print) at import and validation; only errors matter
    here, and they arrive as exceptions. The environment is restored afterwards."""
    saved = {key: os.environ.get(key) for key in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    loggers = [logging.getLogger(name) for name in ("axolotl", "torch", "bitsandbytes", "transformers", "torchao")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    stderr_fd = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(stderr_fd, 2)
            os.close(stderr_fd)
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def validate_recipe(recipe: dict, hw) -> dict:
    """Run Axolotl's validation for ``hw``; return the validated config or raise ValidationError."""
    with _quiet():
        return _validate(recipe, hw)


def _cache_merged_schema() -> None:
    """Build Axolotl's plugin-merged schema once per set of plugins, not once per validation.

    ``validate_config`` calls ``merge_input_args``, which creates two pydantic classes of ~390
    fields with ``exec`` every time (~0.1 s); they depend only on the plugins' input-arg classes.
    A sweep validates many recipes in one process, so the classes are kept per plugin set.
    """
    import axolotl.utils.config as axolotl_config
    from axolotl.integrations.base import PluginManager

    if getattr(axolotl_config.merge_input_args, "llamantino_cached", False):
        return
    build, built = axolotl_config.merge_input_args, {}

    def merged():
        key = tuple(PluginManager.get_instance().get_input_args())
        if key not in built:
            built[key] = build()
        return built[key]

    merged.llamantino_cached = True
    axolotl_config.merge_input_args = merged


def _validate(recipe: dict, hw) -> dict:
    import pydantic
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    _cache_merged_schema()

    logging.getLogger("axolotl").setLevel(logging.ERROR)  # axolotl sets its own level on import

    cfg = DictDefault(copy.deepcopy(recipe))
    try:
        prepare_plugins(cfg)
        caps, env_caps = capabilities(hw)
        validated = validate_config(cfg, capabilities=caps, env_capabilities=env_caps)
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(recipe)"
            problems.append(f"{where}: {error['msg']}")
        raise ValidationError(f"Axolotl {metadata.version('axolotl')} rejected the recipe: " + "; ".join(problems)) from None
    except ValueError as exc:
        raise ValidationError(f"Axolotl {metadata.version('axolotl')} rejected the recipe: {exc}") from None
    plain = validated.to_dict() if hasattr(validated, "to_dict") else dict(validated)
    dropped = _dropped(recipe, plain)
    if dropped:
        raise ValidationError(
            f"Axolotl {metadata.version('axolotl')} does not know these keys and would drop them silently: "
            + ", ".join(dropped) + " (check the spelling in stage.axolotl)"
        )
    return plain
