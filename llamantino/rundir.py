"""Write a run directory atomically: it appears complete, or not at all.

Files are written into a hidden staging directory beside the target, which is then renamed into
place (one ``rename``, atomic on POSIX file systems). A failure on the way removes the staging
directory, so a failed render leaves nothing half-written behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path


def unique_run_dir(parent: Path, stem: str) -> Path:
    """``parent/<stem>-<4 hex>``: unique even for runs started in the same second."""
    while True:
        candidate = parent / f"{stem}-{secrets.token_hex(2)}"
        if not candidate.exists():
            return candidate


def write_run_dir(target: Path, files: dict[str, str | bytes], links: dict[str, str]) -> Path:
    """Create ``target`` with ``files`` (relative path -> content) and ``links`` (relative path -> target)."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists; llamantino never overwrites a run directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        for relative, content in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        for relative, destination in links.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(destination, path)
        (staging / "logs").mkdir(exist_ok=True)  # SLURM opens its output file there before the job runs
        os.chmod(staging, 0o755)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
