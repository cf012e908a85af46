"""``launcher=dry``: render, validate and write the run directory; start nothing."""

from __future__ import annotations

import shlex

from llamantino.errors import ConfigError
from llamantino.launchers.base import InOrderLauncher
from llamantino.config.schema import LauncherName


class DryLauncher(InOrderLauncher):
    name = LauncherName.dry

    def obligations(self, run):
        """Nothing starts, so nothing must hold yet (``launch`` checks them when it starts the run)."""

    def submit(self, run, after=()):
        self.echo(f"not started (launcher=dry): python -m llamantino launch {shlex.quote(str(run.run_dir.path))} "
                  "--launcher local (or slurm)")
        return None

    def submit_array(self, sweep, runs, after=()):
        return None

    def start(self, run, cfg, provenance, stage):
        raise ConfigError(f"{run.path} was rendered with launcher={cfg.launcher.name}: pass --launcher local or "
                          "--launcher slurm")
