"""The Hydra Launcher plugin of llamantino: a ``-m`` sweep reaches llamantino as ONE call.

Hydra hands ``launch()`` every sweep point at once (as it does for hydra-submitit-launcher), so the
whole sweep is built and checked before anything is written, written as one directory, and
started by the run's own launcher (dry, local, or one SLURM job array). Selected in
``conf/config.yaml`` with ``override hydra/launcher: llamantino``. The sweep directory is locked
from planning to submission (llamantino/orchestrate/sweep.py): an identical sweep started at the same
time submits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


@dataclass
class LlamantinoLauncherConf:
    _target_: str = "hydra_plugins.llamantino_launcher.launcher.LlamantinoLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="llamantino", node=LlamantinoLauncherConf,
                             provider="llamantino")


class LlamantinoLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.config = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context = hydra_context
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from llamantino.orchestrate.sweep import run_sweep

        return run_sweep(self.config, self.hydra_context.config_loader, job_overrides, initial_job_idx)
