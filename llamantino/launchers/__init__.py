"""Launcher types by name: a new launcher is one new module here and one entry below."""

from __future__ import annotations

from llamantino.config.schema import LauncherName, LlamantinoConfig
from llamantino.launchers.base import LaunchPlan, Launcher
from llamantino.launchers.dry import DryLauncher
from llamantino.launchers.local import LocalLauncher
from llamantino.launchers.slurm import SlurmLauncher

LAUNCHERS: dict[LauncherName, type[Launcher]] = {
    launcher.name: launcher for launcher in (DryLauncher, LocalLauncher, SlurmLauncher)}


def launcher_for(cfg: LlamantinoConfig, echo=print) -> Launcher:
    return LAUNCHERS[cfg.launcher.name](echo=echo)


__all__ = ["LAUNCHERS", "LaunchPlan", "Launcher", "launcher_for"]
