"""The Italian dataset registry and what ``python -m llamantino data`` does with it.

Registry entries (``datasets_ita/registry``), checked against the schema, and pinning hub
revisions. Checks and previews of their rows live in ``llamantino/inputs/preview.py``.
"""

from __future__ import annotations


import yaml

from llamantino.errors import DataError
from llamantino.paths import REGISTRY_DIR
from llamantino.config.schema import DataConfig, from_plain


def registry() -> dict[str, DataConfig]:
    """Every registry entry by name, checked against the data schema."""
    entries = {}
    for path in sorted(REGISTRY_DIR.glob("*.yaml")):
        entries[path.stem] = from_plain(DataConfig, yaml.safe_load(path.read_text()), f"data ({path.name})")
    return entries


def pin(name: str) -> str:
    """Resolve a hub dataset's current commit and write it into its registry entry."""
    entry_path = REGISTRY_DIR / f"{name}.yaml"
    entries = registry()
    if name not in entries:
        raise DataError(f"unknown data {name!r}; registry entries: {', '.join(entries)}")
    entry = entries[name]
    if not entry.hub_id:
        raise DataError(f"data {name} is a local file; nothing to pin")
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(entry.hub_id).sha
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise DataError(f"could not reach the hub to pin {entry.hub_id} ({exc.__class__.__name__}: {exc}); "
                        "run `pin` on a machine with network") from None
    lines = entry_path.read_text().splitlines()
    lines = [f"revision: {sha}" if line.startswith("revision:") else line for line in lines]
    if not any(line.startswith("revision:") for line in lines):
        lines.append(f"revision: {sha}")
    entry_path.write_text("\n".join(lines) + "\n")
    return sha
