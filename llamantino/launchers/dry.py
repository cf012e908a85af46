"""``launcher=dry``: render, validate and write the run directory; start nothing."""

from __future__ import annotations

import shlex

from llamantino.launchers.base import Launcher
from llamantino.schema import LauncherName


class DryLauncher(Launcher):
    name = LauncherName.dry

    def submit(self, run, after=()):
        self.echo(f"not started (launcher=dry): python -m llamantino.launch {shlex.quote(str(run.run_dir.path))} "
                  "--local (or --slurm)")
        return None

    def submit_array(self, sweep, runs, after=()):
        return None
