"""Errors llamantino reports to the user: one line that names the file, key or option and what is valid."""


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


def run_command(function, args) -> int:
    """Run a command-line subcommand: user errors print one ``error:`` line and exit 2."""
    import sys

    try:
        return function(args)
    except LlamantinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
