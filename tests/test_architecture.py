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
    assert "llamantino.launchers.slurm" in graph["llamantino.sweep"] or "llamantino.launchers" in graph["llamantino.sweep"]
    assert cycles(graph) == []


def source(path: str) -> str:
    return (ROOT / path).read_text()


def library_files():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


def test_task_branches_live_only_in_the_stage_types():
    pattern = re.compile(r"\bTask\.\w+|\btask\s*[!=]=|[\"'](train|merge|eval)[\"']\s*[!=]=|[!=]=\s*[\"'](train|merge|eval)[\"']")
    offenders = [path for path, text in library_files()
                 if pattern.search(text) and not path.startswith("llamantino/stages/") and path != "llamantino/schema.py"]
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


@pytest.mark.parametrize("name", ["provenance.json", "status.json", "job.json", "axolotl.yaml", "eval.json",
                                  "config.yaml", "sweep.json", "pipeline.json", "job.sbatch"])
def test_run_directory_file_names_are_spelt_once(name):
    places = [path for path, text in library_files() if f'"{name}"' in text]
    assert places == ["llamantino/rundir.py"], places


def test_cli_modules_only_parse_arguments():
    """A command module holds argparse and calls into the library; nothing else is defined there."""
    for command in ("data", "recipe", "plan", "status", "collect", "compare", "launch", "evaluate", "finish", "sync",
                    "site"):
        tree = ast.parse(source(f"llamantino/{command}.py"))
        defined = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert all(name == "main" or name.startswith("cmd_") for name in defined), (command, defined)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_"):
                assert len(node.body) <= 16, f"{command}.{node.name} does more than print a library result"
