"""The runs a release reads (the lineage's steps and the eval runs), each read once and refused unless completed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamantino.config.schema import LlamantinoConfig
from llamantino.errors import RunDirError
from llamantino.job.evaluate import HUB_ID
from llamantino.records.jobstate import RunStatus
from llamantino.records.provenance import Provenance, SourceKind
from llamantino.records.rundir import RunDir


@dataclass(frozen=True)
class Step:
    """A run the release reads (one step of the lineage, or an eval run), its records read once."""

    run: RunDir
    provenance: Provenance
    config: LlamantinoConfig
    status: RunStatus

    @property
    def name(self) -> str:
        """The run's name (run.name), not its folder's (a time stamp under the name)."""
        return self.config.run.name or self.run.name


def completed(path: str, role: str) -> Step:
    """The records of a run the plan names; refused unless the run completed."""
    run = RunDir(Path(path))
    if not run.is_run():
        raise RunDirError(f"{RunDir.RELEASE_PLAN}: {role} {path} is not a llamantino run directory (moved or removed?)")
    status = run.read_status()
    if status is None or not status.state.done:
        raise RunDirError(f"{role} {path} has not completed (state: {status.state if status else 'not finished'}); "
                          "release once it has")
    return Step(run, run.provenance(), run.config(), status)


def adapter_base_name(model_run: Step) -> tuple[str, str | None, bool]:
    """How the released adapter names its base: (hub id, revision, True), else (the model option's name, None, False)."""
    base = model_run.provenance.output.base_model
    if base is not None and not base.local and HUB_ID.fullmatch(base.ref):
        return base.ref, base.revision, True
    return model_run.config.model.name, None, False


def root_hub_id(root: Step) -> str | None:
    """The hub id of the model the lineage started from (None: built locally, or a local folder)."""
    source = root.provenance.model
    hub_id = source.hub_id if source.kind == SourceKind.hub else None
    return hub_id if hub_id and HUB_ID.fullmatch(hub_id) else None
