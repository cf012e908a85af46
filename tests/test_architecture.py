"""The architecture's rules, checked on the source: no import cycles, stages and launchers own their
branches, the typed config is read by attribute, file names of a run live in one place."""

from __future__ import annotations

import ast
import re

import pytest

from conftest import ROOT

PACKAGES = ("llamantino", "llamantino_plugin", "hydra_plugins")


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return found


def import_graph() -> dict[str, set[str]]:
    """Every import, at module level or inside a function, between the project's modules.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``. A module's
    own parent packages are not edges: Python imports them first whatever the module says.
    """
    trees = modules()
    graph: dict[str, set[str]] = {name: set() for name in trees}
    for name, tree in trees.items():
        package = name if (ROOT / name.replace(".", "/")).is_dir() else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in trees else base for alias in node.names]
            for target in targets:
                while target and target not in trees:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "llamantino.launchers" in graph["llamantino.orchestrate.sweep"]  # the graph sees real imports
    assert cycles(graph) == []


def package_of(module: str) -> str:
    """The layer a module belongs to: a package under llamantino/ (llamantino.stages), a top-level module
    of llamantino (llamantino.errors), or a whole other package (llamantino_plugin, hydra_plugins)."""
    parts = module.split(".")
    if parts[0] != "llamantino" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(package_of(module), set()).update(
            package_of(target) for target in targets if package_of(target) != package_of(module))
    return graph


def test_no_package_cycles():
    graph = package_graph()
    assert "llamantino.render" in graph["llamantino.stages"]  # the graph sees packages
    assert cycles(graph) == []


def test_the_layers_point_one_way():
    """The job side never reaches up into orchestration, launchers, stages or the commands; nothing
    imports the commands."""
    graph = package_graph()
    assert not graph["llamantino.job"] & {"llamantino.orchestrate", "llamantino.launchers", "llamantino.stages",
                                          "llamantino.cli", "llamantino.reports"}, graph["llamantino.job"]
    assert [package for package, targets in graph.items()
            if "llamantino.cli" in targets and package != "llamantino.__main__"] == [], graph
    assert not graph["llamantino.records"] & {"llamantino.stages", "llamantino.launchers", "llamantino.orchestrate"}


def source(path: str) -> str:
    return (ROOT / path).read_text()


def library_files():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


def test_stage_branches_live_only_in_the_stage_types():
    pattern = re.compile(r"\btask\s*[!=]=|\.task\s*[!=]=|[\"'](train|merge|eval)[\"']\s*[!=]=|[!=]=\s*[\"'](train|merge|eval)[\"']"
                         r"|\bstage_type\s*[!=]=")
    offenders = [path for path, text in library_files() if pattern.search(text) and not path.startswith("llamantino/stages/")]
    assert offenders == []


def test_launcher_branches_live_only_in_the_launcher_types():
    pattern = re.compile(r"launcher\.name\s*[!=]=|[!=]=\s*[\"'](dry|local|slurm)[\"']")
    offenders = [path for path, text in library_files()
                 if pattern.search(text) and not path.startswith("llamantino/launchers/")]
    assert offenders == []


def test_the_composed_config_is_read_by_attribute():
    """No ``cfg["stage"]``-style lookups: the config is the schema's dataclasses end to end."""
    groups = "model|data|stage|hardware|launcher|eval|pipeline|prompt|run|slurm"
    pattern = re.compile(rf"\b(cfg|config|hw|stage|model|slurm|launcher)\[[\"']({groups}|name|task|nodes|adapter)[\"']\]")
    offenders = [f"{path}: {match.group(0)}" for path, text in library_files() for match in pattern.finditer(text)]
    assert offenders == []


def test_run_records_are_read_by_attribute():
    """provenance.json and status.json are read through their types (llamantino/records), never by key."""
    pattern = re.compile(r"\b(provenance|status|output|model_source)(\.get\(|\[[\"'])")
    offenders = [f"{path}: {match.group(0)}" for path, text in library_files() for match in pattern.finditer(text)]
    assert offenders == []


@pytest.mark.parametrize("name", ["provenance.json", "status.json", "job.json", "axolotl.yaml", "eval.json",
                                  "config.yaml", "sweep.json", "pipeline.json", "job.sbatch", "results.json"])
def test_run_directory_file_names_are_spelt_once(name):
    places = [path for path, text in library_files() if f'"{name}"' in text]
    assert places == ["llamantino/records/rundir.py"], places


def test_no_run_file_is_tested_for_outside_the_run_directory_and_stage_types():
    """What kind of run a directory holds is its record's to say (stage_for(run)), not a file's presence."""
    pattern = re.compile(r"RunDir\.[A-Z_]+\)?\s*\.(is_file|exists|is_dir)\(|\.(is_file|exists)\(\)\s*for\s+\w+\s+in\s+\(RunDir")
    offenders = [path for path, text in library_files() if pattern.search(text)
                 and not path.startswith(("llamantino/records/", "llamantino/stages/"))]
    assert offenders == []


JOB_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETED",
              "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "CANCELLED",
              "WRITTEN", "UNKNOWN", "MISSING", "NEW")


def test_job_states_are_spelt_only_in_the_job_state_enum():
    from llamantino.records.jobstate import JobState

    assert set(JOB_STATES) == {state.value for state in JobState}
    pattern = re.compile(r"[\"'](" + "|".join(JOB_STATES) + r")[\"']")
    offenders = [f"{path}: {match.group(0)}" for path, text in library_files() for match in pattern.finditer(text)
                 if path != "llamantino/records/jobstate.py"]
    assert offenders == []


def defines_main(text: str) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in ast.parse(text).body)


def test_every_command_comes_from_the_one_table():
    """A module with a main() is a verb of the one command (llamantino/cli/main.py's VERBS) or a job
    command (llamantino/job's JOB_COMMANDS); the table names nothing that does not exist."""
    from llamantino.cli.main import VERBS
    from llamantino.job import JOB_COMMANDS

    entry_points = {f"llamantino.cli.{name}" for name in VERBS} | {f"llamantino.job.{name}" for name in JOB_COMMANDS}
    entry_points.add("llamantino.cli.main")  # the dispatcher itself
    found = {path.removesuffix(".py").replace("/", ".") for path, text in library_files()
             if path.startswith("llamantino/") and defines_main(text)}
    assert found == entry_points, (found - entry_points, entry_points - found)
    assert {verb.module for verb in VERBS.values()} == {f"llamantino.cli.{name}" for name in VERBS}


def test_the_readme_lists_every_verb():
    from llamantino.cli.main import VERBS

    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `llamantino ")]
    listed = [line.split("`")[1].split()[1] for line in table]
    assert listed == list(VERBS), "README's command table must list llamantino/cli/main.py's VERBS, in order"


def test_cli_modules_only_parse_arguments():
    """A command module holds argparse and calls into the library; nothing else is defined there."""
    from llamantino.cli.main import VERBS

    for command in VERBS:
        tree = ast.parse(source(f"llamantino/cli/{command}.py"))
        defined = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert all(name == "main" or name.startswith("cmd_") for name in defined), (command, defined)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_"):
                assert len(node.body) <= 16, f"{command}.{node.name} does more than print a library result"
