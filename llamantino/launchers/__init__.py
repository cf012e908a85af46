"""Launcher types by name: a new launcher is one new module here and one line below."""

from __future__ import annotations

from llamantino.launchers.base import Launcher
from llamantino.launchers.dry import DryLauncher
from llamantino.launchers.local import LocalLauncher
from llamantino.launchers.slurm import SlurmLauncher
from llamantino.schema import LauncherName, LlamantinoConfig

LAUNCHERS: dict[LauncherName, type[Launcher]] = {
    launcher.name: launcher for launcher in (DryLauncher, LocalLauncher, SlurmLauncher)}


def launcher_for(cfg: LlamantinoConfig, echo=print) -> Launcher:
    return LAUNCHERS[cfg.launcher.name](echo=echo)


__all__ = ["LAUNCHERS", "Launcher", "launcher_for"]
