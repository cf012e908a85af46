"""Shared helpers: the CLI in a subprocess, in-process composition, the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable


def cli(*args: str, cwd: Path, module: str = "llamantino", timeout: int = 900, env: dict | None = None):
    """Run ``python -m <module> <args>`` like a user would; returns the CompletedProcess."""
    return subprocess.run([PYTHON, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def run_dir_of(proc) -> Path:
    """The ``run_dir: <path>`` the CLI prints as its last stdout line."""
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("run_dir: "), f"no run_dir line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return Path(lines[-1].split(": ", 1)[1])


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from llamantino.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture
def compose():
    """Compose conf/ in-process: ``compose("stage=dpo", "model=llama3_8b")`` -> plain dict."""
    from llamantino.compose import compose_config

    return lambda *overrides: compose_config(list(overrides))
