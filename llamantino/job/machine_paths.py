"""Paths of this machine in what is published: found in text and JSON, replaced by ``<path>`` or
removed, and a check that none is left (model cards, a release's files)."""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
from pathlib import Path

from llamantino.errors import RunDirError
from llamantino.records.files import MAX_STATE_BYTES, load_json, write_text

PATH_PLACEHOLDER = "<path>"
TOKENIZER_JSON = "tokenizer.json"
UNSCANNED = {TOKENIZER_JSON: ("model",)}  # the learned vocabulary and merges: tokens of text, not paths
REMOVE = object()  # a JSON key the scrubbed file drops
_NOT_IN_PATH = r"\s'\"`,;|()\[\]{}<>"
_PATH_CHARS = rf"[^{_NOT_IN_PATH}]"
_SEGMENT = rf"[^{_NOT_IN_PATH}/]"  # a character of a path's component
# A place on a machine, as text: "/" or "~" starting a word (not "and/or", "</s>" or a URL's "//host/a").
ABSOLUTE_PATH = re.compile(rf"(?<![\w./~<-])(?:~[\w.-]*(?!{_PATH_CHARS})|~[\w.-]*/|/(?!/)){_PATH_CHARS}*")
# A path of two components or more (``/a/b``, ``~/a``), starting a word: not "and/or", "</s>" or a URL's host.
_PATH_IN_TEXT = re.compile(rf"(?<![\w./~<-])(?:~[\w.-]*/|/{_SEGMENT}+/)(?:{_SEGMENT}|/)*")
# A JSON string that is a path and nothing else (a token such as "/" or "~" is not).
_PATH_VALUE = re.compile(r"(?:~[\w.-]*)?(?:/[\w.@+-]+){2,}/?|~[\w.-]*/[\w.@+/-]*")


def _alone(place: str) -> str:
    """A pattern for ``place`` that is not part of a longer name."""
    return rf"(?<![\w.-]){re.escape(place)}(?![\w.-])"


def machine_folders() -> list[str]:
    """Folders that name this machine or its user: home, $WORK, $SCRATCH, $TMPDIR (longest first)."""
    found = {os.path.expanduser("~"), *(os.environ.get(name, "") for name in ("HOME", "WORK", "SCRATCH", "TMPDIR"))}
    return sorted((folder.rstrip("/") for folder in found if len(folder.rstrip("/")) > 1), key=len, reverse=True)


def machine_places(runs: list[Path]) -> list[str]:
    """Paths that name this machine: its folders, and the folders of the runs (and above)."""
    places = set(machine_folders())
    for path in runs:
        resolved = Path(path).resolve()
        places.update(str(folder) for folder in (resolved, *resolved.parents) if folder != Path(folder.anchor))
    return sorted(places, key=len, reverse=True)


# --- replacing and removing ------------------------------------------------------------------------


def without_machine_folders(text: str) -> str:
    """``text`` with every path under the home folder, $WORK, $SCRATCH or $TMPDIR as ``<path>``."""
    for folder in machine_folders():
        text = re.sub(rf"{_alone(folder)}{_PATH_CHARS}*", PATH_PLACEHOLDER, text)
    return text


def scrub_paths(text: str) -> str:
    """``text`` with every machine path (absolute, ``~``, or under the home folder) as ``<path>``."""
    return ABSOLUTE_PATH.sub(PATH_PLACEHOLDER, without_machine_folders(text))


def reproduce_command(overrides: list[str]) -> str:
    """The shell command a card gives to make a run again: its Hydra overrides with the places on this
    machine (an output root, an input run, a data file) as ``<path>``, each quoted for the shell."""
    return " ".join(["python -m llamantino", *(shlex.quote(scrub_paths(override)) for override in overrides)])


def machine_path(value: str) -> bool:
    """A JSON string that is a path on this machine (``/a/b``, ``~/a``, or under the home folder)."""
    return bool(_PATH_VALUE.fullmatch(value)) or without_machine_folders(value) != value


def scrub_json(path: Path, settings: dict) -> None:
    """Rewrite a JSON file without machine paths: the top-level keys in ``settings`` set (or dropped,
    REMOVE), any other string that is a path dropped, the home folder inside longer text replaced."""
    skipped = UNSCANNED.get(path.name, ())

    def clean(value):
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items() if not (isinstance(item, str) and machine_path(item))}
        if isinstance(value, list):
            return [clean(item) for item in value if not (isinstance(item, str) and machine_path(item))]
        return without_machine_folders(value) if isinstance(value, str) else value

    data = load_json(path, MAX_STATE_BYTES)
    if not isinstance(data, dict):
        raise RunDirError(f"{path} must hold a JSON object")
    written = {}
    for key, item in data.items():
        if key in settings:
            if settings[key] is not REMOVE:
                written[key] = settings[key]
        elif key in skipped:
            written[key] = item
        elif not (isinstance(item, str) and machine_path(item)):
            written[key] = clean(item)
    if written != data:
        write_text(path, json.dumps(written, indent=2, ensure_ascii=False) + "\n")


def scrub_files(folder: Path, settings: dict[str, dict]) -> None:
    """scrub_json every JSON file of ``folder``, with the settings of its name."""
    for path in sorted(folder.glob("*.json")):
        scrub_json(path, settings.get(path.name, {}))


# --- checking --------------------------------------------------------------------------------------


def leak(text: str, places: list[str], user: str) -> str | None:
    """The first machine path or user name (as a path component) in ``text``, None when clean."""
    for place in places:
        if re.search(_alone(place), text):
            return place
    found = _PATH_IN_TEXT.search(text)
    if found:
        return found.group(0)
    if len(user) > 1 and re.search(rf"[/\\]{re.escape(user)}(?![\w.-])|(?<![\w.-]){re.escape(user)}[/\\]", text):
        return f"the user name {user!r} as a path component"
    return None


def json_strings(value, skipped=()):
    """Every string of parsed JSON, keys included (top-level keys in ``skipped`` left out)."""
    stack = [value]
    first = True
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if first and key in skipped:
                    continue
                yield key
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            yield item
        first = False


def check_no_machine_paths(files: list[Path], places: list[str]) -> None:
    """Fail naming the file and what it holds when any of the text ``files`` names this machine."""
    user = getpass.getuser()
    for path in files:
        if path.suffix == ".json":
            texts = json_strings(load_json(path, MAX_STATE_BYTES), UNSCANNED.get(path.name, ()))
        else:
            texts = [path.read_text(encoding="utf-8", errors="replace")]
        for text in texts:
            found = leak(text, places, user)
            if found:
                raise RunDirError(f"the release's {path.name} names this machine ({found}); nothing was released")
