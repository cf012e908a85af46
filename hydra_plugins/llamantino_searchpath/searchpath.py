"""``LLAMANTINO_CONFIG_PATH=/site/conf:/my/conf``: folders holding config groups of your own.

Each folder may hold ``hardware/``, ``pipeline/``, ``data/``, ... option files laid out as
``conf/``. Hydra asks this plugin for its search path at every composition (the main command,
pipeline steps, recipe import, the planner), so a site's options work everywhere alike.
"""

from __future__ import annotations

import os

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

VARIABLE = "LLAMANTINO_CONFIG_PATH"


def site_folders() -> list[str]:
    return [folder for folder in os.environ.get(VARIABLE, "").split(os.pathsep) if folder.strip()]


class LlamantinoSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for folder in site_folders():
            search_path.append(provider="llamantino-site", path=f"file://{os.path.abspath(os.path.expanduser(folder))}")
