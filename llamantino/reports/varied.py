"""Which command-line overrides tell a set of runs apart (the points of a sweep, the models compared).

``collect`` and ``compare`` label lines, bars and columns by the keys that vary only; the keys every
run shares are said once (paths left out: they name where runs were written, not how they differ).
"""

from __future__ import annotations

from dataclasses import dataclass

VALUE_CHARS = 40  # a value longer than this is cut in labels (records are untrusted: no 1 MB legends)
ABSENT = "(unset)"  # the value of a key a run was not given


def split_override(text: str) -> tuple[str, str]:
    """(key, value) of a Hydra override (``+key=v``, ``++key=v``, ``~key``): the key without its prefix."""
    key, _, value = str(text).partition("=")
    return key.lstrip("+~"), value


def shown_value(value: str) -> str:
    """A value as a label shows it: a path by its last two parts, anything long cut short."""
    if value.startswith("/") and value.strip("/"):
        value = "/".join(value.rstrip("/").split("/")[-2:])
    return value if len(value) <= VALUE_CHARS else value[:VALUE_CHARS - 3] + "..."


def is_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


@dataclass(frozen=True)
class Varied:
    """The override keys of a set of runs: those that differ (in first-seen order) and those all share."""

    keys: list[str]
    constant: dict[str, str]
    values: list[dict[str, str]]  # each run's key -> value

    def label(self, index: int) -> str:
        """``key=value`` of the varied keys of run ``index`` (empty when nothing varies)."""
        return " ".join(f"{key}={shown_value(self.values[index].get(key, ABSENT))}" for key in self.keys)

    def columns(self, index: int) -> dict[str, str]:
        """One table column per varied key: run ``index``'s value."""
        return {key: shown_value(self.values[index].get(key, ABSENT)) for key in self.keys}

    def constant_line(self) -> str:
        """The shared overrides, paths left out; empty when there are none."""
        return " ".join(f"{key}={shown_value(value)}" for key, value in self.constant.items() if not is_path(value))


def varied(override_lists: list[list[str]], ignore: tuple[str, ...] = ()) -> Varied:
    """The overrides of each run, split into the keys that vary across them and those they share.

    A key given to some runs and not to others varies (its absence is a value). Keys in ``ignore``
    are left out of both (a caller labels what they stand for its own way)."""
    values = []
    for overrides in override_lists:
        pairs = dict(split_override(text) for text in overrides)
        values.append({key: value for key, value in pairs.items() if key not in ignore})
    order = list(dict.fromkeys(key for run in values for key in run))
    keys = [key for key in order if len({run.get(key, ABSENT) for run in values}) > 1]
    constant = {key: values[0][key] for key in order if key not in keys} if values else {}
    return Varied(keys=keys, constant=constant, values=values)
