"""Where the project's own files live, and where llamantino caches what it builds."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
DATASETS_DIR = PROJECT_ROOT / "datasets_ita"
SAMPLES_DIR = DATASETS_DIR / "samples"
REGISTRY_DIR = DATASETS_DIR / "registry"
SLURM_DIR = PROJECT_ROOT / "slurm"
RECIPES_DIR = PROJECT_ROOT / "recipes"


def cache_home() -> Path:
    """Cache for built assets (the tiny model): ``$LLAMANTINO_HOME`` or ``~/.cache/llamantino``."""
    return Path(os.environ.get("LLAMANTINO_HOME") or Path.home() / ".cache" / "llamantino")
