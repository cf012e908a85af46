"""The data report: what each loader read, dropped and kept, logged and written beside the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

REPORT_FILE = "llamantino_data_report.json"
_ORDER = ("rows", "invalid", "normalised", "duplicates", "too_short", "too_long", "truncated",
          "no_trainable_tokens", "kept", "tokens", "trainable_tokens")


def describe(counts: dict) -> str:
    """``rows 44, duplicates 2, too_short 1, kept 41`` (zeros left out, in pipeline order)."""
    keys = [key for key in _ORDER if key in counts] + sorted(set(counts) - set(_ORDER))
    return ", ".join(f"{key} {counts[key]}" for key in keys if counts[key] or key in ("rows", "kept"))


def record(cfg, dataset: str, fmt: str, counts: dict) -> None:
    """Log one dataset's counts and merge them into ``<output_dir>/llamantino_data_report.json``."""
    print(f"llamantino data: {dataset} [{fmt}]: {describe(counts)}", flush=True)
    if int(os.environ.get("RANK", "0")) != 0 or not cfg.get("output_dir"):
        return
    path = Path(cfg.output_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[dataset] = {"format": fmt, **counts}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
