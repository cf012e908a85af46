"""A Hydra callback that removes what Hydra itself wrote for a command that was refused or failed.

Hydra writes before llamantino is asked anything: a ``-m`` sweep's sweeper makes ``hydra.sweep.dir``
and saves ``multirun.yaml`` there before it checks that every point composes; a single run makes
``hydra.run.dir`` and, when ``hydra.output_subdir`` is set, its ``.hydra/`` files. A refused command
must leave nothing, so this callback (``hydra.callbacks`` in conf/config.yaml) notes which of those
folders did not exist when the command started and, when it ends without a result, removes the
files Hydra wrote there and the folders that are left empty. Hydra calls the end hooks in a
``finally``, so this runs whatever the failure. A sweep that succeeded holds llamantino's sweep
record and is never touched; nothing that existed before the command is removed.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback

from llamantino.orchestrate.sweep import HYDRA_RECORD
from llamantino.records.lock import missing_folders

HYDRA_SUBDIR_FILES = "*.yaml"  # what Hydra saves in hydra.output_subdir: the config, its own, the overrides


def _remove(folders: list[Path], files: str | None) -> None:
    """Hydra's ``files`` (a pattern) in the deepest folder when it holds nothing else, then every folder
    that is left empty, deepest first. A folder holding anything else (a sweep that started) stays."""
    if folders and folders[0].is_dir() and not folders[0].is_symlink():
        found = list(folders[0].iterdir())
        if any(files is None or not fnmatch.fnmatchcase(path.name, files) or not path.is_file() or path.is_symlink()
               for path in found):
            return
        for path in found:
            path.unlink()
    for folder in folders:
        try:
            folder.rmdir()  # only when empty
        except FileNotFoundError:
            continue  # removed already (a refused sweep cleans its own folder)
        except OSError:
            return


class HydraLeftovers(Callback):
    def __init__(self) -> None:
        self._made: list[tuple[list[Path], str | None]] = []

    def _note(self, folder: Any, files: str | None) -> None:
        try:
            path = Path(os.path.abspath(str(folder)))
        except Exception:  # noqa: BLE001 - a folder that does not resolve is Hydra's to report, later
            return
        self._made.append((missing_folders(path), files))

    def _clean(self) -> None:
        made, self._made = self._made, []
        for folders, files in made:  # the sub-folder (.hydra) before the run folder that holds it
            _remove(folders, files)

    def on_run_start(self, config, **kwargs: Any) -> None:
        self._made = []
        self._note(config.hydra.run.dir, None)
        if config.hydra.output_subdir is not None:
            self._note(Path(str(config.hydra.run.dir)) / str(config.hydra.output_subdir), HYDRA_SUBDIR_FILES)
        self._made.reverse()

    def on_run_end(self, config, job_return=None, **kwargs: Any) -> None:
        if job_return is not None and job_return.status == JobStatus.COMPLETED:
            self._made = []
            return
        self._clean()

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self._made = []
        self._note(config.hydra.sweep.dir, HYDRA_RECORD)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        # A sweep that started moved multirun.yaml into its record (or holds sweep.json beside it):
        # the folder is then not empty after removing Hydra's file, and stays.
        self._clean()
