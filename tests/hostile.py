"""The contract every hostile-input table checks (tests/test_hostile_*.py): one command line ends in
exactly one ``error:`` line and exit 2, writes nothing (the work folder is unchanged), submits
nothing (a stand-in ``sbatch`` first on PATH would leave ``SUBMITTED``).

A table file lays out its own broken files in a module-scoped work folder (``hostile_folder``) and
calls :func:`assert_refused` once per row. Real submissions are tested against the real cluster in
tests/test_slurm.py; here any submission at all is the failure.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import yaml

from conftest import cli, command


def hostile_folder(path: Path) -> Path:
    """Make ``path`` a work folder with the stand-in ``sbatch`` in ``path/bin``."""
    shim = path / "bin"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sbatch").write_text(f"#!/bin/sh\ntouch {path / 'SUBMITTED'}\nexit 1\n")
    (shim / "sbatch").chmod(stat.S_IRWXU)
    return path


def snapshot(folder: Path) -> dict[str, int]:
    """Every path under ``folder`` with its size (a file cut to zero bytes or grown counts as written)."""
    return {str(p.relative_to(folder)): (p.lstat().st_size if not p.is_dir() else -1)
            for p in folder.rglob("*") if "__pycache__" not in p.parts}


def hostile_env(work: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}", "SLURM_ACCOUNT": "", "SBATCH_ACCOUNT": "",
            "HF_HUB_OFFLINE": "1", **extra}


def assert_refused(work: Path, module: str, args: list[str], needle: str, *, env: dict | None = None,
                   watch: tuple[Path, ...] = (), subprocess: bool = False):
    """Run one row; ``{w}`` in an argument is ``work``. ``watch`` adds folders outside ``work`` that
    must stay unchanged too (a row that tries to write elsewhere). Returns the finished process."""
    folders = (work, *watch)
    before = [snapshot(folder) for folder in folders]
    proc = cli(*[arg.replace("{w}", str(work)) for arg in args], **command(module), cwd=work,
               env=hostile_env(work, **(env or {})), subprocess=subprocess)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert needle in lines[0], lines[0]
    assert "run_dir:" not in proc.stdout
    assert [snapshot(folder) for folder in folders] == before  # nothing written, nothing half-written
    assert not (work / "SUBMITTED").exists()  # no job submitted
    return proc


def tampered(recipe: dict, edit) -> str:
    """A shared recipe edited by ``edit`` with its checksum made consistent again, as an attacker
    would: the checks after the checksum must catch the edit."""
    from llamantino.orchestrate.sharing import checksum

    record = json.loads(json.dumps(recipe))
    edit(record)
    record["checksum"] = checksum(record)
    return yaml.safe_dump(record, sort_keys=False, allow_unicode=True)
