"""The Italian data formats: what each one is, and reading, checking and normalising its rows.

Pure Python (no torch, no datasets), shared by the Axolotl loaders in this plugin and by
``python -m llamantino data``, so a file that passes the check is read the same way in training.

Every fact about a format lives in its ``FormatSpec`` in ``FORMAT_SPECS``: its columns, its row
reader, its default prompt template, the Axolotl loader that reads it and how its rows are trained
on. Code elsewhere asks the spec and never branches on a format's name, so a new format is one new
entry there (plus its reader and row functions).

Formats and the columns each one reads (``columns`` maps a logical name to a column):

- ``text``: ``text``. Raw Italian text for language adaptation.
- ``instructions``: ``instruction``, ``input`` (optional), ``output``, ``system`` (optional).
  Alpaca style, with Italian or English column names through the mapping.
- ``conversations``: ``messages``. A list of turns in any of three shapes, detected per row:
  ``{"role", "content"}`` dicts, ShareGPT ``{"from", "value"}`` dicts, or UltraChat-ITA plain
  strings alternating user/assistant.
- ``preferences``: ``prompt`` (string or message list, optional when chosen/rejected are message
  lists), ``chosen``, ``rejected`` (strings, or ORPO-DPO-mix style message lists ending with
  the assistant answer).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any


class DataFormat(StrEnum):
    """The four formats, the one list of them (llamantino's schema and CLI read it from here);
    what each one is lives in its ``FormatSpec`` (``FORMAT_SPECS``)."""

    text = "text"
    instructions = "instructions"
    conversations = "conversations"
    preferences = "preferences"


FORMATS = tuple(DataFormat)


class Encoding(StrEnum):
    """How the rows of a format become training data."""

    document = "document"  # BOS + text + EOS chunked to sequence_len, all trained (encode.tokenise_text)
    prompt_response = "prompt_response"  # instruction template prompt masked, response trained (tokenise_instructions)
    chat = "chat"  # a conversation through a chat template, the assistant turns trained (tokenise_chat)
    pair = "pair"  # DPO prompt / chosen / rejected strings (preferences.pair_strings)


@dataclass(frozen=True)
class FormatSpec:
    """Everything the code knows about one data format."""

    format: DataFormat
    columns: Mapping[str, str]  # logical column -> the column read when the recipe maps none, in reading order
    required: tuple[str, ...]  # the logical columns a row cannot do without; the others are optional
    reader: Callable[[dict, dict[str, str]], Any]  # (row, columns) -> the canonical value, or RowError
    encoding: Encoding  # how its rows are trained on (see encoding_with for the template's say)
    loader_type: str  # the Axolotl ``datasets[].type`` of the plugin's loader for it
    default_template: str | None  # the prompt template when a recipe names none; None: no template
    # (canonical value, rendered by a chat template) -> the encoder's fields: text, messages, or
    # instruction/input/output; None for pairs, which preferences.pair_strings renders.
    to_row: Callable[[Any, bool], dict] | None = None
    prompt: Callable[[Any], list[dict]] | None = None  # the prompt turns of a canonical value (a sample's prompt)

    @property
    def corpus(self) -> bool:
        """Raw documents for language adaptation: cleaned (normalised, deduplicated, too-short ones
        dropped), chunked to ``sequence_len``, every token trained; the data of prepared corpora."""
        return self.encoding is Encoding.document

    @property
    def pairs(self) -> bool:
        """Preference pairs for DPO, loaded by Axolotl's preference pipeline (no ``ds_type``)."""
        return self.encoding is Encoding.pair

    @property
    def needs_chat_template(self) -> bool:
        """Its rows are conversations: only a chat template renders them."""
        return self.encoding is Encoding.chat

    def encoding_with(self, template_kind: str | None) -> Encoding:
        """The encoding under a template of ``template_kind`` (``chat``, ``instruction``, None):
        a prompt and its response become a user/assistant exchange under a chat template."""
        if self.encoding is Encoding.prompt_response and template_kind == "chat":
            return Encoding.chat
        return self.encoding


#: Role names seen in the wild, mapped to the chat-template roles.
ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "utente": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "assistente": "assistant",
}


class RowError(ValueError):
    """A row that does not fit its format; ``column`` names the offending column."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column
        self.message = message


# --- Italian-aware text normalisation -----------------------------------------------------------

# One translation table: apostrophes and curly double quotes to ASCII, tabs and non-breaking spaces
# to spaces, invisible characters removed, lone carriage returns to newlines.
_TRANSLATE = str.maketrans({
    **dict.fromkeys("\u2019\u2018\u02bc\u00b4\u0060", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u2033", '"'),
    **dict.fromkeys("\t\u00a0\u2007\u202f", " "),
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff"),
    "\r": "\n",
})
_NEEDS_TRANSLATION = re.compile("[" + re.escape("".join(chr(c) for c in _TRANSLATE)) + "]")
# The same table for re.sub, which is ~10x faster than str.translate on long non-ASCII text
_REPLACEMENT = {chr(code): value or "" for code, value in _TRANSLATE.items()}
_SPACES = re.compile(r" {2,}")
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """Normalise Italian text: NFC (``e`` + combining grave becomes ``è``), typographic
    apostrophes to ``'`` (``l’acqua`` and ``l'acqua`` become one string), curly double quotes to
    ``"`` (guillemets « » stay: they are standard Italian), no invisible characters, single spaces,
    at most one blank line between paragraphs, no leading or trailing whitespace.

    Each step runs only when the text needs it: this is on the data path of every document.
    """
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    if _NEEDS_TRANSLATION.search(text):
        text = _NEEDS_TRANSLATION.sub(lambda match: _REPLACEMENT[match.group()], text)
    if "  " in text:
        text = _SPACES.sub(" ", text)
    if "\n" in text:
        text = _SPACE_AROUND_NEWLINE.sub("\n", text)
        if "\n\n\n" in text:
            text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


# --- row readers: one per format, each returning the canonical form or raising RowError ---------


def _string(row: dict, columns: dict[str, str], logical: str, required: bool = True) -> str:
    column = columns[logical]
    value = row.get(column)
    if value is None:
        if required:
            raise RowError(column, f"missing column {column!r} ({logical})")
        return ""
    if not isinstance(value, str):
        raise RowError(column, f"column {column!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(column, f"column {column!r} ({logical}) is empty")
    return value


def read_text(row: dict, columns: dict[str, str]) -> str:
    """The raw text of a ``text`` row."""
    return _string(row, columns, "text")


def read_instruction(row: dict, columns: dict[str, str]) -> dict[str, str]:
    """``{"instruction", "input", "output", "system"}`` of an ``instructions`` row."""
    return {
        "instruction": _string(row, columns, "instruction"),
        "input": _string(row, columns, "input", required=False),
        "output": _string(row, columns, "output"),
        "system": _string(row, columns, "system", required=False),
    }


def _turn(turn, column: str, index: int, default_role: str) -> dict[str, str]:
    if isinstance(turn, str):
        return {"role": default_role, "content": turn}
    if not isinstance(turn, dict):
        raise RowError(column, f"turn {index} of {column!r} must be a string or an object")
    if "role" in turn and "content" in turn:
        role, content = turn["role"], turn["content"]
    elif "from" in turn and "value" in turn:
        role, content = turn["from"], turn["value"]
    else:
        raise RowError(
            column, f"turn {index} of {column!r} needs role/content or from/value, has {sorted(turn)}"
        )
    canonical = ROLE_ALIASES.get(str(role).lower())
    if canonical is None:
        raise RowError(
            column,
            f"turn {index} of {column!r} has unknown role {role!r}; valid roles: "
            + ", ".join(sorted(ROLE_ALIASES)),
        )
    if not isinstance(content, str):
        raise RowError(column, f"turn {index} of {column!r}: content must be a string")
    return {"role": canonical, "content": content}


def read_messages(value, column: str, *, must_end_with_assistant: bool = True) -> list[dict[str, str]]:
    """Canonical ``[{"role", "content"}]`` turns from any supported conversation shape.

    Checks: a non-empty list; at most one system turn, and only first; then user and assistant
    strictly alternating, starting with the user; non-empty contents; ending with the assistant
    unless ``must_end_with_assistant`` is false (a prompt).
    """
    if not isinstance(value, list) or not value:
        raise RowError(column, f"column {column!r} must be a non-empty list of turns")
    messages = []
    for index, turn in enumerate(value):
        # UltraChat-ITA rows are bare strings: even positions are the user, odd the assistant.
        messages.append(_turn(turn, column, index, "user" if index % 2 == 0 else "assistant"))
    body = messages[1:] if messages[0]["role"] == "system" else messages
    expected = "user"
    for index, message in enumerate(body):
        if message["role"] == "system":
            raise RowError(column, f"a system turn is only allowed first (turn {index})")
        if message["role"] != expected:
            raise RowError(
                column,
                f"turn {messages.index(message)} is {message['role']!r} but {expected!r} was expected "
                "(user and assistant must alternate, starting with the user)",
            )
        if not message["content"].strip():
            raise RowError(column, f"turn {messages.index(message)} of {column!r} is empty")
        expected = "assistant" if expected == "user" else "user"
    if not body:
        raise RowError(column, f"column {column!r} has no user turn")
    if must_end_with_assistant and body[-1]["role"] != "assistant":
        raise RowError(column, f"the last turn of {column!r} must be the assistant's")
    return messages


def read_conversation(row: dict, columns: dict[str, str]) -> list[dict[str, str]]:
    """Canonical messages of a ``conversations`` row."""
    column = columns["messages"]
    if column not in row:
        raise RowError(column, f"missing column {column!r} (messages)")
    return read_messages(row[column], column)


def read_preference(row: dict, columns: dict[str, str], as_script: bool = False) -> dict:
    """``{"prompt": [messages], "chosen": str, "rejected": str}`` of a ``preferences`` row.

    Chosen and rejected may be strings (then the prompt column is required) or message lists that
    share the prompt turns and end with the assistant answer (ORPO-DPO-mix-40k style). ``as_script``
    keeps what the ANITA DPO script kept: rejected's own prompt turns are ignored (chosen's are the
    prompt) and a pair with equal answers stays.
    """
    chosen_col, rejected_col, prompt_col = columns["chosen"], columns["rejected"], columns["prompt"]
    for column in (chosen_col, rejected_col):
        if column not in row:
            raise RowError(column, f"missing column {column!r}")
    chosen, rejected = row[chosen_col], row[rejected_col]
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen_msgs = read_messages(chosen, chosen_col)
        rejected_msgs = read_messages(rejected, rejected_col)
        if chosen_msgs[:-1] != rejected_msgs[:-1] and not as_script:
            raise RowError(rejected_col, f"{chosen_col!r} and {rejected_col!r} do not share the same prompt turns")
        prompt = chosen_msgs[:-1]
        chosen_text, rejected_text = chosen_msgs[-1]["content"], rejected_msgs[-1]["content"]
    elif isinstance(chosen, str) and isinstance(rejected, str):
        if prompt_col not in row:
            raise RowError(prompt_col, f"missing column {prompt_col!r} (prompt)")
        raw_prompt = row[prompt_col]
        if isinstance(raw_prompt, str):
            if not raw_prompt.strip():
                raise RowError(prompt_col, f"column {prompt_col!r} (prompt) is empty")
            prompt = [{"role": "user", "content": raw_prompt}]
        else:
            prompt = read_messages(raw_prompt, prompt_col, must_end_with_assistant=False)
        chosen_text, rejected_text = chosen, rejected
    else:
        raise RowError(chosen_col, f"{chosen_col!r} and {rejected_col!r} must both be strings or both message lists")
    for column, text in ((chosen_col, chosen_text), (rejected_col, rejected_text)):
        if not text.strip():
            raise RowError(column, f"column {column!r} is empty")
    if chosen_text.strip() == rejected_text.strip() and not as_script:
        raise RowError(rejected_col, f"{chosen_col!r} equals {rejected_col!r}: the pair teaches nothing")
    return {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text}


# --- per format: a canonical value as the encoders' fields (to_row) and as a prompt (prompt) ------


def _text_row(text: str, as_chat: bool) -> dict:
    return {"text": text}


def _instruction_row(value: dict, as_chat: bool) -> dict:
    if not as_chat:
        return {key: value[key] for key in ("instruction", "input", "output")}
    user = value["instruction"] + (f"\n\n{value['input']}" if value["input"].strip() else "")
    system = [{"role": "system", "content": value["system"]}] if value["system"].strip() else []
    return {"messages": system + [{"role": "user", "content": user}, {"role": "assistant", "content": value["output"]}]}


def _instruction_prompt(value: dict) -> list[dict]:
    return [{"role": "user", "content": value["instruction"] + (f"\n\n{value['input']}" if value["input"] else "")}]


def _conversation_row(messages: list, as_chat: bool) -> dict:
    return {"messages": messages}


def _conversation_prompt(messages: list) -> list[dict]:
    return messages[: next(i for i, m in enumerate(messages) if m["role"] == "user") + 1]


def _preference_prompt(pair: dict) -> list[dict]:
    return pair["prompt"]


def _columns(*names: str) -> Mapping[str, str]:
    return MappingProxyType({name: name for name in names})


#: The one table of formats: a new format is one entry here (and its functions above).
FORMAT_SPECS: dict[DataFormat, FormatSpec] = {spec.format: spec for spec in (
    FormatSpec(format=DataFormat.text, columns=_columns("text"), required=("text",), reader=read_text,
               encoding=Encoding.document, loader_type="llamantino_plugin.text", default_template=None,
               to_row=_text_row),
    FormatSpec(format=DataFormat.instructions, columns=_columns("instruction", "input", "output", "system"),
               required=("instruction", "output"), reader=read_instruction, encoding=Encoding.prompt_response,
               loader_type="llamantino_plugin.instructions", default_template="alpaca_it",
               to_row=_instruction_row, prompt=_instruction_prompt),
    FormatSpec(format=DataFormat.conversations, columns=_columns("messages"), required=("messages",),
               reader=read_conversation, encoding=Encoding.chat, loader_type="llamantino_plugin.conversations",
               default_template="llama3", to_row=_conversation_row, prompt=_conversation_prompt),
    # Axolotl resolves external DPO strategies from top-level names only, hence ``llamantino_plugin.dpo``.
    FormatSpec(format=DataFormat.preferences, columns=_columns("prompt", "chosen", "rejected"),
               required=("chosen", "rejected"), reader=read_preference, encoding=Encoding.pair,
               loader_type="llamantino_plugin.dpo", default_template="llama3", prompt=_preference_prompt),
)}


def format_spec(fmt: str) -> FormatSpec:
    """The spec of a format by name; unknown names are refused, listing the valid ones."""
    if fmt not in FORMAT_SPECS:
        raise ValueError(f"unknown data format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return FORMAT_SPECS[fmt]


def loader_spec(loader_type: str) -> FormatSpec | None:
    """The spec of the format an Axolotl ``datasets[].type`` loads; None for a loader not the plugin's."""
    return next((spec for spec in FORMAT_SPECS.values() if spec.loader_type == loader_type), None)


#: The format of prepared corpora (token-budgeted text for language adaptation): the one corpus format.
(CORPUS_FORMAT,) = (spec.format for spec in FORMAT_SPECS.values() if spec.corpus)


def columns_for(fmt: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The column mapping of a format with user overrides applied; unknown names are refused."""
    columns = dict(format_spec(fmt).columns)
    for logical, column in (overrides or {}).items():
        if logical not in columns:
            raise ValueError(
                f"format {fmt!r} has no column {logical!r}; it reads: {', '.join(columns)}"
            )
        columns[logical] = column
    return columns


def dataset_entries(path: str, fmt: str, *, split: str, subset: str | None = None, revision: str | None = None,
                    local: bool = False, columns: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """(Axolotl's ``datasets`` entry, the plugin's ``llamantino_datasets`` entry) of one source: the
    one place a recipe names a source, for the run's recipe and the rows step's alike."""
    spec = format_spec(fmt)
    entry: dict[str, Any] = {"path": path}
    described: dict[str, Any] = {"path": path}
    if subset:
        entry["name"] = described["name"] = subset
    entry["split"] = split
    if revision:
        entry["revision"] = revision
    if local and not spec.pairs:  # Axolotl's DPO datasets have no ds_type
        entry["ds_type"] = "json"
    entry["type"] = spec.loader_type
    described["format"] = fmt
    if columns:
        described["columns"] = dict(columns)
    return entry, described


# --- files ---------------------------------------------------------------------------------------


def shown_path(path: str | Path) -> str:
    """A file name fit for a one-line message: as it is when it is printable UTF-8, else the
    ``repr`` of its bytes (``b'shard\\xff.jsonl.gz'``: Linux names are bytes, not always text)."""
    text = os.fspath(path)
    if isinstance(text, str) and text.isprintable():
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
            pass
    return ascii(os.fsencode(text))


def is_text_name(path: str | Path) -> bool:
    """Whether a file name is printable UTF-8 (one that can be written into a recipe or a record)."""
    return shown_path(path) == os.fspath(path)


class DataFileError(ValueError):
    """A problem with a data file, located by path and (where it applies) line and column."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, column: str | None = None):
        where = f"{shown_path(path)}:{line}" if line is not None else shown_path(path)
        if column:
            where += f" [{column}]"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.column, self.message = str(path), line, column, message


# --- bounded reading: the limits every reader of a data file applies ----------------------------

#: One record (a JSON Lines line, a Parquet row's text) longer than this is a bad row. A line is
#: never held whole past it: it is read in pieces of this size and dropped piece by piece.
MAX_LINE_BYTES = 16 << 20
#: Bytes read from one data file (after decompression) before it is refused as too large or as a
#: decompression bomb (a 1 MB gzip file can hold 1 GiB). The environment variable
#: ``LLAMANTINO_MAX_FILE_BYTES`` raises or lowers it (set it in the job's environment too:
#: ``hardware.slurm.env``).
MAX_FILE_BYTES = 8 << 30
MAX_FILE_BYTES_ENV = "LLAMANTINO_MAX_FILE_BYTES"
_READ_BUFFER = 1 << 20


def max_file_bytes() -> int:
    """MAX_FILE_BYTES, or ``$LLAMANTINO_MAX_FILE_BYTES`` when set."""
    value = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not value:
        return MAX_FILE_BYTES
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_FILE_BYTES_ENV}={value!r} must be a positive number of bytes")
    return int(value)


def read_lines(path: str | Path) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, raw line)`` of each non-blank line of a JSON Lines file, plain or gzip
    (``.gz``), with bounded memory: a line over MAX_LINE_BYTES comes as ``None`` (a bad row, see
    :func:`decode_jsonl_line`) after it is skipped in MAX_LINE_BYTES pieces. DataFileError for a
    file over :func:`max_file_bytes` after decompression and for a broken gzip file (truncated,
    bad CRC, not gzip)."""
    limit = max_file_bytes()
    total, number = 0, 0
    try:
        with open(path, "rb") as raw:
            stream = io.BufferedReader(gzip.GzipFile(fileobj=raw), _READ_BUFFER) if str(path).endswith(".gz") else raw
            while True:
                line = stream.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                number += 1
                total += len(line)
                too_long = len(line) > MAX_LINE_BYTES
                while too_long and not line.endswith(b"\n"):  # the rest of an over-long line, never held whole
                    line = stream.readline(MAX_LINE_BYTES)
                    total += len(line)
                    if not line or total > limit:
                        break
                if total > limit:
                    raise DataFileError(path, f"more than {limit:,} bytes after decompression (a decompression bomb, "
                                              f"or a file too large to read whole: {MAX_FILE_BYTES_ENV} raises the "
                                              "limit)", number)
                if too_long:
                    yield number, None
                elif line.strip():
                    yield number, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # cut short, bad CRC, not gzip, corrupt
        raise DataFileError(path, f"not a readable gzip file ({exc}); download it again", number + 1) from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value) -> bool:
    """Whether a decoded JSON value holds a lone UTF-16 surrogate (valid JSON, not encodable text)."""
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def decode_jsonl_line(raw: bytes | None, path: str | Path, number: int) -> dict:
    """Decode one raw JSON Lines line; DataFileError names the line for invalid UTF-8, invalid
    JSON (too deeply nested, numbers too long), lone surrogates, rows that are not JSON objects and
    lines over MAX_LINE_BYTES (``raw`` None, as :func:`read_lines` yields them)."""
    if raw is None:
        raise DataFileError(path, f"the line is longer than {MAX_LINE_BYTES:,} bytes, the limit of one record", number)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"invalid UTF-8 at byte {exc.start} of the line", number) from None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFileError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", number) from None
    except RecursionError:
        raise DataFileError(path, "malformed JSON: nested too deeply", number) from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise DataFileError(path, f"malformed JSON: {exc}", number) from None
    if not isinstance(row, dict):
        raise DataFileError(path, f"each line must be a JSON object, got {type(row).__name__}", number)
    if "\\u" in line and _lone_surrogate(row):
        raise DataFileError(path, "a string holds a lone surrogate (\\ud800-\\udfff): not encodable text", number)
    return row


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` of a JSON Lines file (plain or gzip), skipping blank lines;
    the first unreadable or over-long line raises DataFileError."""
    for number, raw in read_lines(path):
        yield number, decode_jsonl_line(raw, path, number)


@dataclass
class FileReport:
    """What a check found in one file; counts go to the run's provenance."""

    path: str
    format: str
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "rows": self.rows, "kept": self.kept,
                "skipped": self.skipped, "errors": self.errors[:20]}


def check_file(path: str | Path, fmt: str, columns: dict[str, str], policy: str = "strict",
               keep: list | None = None) -> FileReport:
    """Check every row of a local JSONL file against a format.

    ``policy="strict"`` raises DataFileError at the first bad row (file, line, column);
    ``policy="skip"`` counts and drops bad rows (appending the good raw lines to ``keep``
    when given: a list, or a writer with ``append``). Malformed JSON, invalid UTF-8 and lines over MAX_LINE_BYTES are bad rows too.
    An empty file, a file with no good row left, or one over MAX_FILE_BYTES is always an error.
    """
    if policy not in ("strict", "skip"):
        raise ValueError(f"unknown bad-row policy {policy!r}; valid: strict, skip")
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFileError(path, "file is empty")
    if path.suffix not in (".jsonl", ".json"):
        raise DataFileError(path, "unsupported file type; local data files must be JSON Lines (.jsonl)")
    report = FileReport(str(path), fmt)
    reader = format_spec(fmt).reader
    missing_reported = False
    for number, raw in read_lines(path):
        report.rows += 1
        try:
            row = decode_jsonl_line(raw, path, number)
            try:
                reader(row, columns)
            except RowError as exc:
                if not missing_reported and exc.message.startswith("missing column"):
                    missing_reported = True
                    exc = RowError(exc.column, f"{exc.message}; the row has: {', '.join(sorted(row))}")
                raise DataFileError(path, exc.message, number, exc.column) from None
        except DataFileError as exc:
            if policy == "strict":
                raise
            report.skipped += 1
            if len(report.errors) < 20:  # the first ones, named; the rest counted
                report.errors.append(str(exc))
            continue
        report.kept += 1
        if keep is not None:
            keep.append(raw)
    if report.rows == 0:
        raise DataFileError(path, "file has no rows")
    if report.kept == 0:
        first = report.errors[0] if report.errors else ""
        raise DataFileError(path, f"no valid row left: all {report.rows} rows were bad (first: {first})")
    return report
