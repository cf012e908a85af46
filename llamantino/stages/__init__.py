"""Stage types by task: a new kind of stage is one new module here and one line below."""

from __future__ import annotations

from llamantino.schema import LlamantinoConfig, Task
from llamantino.stages.base import JobShape, PreparedRun, Stage
from llamantino.stages.eval import EvalStage
from llamantino.stages.merge import MergeStage
from llamantino.stages.train import TrainStage

STAGES: dict[Task, type[Stage]] = {stage.task: stage for stage in (TrainStage, MergeStage, EvalStage)}


def stage_for(cfg: LlamantinoConfig) -> Stage:
    """The stage type of a composed config (``stage.task`` is validated at composition)."""
    return STAGES[cfg.stage.task]()


def default_run_name(cfg: LlamantinoConfig) -> str:
    """``<pipeline>-<model>``, ``<stage>-<model>-<data>``, ``eval-<model>-<eval>``, ``merge-<model>``."""
    if cfg.pipeline:
        return f"{cfg.pipeline.name}-{cfg.model.name}"
    return "-".join([cfg.stage.name, *stage_for(cfg).name_parts(cfg)])


__all__ = ["STAGES", "JobShape", "PreparedRun", "Stage", "default_run_name", "stage_for"]
