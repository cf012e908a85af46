"""Stage types, by the name ``stage.task`` selects them with.

A new kind of stage is one module here (a :class:`Stage` subclass declaring its own ``task``), one
entry in :data:`STAGE_TYPES`, and one ``conf/stage/<name>.yaml`` with ``task: <its task>``.
"""

from __future__ import annotations

from llamantino.config.schema import LlamantinoConfig
from llamantino.errors import ConfigError
from llamantino.records.rundir import RunDir
from llamantino.stages.base import HubRead, PreparedRun, Stage
from llamantino.stages.eval import EvalStage
from llamantino.stages.merge import MergeStage
from llamantino.stages.release import ReleaseStage
from llamantino.stages.train import TrainStage

STAGE_TYPES: tuple[type[Stage], ...] = (TrainStage, MergeStage, EvalStage, ReleaseStage)


def registry(stage_types) -> dict[str, type[Stage]]:
    """The stage types by task name; each must name itself (an inherited name would silently replace
    its parent) and no two may share a name."""
    table: dict[str, type[Stage]] = {}
    for stage_type in stage_types:
        name = stage_type.__dict__.get("task")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{stage_type.__name__} must declare its own task name (task = \"...\")")
        if name in table:
            raise TypeError(f"{stage_type.__name__} and {table[name].__name__} both declare task {name!r}")
        table[name] = stage_type
    return table


STAGES = registry(STAGE_TYPES)


def stage_for(source: LlamantinoConfig | RunDir) -> Stage:
    """The stage type of a composed config (``stage.task``) or of a written run (its record)."""
    if isinstance(source, RunDir):
        name, where = source.provenance().stage_type, f"{source.path}'s record"
    else:
        name, where = source.stage.task, f"stage {source.stage.name}: stage.task"
    if name not in STAGES:
        raise ConfigError(f"{where}={name!r} names no stage type; valid: {', '.join(STAGES)}")
    return STAGES[name]()


__all__ = ["STAGES", "STAGE_TYPES", "HubRead", "PreparedRun", "Stage", "registry", "stage_for"]
