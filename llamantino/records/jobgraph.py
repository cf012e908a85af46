"""The job graph of a submission (``graph.json``): every job one command submits, and what each waits on.

``launcher=slurm`` writes every script first (each run's ``job.sbatch``, a sweep's job array, the
scripts of the shared cache entries the runs read: a download, the steps preparing a corpus), then
records the graph in the run, pipeline or sweep directory, then submits it; ``launcher.submit=false``
stops before submitting, and ``python -m llamantino launch <dir>`` submits the recorded graph.

The record is read back as untrusted data: every field typed, every name a member of its directory,
every entry a ``prepared/<key>`` or ``downloads/<key>`` folder of the cache, every edge pointing to
an earlier node (so the order is a topological one and there is no cycle).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llamantino.errors import RunDirError
from llamantino.records.files import load_record, plain_name, write_json
from llamantino.records.manifests import GraphEntry, GraphNode, JobGraph
from llamantino.records.rundir import DownloadDir, PipelineDir, PreparedDir, RunDir, SharedEntry, SweepDir

DOWNLOAD_STEP = "download"  # the one step of a download entry (its key in the entry's jobs.json)
_ENTRY = re.compile(rf"({PreparedDir.ROOT}|{DownloadDir.ROOT})/[0-9a-f]{{32}}", re.ASCII)
_NODE_NAME = re.compile(r"[^\x00-\x1f\x7f/\\]{1,200}")


def graph_home(target: Path) -> Path:
    """The directory whose job graph (and lock) covers ``target``: a pipeline or sweep directory
    itself, the pipeline or sweep a run belongs to, else the run itself."""
    target = Path(target)
    for folder in (target, target.parent):
        if PipelineDir(folder).is_pipeline() or SweepDir(folder).is_sweep():
            return folder
    return target


def graph_file(directory: Path) -> Path:
    return Path(directory) / JobGraph.FILE


def read_graph(directory: Path) -> JobGraph | None:
    """The graph recorded in a run, pipeline or sweep directory, checked; None when it has none."""
    path = graph_file(directory)
    if not os.path.lexists(path):
        return None
    graph = load_record(JobGraph, path, "graph")
    check_graph(graph, path)
    return graph


def write_graph(directory: Path, graph: JobGraph) -> None:
    """Record a graph (checked as a reader will check it)."""
    from llamantino.config.schema import to_plain

    path = graph_file(directory)
    check_graph(graph, path)
    write_json(path, to_plain(graph))


def member(name: str, path: Path, key: str) -> str:
    """A run named by the graph: "." (the graph's own directory) or one folder inside it."""
    return name if name == "." else plain_name(name, path, key)


def check_graph(graph: JobGraph, path: Path) -> None:
    entries: dict[str, GraphEntry] = {}
    for index, entry in enumerate(graph.entries):
        key = f"graph.entries[{index}]"
        if not _ENTRY.fullmatch(entry.id) or entry.id in entries:
            raise RunDirError(f"{path}: {key}.id={entry.id!r} must be a distinct {PreparedDir.ROOT}/<key> or "
                              f"{DownloadDir.ROOT}/<key> (32 hex digits)")
        member(entry.config, path, f"{key}.config")
        if entry.id.startswith(f"{PreparedDir.ROOT}/") and entry.request.get("key") != entry.id.split("/", 1)[1]:
            raise RunDirError(f"{path}: {key}.request is not the request of {entry.id} (its key differs)")
        if entry.tasks < 1:
            raise RunDirError(f"{path}: {key}.tasks={entry.tasks} must be at least 1")
        entries[entry.id] = entry
    seen: dict[str, GraphNode] = {}
    for index, node in enumerate(graph.nodes):
        key = f"graph.nodes[{index}]"
        if not _NODE_NAME.fullmatch(node.name) or node.name in seen:
            raise RunDirError(f"{path}: {key}.name={node.name!r} must be a distinct printable name")
        later = [name for name in node.after if name not in seen]
        if later:
            raise RunDirError(f"{path}: {key}.after names {later[0]!r}, which is not an earlier node of the graph")
        if (node.run is not None) + node.array + (node.entry is not None) != 1:
            raise RunDirError(f"{path}: {key} must be exactly one of: a run, the sweep's array, an entry's step")
        if node.run is not None:
            member(node.run, path, f"{key}.run")
        if node.entry is not None:
            if node.entry not in entries:
                raise RunDirError(f"{path}: {key}.entry={node.entry!r} is not one of graph.entries")
            steps = PreparedDir.STEPS if node.entry.startswith(f"{PreparedDir.ROOT}/") else (DOWNLOAD_STEP,)
            if node.step not in steps:
                raise RunDirError(f"{path}: {key}.step={node.step!r} must be one of {', '.join(steps)}")
            # Rows tokenised with an earlier step's model wait on that step's run (and the download).
            outside = [name for name in node.after if seen[name].entry != node.entry]
            if outside and (node.step != PreparedDir.ROWS_STEP
                            or any(seen[name].entry is None and seen[name].run is None for name in outside)):
                raise RunDirError(f"{path}: {key} waits on a job that does not make its own entry")
        seen[node.name] = node
    if not any(node.entry is None for node in graph.nodes):
        raise RunDirError(f"{path}: the graph has no run")


def run_of(directory: Path, name: str) -> RunDir:
    """The run directory a node or entry names, refused when it is a link."""
    if name == ".":
        return RunDir(Path(directory))
    if (Path(directory) / name).is_symlink():
        raise RunDirError(f"{Path(directory) / name} (named in {JobGraph.FILE}) is a symbolic link; a run of "
                          f"{directory} is a folder inside it: remove the link")
    return RunDir(Path(directory) / name)


def shared_dir(cache: Path, entry_id: str) -> SharedEntry:
    """The entry folder of the cache (``cache`` expanded on this machine)."""
    folder = Path(cache) / entry_id
    return PreparedDir(folder) if entry_id.startswith(f"{PreparedDir.ROOT}/") else DownloadDir(folder)


def step_script(entry: SharedEntry, step: str) -> Path:
    """The script of one step of a shared entry, inside the entry (sbatch runs it from there)."""
    return entry.script(step) if isinstance(entry, PreparedDir) else entry.path / DownloadDir.SCRIPT


def node_of(graph: JobGraph, home: Path, run: RunDir) -> str | None:
    """The name of the graph's node for ``run`` (a run of ``home``), None when the graph has none."""
    member = "." if Path(home) == run.path else run.name
    return next((node.name for node in graph.nodes if node.run == member), None)


def ancestors(graph: JobGraph, names: set[str]) -> set[str]:
    """``names`` and every node they wait on, directly or not."""
    after = {node.name: node.after for node in graph.nodes}
    found, pending = set(), list(names)
    while pending:
        name = pending.pop()
        if name not in found:
            found.add(name)
            pending.extend(after.get(name, ()))
    return found
