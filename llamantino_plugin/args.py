"""Config keys of the llamantino plugin, declared so Axolotl validates them instead of dropping them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from llamantino_plugin.formats import FORMATS, columns_for
from llamantino_plugin.templates import template_info


class DatasetSpec(BaseModel):
    """How the plugin reads one entry of ``datasets`` (matched by ``path`` and ``name``)."""

    path: str
    name: str | None = None
    format: Literal[tuple(fmt.value for fmt in FORMATS)]  # the one list, in formats.py
    columns: dict[str, str] = Field(default_factory=dict)
    # Text: normalise each document (formats.normalise_text) before hashing and tokenising; false: as
    # read. llamantino_text_dedup and llamantino_text_min_chars apply either way.
    normalize: bool = True

    @model_validator(mode="after")
    def _columns_exist(self):
        columns_for(self.format, self.columns)  # raises naming the valid logical columns
        return self


class TrialSpec(BaseModel):
    """A run that is one trial of an Optuna study (``llamantino search``): where to report, what, how to prune."""

    journal: str  # the study's JournalStorage file
    study: str  # the Optuna study's name in it
    number: int = Field(ge=0)  # the trial's number in the study
    metric: str  # an eval metric the trainer reports (eval_loss)
    direction: Literal["minimize", "maximize"] = "minimize"
    pruner: Literal["none", "median"] = "none"
    startup_trials: int = Field(default=1, ge=0)


class LlamantinoArgs(BaseModel):
    """Top-level keys of an Axolotl recipe that the llamantino plugin reads, with their defaults: the
    plugin reads them by attribute, through ``plugin_args(cfg)``, and never restates a default."""

    llamantino_template: str | None = Field(
        default=None,
        json_schema_extra={"description": "prompt template: llamantino2_chat, llamantino2_chat_70b, anita, llama3, "
                                          "alpaca_it; unset = the data format's default"},
    )
    llamantino_system_prompt: str | None = Field(
        default=None,
        json_schema_extra={"description": "system prompt of chat templates; unset = published default, '' = none"},
    )
    llamantino_datasets: list[DatasetSpec] | None = None
    llamantino_bad_rows: Literal["strict", "skip"] = Field(
        default="strict", json_schema_extra={"description": "strict: fail on a bad row; skip: drop and count it"}
    )
    llamantino_text_min_chars: int = Field(
        default=20, ge=0, json_schema_extra={"description": "text documents shorter than this (normalised) are dropped"}
    )
    llamantino_prepared: str | None = Field(
        default=None,
        json_schema_extra={"description": "a prepared corpus (<cache>/prepared/<key>); trained on memory-mapped"},
    )
    llamantino_prepared_blocks: dict[str, int] | None = Field(
        default=None,
        json_schema_extra={"description": "blocks taken from each source of the prepared corpus, in sample order "
                                          "(unset: all); a smaller budget reads a prefix of a larger entry"},
    )
    llamantino_text_dedup: bool = Field(
        default=True, json_schema_extra={"description": "drop exact duplicate text documents (after normalisation)"}
    )
    llamantino_tracking_record: str | None = Field(
        default=None,
        json_schema_extra={"description": "file in the run directory keeping the W&B/MLflow run id, so a requeued "
                                          "or resumed job continues the same tracker run"},
    )
    llamantino_script_exact: bool = Field(
        default=False,
        json_schema_extra={"description": "the text, tokens and truncation of the ANITA SFT and DPO scripts "
                                          "(llamantino_plugin/script_exact.py; Llama-3 chat templates only)"},
    )
    llamantino_trial: TrialSpec | None = Field(
        default=None,
        json_schema_extra={"description": "this run is a trial of a study: the objective's values at each "
                                          "evaluation go to its journal; the pruner may stop it"},
    )
    llamantino_lora_seed: int | None = Field(
        default=None,
        json_schema_extra={"description": "seeds the adapter's initial weights alone (unset: the run's seed)"},
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data):
        """A key given as null means the same as a key left out: its default."""
        if not isinstance(data, dict):
            return data
        own = LlamantinoArgs.model_fields  # in Axolotl's merged config model too, only the plugin's keys
        return {key: value for key, value in data.items() if not (key in own and value is None)}

    @field_validator("llamantino_template")
    @classmethod
    def _known_template(cls, value):
        if value is not None:
            template_info(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _datasets_described(cls, data):
        """Every dataset whose type is a llamantino loader needs a matching llamantino_datasets entry."""
        if not isinstance(data, dict):
            return data
        for index, dataset in enumerate(data.get("datasets") or []):
            kind = str(_get(dataset, "type") or "")
            if kind.startswith("llamantino_plugin.") and find_spec(data, dataset) is None:
                raise ValueError(
                    f"datasets[{index}] (path {_get(dataset, 'path')!r}) uses {kind} but has no entry "
                    "in llamantino_datasets with the same path and name"
                )
        return data


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def find_spec(cfg, dataset):
    """The ``llamantino_datasets`` entry describing one entry of ``datasets`` (same path and name), or None."""
    for spec in _get(cfg, "llamantino_datasets") or []:
        if _get(spec, "path") == _get(dataset, "path") and _get(spec, "name") == _get(dataset, "name"):
            return spec
    return None


def plugin_args(cfg) -> LlamantinoArgs:
    """The plugin's keys of a config (Axolotl's ``DictDefault`` or a plain dict), parsed once, defaults applied."""
    if isinstance(cfg, LlamantinoArgs):
        return cfg
    return LlamantinoArgs.model_validate({name: cfg.get(name) for name in LlamantinoArgs.model_fields})
