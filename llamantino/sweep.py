"""Hydra multirun support: one SLURM job array per sweep, submitted when every point is ready."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback


class SweepCallback(Callback):
    """Placeholder until the SLURM launcher lands."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        return None
