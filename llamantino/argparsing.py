"""The one argument parser of every entry point (the verbs in llamantino/cli/, the job commands in
llamantino/job/): argparse's own, except that a usage error is a :class:`ConfigError`.

argparse prints a multi-line usage and exits 2 on its own; raised instead, a usage error reaches
:func:`llamantino.errors.entry` like every other user error and ends in one ``error:`` line and exit 2.
``--help`` still prints the help and exits 0. Subparsers inherit the class (``add_subparsers``
builds them with ``type(parser)``).
"""

from __future__ import annotations

import argparse
import re

from llamantino.errors import ConfigError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        usage = re.sub(r"\s+", " ", self.format_usage()).strip().removeprefix("usage: ")
        raise ConfigError(f"{self.prog}: {message} (usage: {usage})")
