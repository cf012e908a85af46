"""A study's search space, written as Hydra writes sweeps, typed and checked before anything is written.

``stage.learning_rate=tag(log,interval(1e-5,1e-3))`` a float sampled on a log scale;
``stage.warmup_ratio=interval(0,0.1)`` a float; ``stage.lora_r=choice(8,16,64)`` (or ``8,16,64``) a
categorical; ``stage.num_epochs=range(1,4)`` the integers 1, 2, 3 (Hydra's range: the stop is left
out); ``tag(int,interval(8,64))`` an integer interval. Every other override is shared by every trial.

A dimension varies one value of the composed config (``stage.lora_r``): not a config group (compare
groups with a ``-m`` sweep), not ``run.*`` or ``launcher.*`` (the study owns them). Choices are
numbers, booleans or plain words, so a trial's override never needs quoting. Every bound and every
choice is composed and typed with the shared overrides before the study is written, so a value the
config refuses (``stage.lora_r=0``) is named at once, not in a job hours later.

The values a trial takes are read back from the journal (a file, so untrusted): :func:`trial_overrides`
accepts only keys of the space with values inside it.
"""

from __future__ import annotations

import math
import re

from llamantino.errors import ConfigError
from llamantino.records.manifests import StudyDimension

KEY = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+\Z")
WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
OWNED = ("run.", "launcher.")  # the study sets these for every trial
FUNCTIONS = re.compile(r"=\s*(tag|interval|choice|range|glob|shuffle|sort)\(")


def is_dimension(text: str) -> bool:
    """Whether a command-line argument is a search dimension (a Hydra sweep), not a shared override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if "," not in text and not FUNCTIONS.search(text):
        return False
    try:
        return OverridesParser.create().parse_override(text).is_sweep_override()
    except Exception:  # noqa: BLE001 - Hydra reports a malformed override when the config is composed
        return False


def _number(value, text: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"search dimension {text!r}: {what} {value!r} is not a finite number")
    return value


def _choice_text(value, text: str) -> str:
    """A choice as an override value: numbers, booleans, plain words (nothing needing quotes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(_number(value, text, "choice"))
    if isinstance(value, str) and WORD.match(value):
        return value
    raise ConfigError(f"search dimension {text!r}: choice {value!r} is not a number, a boolean or a plain word "
                      "(letters, digits, _ . + -); a search varies values that need no quoting")


def parse_dimension(text: str) -> StudyDimension:
    """One dimension from its Hydra sweep text; ConfigError (one line) naming what is wrong."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    try:
        override = OverridesParser.create().parse_override(text)
    except Exception as exc:  # noqa: BLE001 - Hydra's parser error, said in one line
        raise ConfigError(f"search dimension {text!r}: {' '.join(str(exc).split())[:300]}") from None
    key = override.key_or_group
    if not KEY.match(key or "") or override.package is not None:
        raise ConfigError(f"search dimension {text!r}: {key!r} is not a dotted config key (stage.learning_rate); a "
                          "search varies values, not config groups: compare groups with a -m sweep")
    if key.startswith(OWNED):
        raise ConfigError(f"search dimension {text!r}: {key} is set by the study for every trial; search other keys")
    value = override.value()
    tags = set(getattr(value, "tags", set()) or ())
    unknown = tags - {"log", "int"}
    if unknown:
        raise ConfigError(f"search dimension {text!r}: tag {sorted(unknown)[0]!r} is not known; valid tags: log, int")
    if isinstance(value, ChoiceSweep):
        if tags:
            raise ConfigError(f"search dimension {text!r}: choice takes no tags (log and int apply to intervals)")
        choices = [_choice_text(item, text) for item in value.list]
        if len(choices) < 2 or len(set(choices)) != len(choices):
            raise ConfigError(f"search dimension {text!r}: a choice needs at least two distinct values")
        return StudyDimension(key=key, kind="categorical", choices=choices, text=text)
    if isinstance(value, IntervalSweep):
        low, high = _number(value.start, text, "bound"), _number(value.end, text, "bound")
        integer = "int" in tags
        if integer and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"search dimension {text!r}: tag int needs whole-number bounds")
        return _interval(text, key, "int" if integer else "float", low, high, "log" in tags, None)
    if isinstance(value, RangeSweep):
        start, stop, step = (_number(part, text, "range value") for part in (value.start, value.stop, value.step))
        if step <= 0:
            raise ConfigError(f"search dimension {text!r}: range's step must be positive")
        count = math.ceil((stop - start) / step)
        if count < 2:
            raise ConfigError(f"search dimension {text!r}: range({start}, {stop}, {step}) holds fewer than two values "
                              "(the stop is left out, as in Hydra and Python)")
        integer = all(isinstance(part, int) for part in (value.start, value.stop, value.step))
        last = start + (count - 1) * step
        return _interval(text, key, "int" if integer else "float", start, last, "log" in tags, step)
    raise ConfigError(f"search dimension {text!r}: use interval(low,high), choice(a,b,...), range(start,stop[,step]) "
                      "or a,b,...; tag(log,...) for a log scale")


def _interval(text: str, key: str, kind: str, low: float, high: float, log: bool, step) -> StudyDimension:
    if not low < high:
        raise ConfigError(f"search dimension {text!r}: the interval is {'empty' if low == high else 'inverted'} "
                          f"({low} to {high}); write the lower bound first")
    if log and low <= 0:
        raise ConfigError(f"search dimension {text!r}: a log interval needs a positive lower bound, got {low}")
    if log and step is not None:
        raise ConfigError(f"search dimension {text!r}: a log scale takes no step (Optuna samples it continuously)")
    if kind == "int":
        low, high, step = int(low), int(high), (int(step) if step is not None else None)
    return StudyDimension(key=key, kind=kind, low=low, high=high, log=log, step=step, text=text)


def override_value(dimension: StudyDimension, value) -> str:
    """``key=value`` for one sampled value (a float keeps every digit it was sampled with)."""
    if dimension.kind == "int":
        return f"{dimension.key}={int(value)}"
    if dimension.kind == "float":
        return f"{dimension.key}={float(value)!r}"
    return f"{dimension.key}={value}"


def bounds(dimension: StudyDimension) -> list[str]:
    """The overrides that reach the space's edges: both ends of an interval, every choice."""
    if dimension.kind == "categorical":
        return [f"{dimension.key}={choice}" for choice in dimension.choices]
    return [override_value(dimension, dimension.low), override_value(dimension, dimension.high)]


def suggest(trial, dimension: StudyDimension):
    """The trial's value for a dimension, drawn by the study's sampler."""
    if dimension.kind == "categorical":
        return trial.suggest_categorical(dimension.key, list(dimension.choices))
    if dimension.kind == "int":
        return trial.suggest_int(dimension.key, int(dimension.low), int(dimension.high), step=int(dimension.step or 1),
                                 log=dimension.log)
    return trial.suggest_float(dimension.key, float(dimension.low), float(dimension.high), step=dimension.step,
                               log=dimension.log)


def _inside(dimension: StudyDimension, value) -> bool:
    if dimension.kind == "categorical":
        return isinstance(value, str) and value in dimension.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if dimension.kind == "int" and not float(value).is_integer():
        return False
    span = abs(dimension.high - dimension.low) * 1e-9
    return dimension.low - span <= value <= dimension.high + span


def trial_overrides(space: list[StudyDimension], params: dict, where: str) -> list[str]:
    """A trial's overrides from its values as the journal holds them, refused unless each key is one
    of the space's and each value lies inside its dimension."""
    keys = [dimension.key for dimension in space]
    if sorted(map(str, params)) != sorted(keys):
        raise ConfigError(f"{where}: the trial's values name {sorted(map(str, params))}, not the study's keys {keys}")
    overrides = []
    for dimension in space:
        value = params[dimension.key]
        if not _inside(dimension, value):
            raise ConfigError(f"{where}: {dimension.key}={value!r} lies outside the study's space ({dimension.text})")
        overrides.append(override_value(dimension, value))
    return overrides
