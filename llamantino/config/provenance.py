"""Where each value of a preset comes from: the ``provenance`` table of ``conf/experiment/*.yaml``.

A preset sets values (``stage.learning_rate: 8.0e-6``) and picks options (``override /data: ...``).
Each of them has a row in the preset's ``provenance`` table: the source it comes from (a script at a
commit, a model card, the seed slides) and a status (:class:`~llamantino.config.schema.SourceStatus`):
``verified`` (read in that source), ``unpublished`` (the authors published nothing: our documented
choice) or ``conflict`` (the sources disagree: the preset follows one, the row's ``override`` the other).

:func:`unsourced` lists the settings of a preset file without a source (the preset test fails on
any); :func:`provenance_rows` gives a composed run's table as the model cards show it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from llamantino.config.schema import (
    LlamantinoConfig,
    SourceStatus,
    ValueSource,
    from_plain,
    to_plain,
)
from llamantino.errors import ConfigError
from llamantino.paths import CONF_DIR

#: The config groups a preset picks options of (``- override /data: orpo_dpo_mix_40k``): a row each.
GROUPS = ("model", "data", "stage", "hardware", "launcher")
#: Keys of a preset file that are no setting: the defaults list (its groups are rows), the preset's
#: name, its published target scores and the table itself.
NOT_SETTINGS = ("defaults", "experiment", "target", "provenance")


def preset_file(name: str) -> Path:
    return CONF_DIR / "experiment" / f"{name}.yaml"


def load_preset(name_or_path: str | Path) -> dict:
    """A preset file as plain data (by preset name or path)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = preset_file(str(name_or_path))
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a mapping")
    return data


def _flatten(value, prefix: str) -> list[str]:
    if isinstance(value, dict) and value:
        return [key for name, item in value.items() for key in _flatten(item, f"{prefix}.{name}")]
    return [prefix]


def preset_settings(preset: dict) -> list[str]:
    """Every value a preset file sets: the groups its defaults list overrides (``model``, ``data``, ...)
    and each of its own keys, dotted (``stage.learning_rate``, ``hardware.slurm.time``)."""
    found = []
    for item in preset.get("defaults") or []:
        for key in item if isinstance(item, dict) else ():
            group = str(key).split()[-1].lstrip("/").split("@")[0]  # "override /data" -> data
            if group in GROUPS:
                found.append(group)
    for name, value in preset.items():
        if name not in NOT_SETTINGS:
            found += _flatten(value, str(name))
    return found


def table_of(preset: dict) -> dict[str, ValueSource]:
    """The preset's provenance table, each row checked as the schema checks it (status, override)."""
    table = preset.get("provenance") or {}
    if not isinstance(table, dict):
        raise ConfigError("provenance must be a mapping of settings to {source, status}")
    rows = {}
    for key, value in table.items():
        row = from_plain(ValueSource, value, f"provenance.{key}")
        row.check_as(str(key))
        rows[str(key)] = row
    return rows


def unsourced(preset: dict) -> list[str]:
    """The settings of a preset file that have neither a source nor an ``unpublished`` status, each as
    ``<setting>: <what is missing>`` (empty: every value is accounted for)."""
    table = table_of(preset)
    missing = []
    for key in preset_settings(preset):
        row = table.get(key)
        if row is None:
            missing.append(f"{key}: no provenance entry")
        elif not row.source.strip() and row.status != SourceStatus.unpublished:
            missing.append(f"{key}: no source, and not marked unpublished")
    return missing


def unknown_settings(cfg: LlamantinoConfig) -> list[str]:
    """Rows of a composed config's table that name no setting of the config (a misspelt key)."""
    keys = _plain_keys(cfg)
    return [key for key in cfg.provenance if key not in keys and not any(k.startswith(key + ".") for k in keys)]


def _plain_keys(cfg: LlamantinoConfig) -> dict:
    plain = {name: value for name, value in to_plain(cfg).items() if name != "provenance"}
    flat: dict = {}

    def walk(value, prefix):
        flat[prefix] = value
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{prefix}.{name}")

    for name, value in plain.items():
        walk(value, name)
    return flat


def shown(value) -> str:
    """A config value as one line of text: numbers as written in a preset, lists and mappings as JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@dataclass(frozen=True)
class ProvenanceRow:
    """One row of a run's table: the setting, the value the run used, where the preset's value comes from."""

    setting: str
    value: str
    source: str
    status: str
    override: str | None  # conflict: the override that follows the other source
    changed_by: str | None  # the command-line override that replaced the preset's value in this run


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _changes(overridden: str, setting: str) -> bool:
    """Whether a command-line override of ``overridden`` changes the preset's ``setting``: a group's
    option only by itself (``data=...``; ``data.split=...`` keeps the option), a value by itself, by a
    key inside it or by a mapping holding it (not by a group's option: the preset's own keys apply on
    top of another option)."""
    if setting in GROUPS:
        return overridden == setting
    return (overridden == setting or overridden.startswith(setting + ".")
            or ("." in overridden and setting.startswith(overridden + ".")))


def provenance_rows(cfg: LlamantinoConfig, overrides: list[str] = ()) -> list[ProvenanceRow]:
    """The table of a run from a preset, in the preset's order, with the value each setting had in the
    run and the command-line override (from ``overrides``) that changed it, if one did."""
    values = _plain_keys(cfg)
    rows = []
    for key, row in cfg.provenance.items():
        if key in GROUPS and isinstance(values.get(key), dict):
            value = values[key].get("name")  # the group's option
        else:
            value = values.get(key)
        changed = [o for o in overrides if _changes(_override_key(o), key)]
        rows.append(ProvenanceRow(key, shown(value), row.source, row.status, row.override,
                                  ", ".join(changed) or None))
    return rows
