"""Errors llamantino reports to the user, and the one handler every entry point ends in.

Library code raises these; only :func:`entry` turns them (and Hydra's or OmegaConf's composition
errors, and file-system errors) into one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import re
import sys


class LlamantinoError(Exception):
    """A problem with the user's input or environment; printed without a traceback, exit code 2."""


class ConfigError(LlamantinoError):
    """The composed config asks for something that cannot work (names the key and the valid values)."""


class DataError(LlamantinoError):
    """A data file is missing, empty or malformed (names the file, line and column)."""


class ValidationError(LlamantinoError):
    """Axolotl rejected the rendered recipe (carries Axolotl's own message and the key)."""


class LaunchError(LlamantinoError):
    """Training or submission failed (says where the log is)."""


class RunDirError(LlamantinoError):
    """A run, pipeline or sweep directory is missing, exists already, or holds broken files."""


def one_line(text: str) -> str:
    """Collapse a multi-line message into one line (Hydra and OmegaConf write several)."""
    lines = [line.strip() for line in str(text).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("object_type=", "reference_type=", "Set the environment variable"))]
    return re.sub(r"\s+", " ", "; ".join(lines)).strip() or "unknown error"


def user_error(exc: BaseException) -> str | None:
    """The message of an error the user caused, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, LlamantinoError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    module = type(exc).__module__ or ""
    if module.startswith(("hydra.", "omegaconf.")):
        cause = exc.__cause__ if module.startswith("hydra.") and exc.__cause__ is not None else None
        return one_line(f"{exc}\n{cause}" if cause is not None and str(cause) not in str(exc) else str(exc))
    return None


def report(exc: BaseException) -> bool:
    """Print the ``error:`` line of a user error; False for a bug (the caller re-raises it)."""
    message = user_error(exc)
    if message is None:
        return False
    # A failed training keeps the tail of its log after the error line; everything else is one line.
    print(f"error: {message if isinstance(exc, LaunchError) else one_line(message)}", file=sys.stderr)
    return True


def entry(main, argv=None) -> int:
    """Run a command's ``main(argv)``: a user error prints one ``error:`` line and returns 2."""
    try:
        return main(argv) or 0
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs by report()
        if not report(exc):
            raise
        return 2
