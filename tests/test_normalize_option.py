"""``data.normalize`` (a registry entry's, or the command line's): text normalisation per data source.

``normalize: false`` trains on a source's documents exactly as read: no NFC, no apostrophe or
double-quote rewriting, no whitespace collapse. Exact-duplicate and too-short removal are not part of
the switch: ``stage.text_dedup`` and ``stage.text_min_chars`` still govern them, on the raw text. Local
text goes through the run's recipe and the plugin's own loader; corpus-scale text through the planner
and the real prepare job, whose key differs between the two settings.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import build, cli

QUOTED = "Disse: \u201cVieni  qui\u201d, e l\u2019acqua scorreva lenta nel fiume."  # curly quotes, apostrophe, two spaces
SPACED = "Il  vento   soffia forte sulle colline toscane."
PLAIN = "Il vento soffia forte sulle colline toscane."  # SPACED once normalised: a duplicate only then
SHORT = "Breve."  # under stage.text_min_chars (20) either way
ROWS = [QUOTED, SPACED, PLAIN, QUOTED, SHORT]  # the second QUOTED is an exact duplicate either way


def normalised(text: str) -> str:
    from llamantino_plugin.formats import normalise_text

    return normalise_text(text)


# What each setting keeps, and its counts: dedup and min_chars apply to both, on the text as trained.
KEPT = {"true": [normalised(QUOTED), normalised(SPACED)], "false": [QUOTED, SPACED, PLAIN]}
COUNTS = {"true": {"rows": 5, "normalised": 3, "duplicates": 2, "too_short": 1},
          "false": {"rows": 5, "normalised": 0, "duplicates": 1, "too_short": 1}}


def test_the_normalised_text_is_what_the_issue_says():
    assert normalised(QUOTED) == 'Disse: "Vieni qui", e l\'acqua scorreva lenta nel fiume.'
    assert normalised(SPACED) == PLAIN


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "testo.jsonl"
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in ROWS))
    return path


@pytest.mark.parametrize("normalize", ["true", "false"])
def test_local_text_reaches_the_loader_as_the_option_says(compose, tiny_tokenizer, text_file, tmp_path, normalize):
    """Composed, rendered (and validated by Axolotl), then loaded by the plugin's own entry point
    from the recipe's keys: the tokens are those of the normalised text, or of the text as read."""
    import datasets
    from axolotl.utils.dict import DictDefault

    from llamantino_plugin.encode import tokenise_text
    from llamantino_plugin.loading import loader

    cfg = compose("stage=adapt", "data=it_text_sample", f"data.path={text_file}", f"data.normalize={normalize}",
                  "launcher=dry")
    recipe = build(cfg, tmp_path / "run").recipe
    (described,) = recipe["llamantino_datasets"]
    assert described.get("normalize", True) is (normalize == "true")  # written only when false
    assert recipe["llamantino_text_dedup"] is True and recipe["llamantino_text_min_chars"] == 20

    output = tmp_path / "output"
    run_cfg = DictDefault({**recipe, "output_dir": str(output)})
    rows = datasets.Dataset.from_list([json.loads(line) for line in text_file.read_text().splitlines()])
    wrapped = loader("text")(tiny_tokenizer, run_cfg, DictDefault(recipe["datasets"][0])).wrap_dataset(
        rows, process_count=1)
    expected = tokenise_text({"text": KEPT[normalize]}, tokenizer=tiny_tokenizer, sequence_len=recipe["sequence_len"])
    assert wrapped["input_ids"] == expected["input_ids"]
    first = tiny_tokenizer.decode(wrapped["input_ids"][0], skip_special_tokens=True)
    if normalize == "true":
        assert '"Vieni qui"' in first and "l'acqua" in first and "\u201c" not in first
    else:
        assert "\u201cVieni  qui\u201d" in first and "l\u2019acqua" in first
    report = json.loads((output / "llamantino_data_report.json").read_text())
    (counts,) = report.values()
    assert {key: counts.get(key, 0) for key in COUNTS[normalize]} == COUNTS[normalize]


def test_a_registry_entry_without_normalisation_renders_false(compose, text_file, tmp_path):
    """The default (true) leaves the recipe as it was before the option."""
    cfg = compose("stage=adapt", "data=it_text_sample", f"data.path={text_file}", "launcher=dry")
    assert cfg.data.normalize is True
    assert "normalize" not in build(cfg, tmp_path / "run", validate=False).recipe["llamantino_datasets"][0]


@pytest.mark.parametrize("normalize", ["true", "false"])
def test_data_preview_shows_the_text_as_trained(text_file, tmp_path, normalize):
    proc = cli("preview", str(text_file), "--format", "text", "--normalize", normalize, "-n", "1",
               verb="data", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout
    if normalize == "true":
        assert '\\"Vieni qui\\"' in shown or '"Vieni qui"' in shown
        assert "\u201c" not in shown
    else:
        assert "\u201cVieni  qui\u201d" in shown


# --- corpus scale: the prepared corpus ----------------------------------------------------------

MC4 = ("datasets", "gsarti", "clean_mc4_it", "clean")
SEQ = 128


def _mirror(root: Path) -> Path:
    folder = root.joinpath(*MC4)
    folder.mkdir(parents=True)
    with gzip.open(folder / "c4-it.tfrecord-00000-of-01024.json.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": text, "url": "https://example.it/"}) + "\n" for text in ROWS)
    return root


def _composed(mirror: Path, cache: Path, *extra: str):
    from llamantino.config.compose import compose_config

    return compose_config(["data=clean_mc4_it", "stage=adapt", f"stage.sequence_len={SEQ}", "stage.max_steps=null",
                           "stage.sample_packing=false", "hardware.prepare.tasks=1",
                           f"hardware.storage.hub_mirror={mirror}", f"hardware.storage.cache={cache}", *extra])


def _plan(mirror: Path, cache: Path, *extra: str, cfg=None):
    from llamantino.inputs.corpus import plan_corpus
    from llamantino.inputs.tiny import ensure_tiny_model
    from llamantino.records.provenance import ModelSource, SourceKind

    cfg = cfg or _composed(mirror, cache, *extra)
    return plan_corpus(cfg, ModelSource(kind=SourceKind.built, builder="tiny_llama", path=str(ensure_tiny_model())), 1)


def test_the_prepared_corpus_key_and_blocks_follow_the_option(tiny_tokenizer, tmp_path):
    """Two settings, two entries of the cache: one is never read for the other. The real prepare job
    makes both; the blocks hold the normalised documents, or the documents as read."""
    from datasets import Dataset, concatenate_datasets

    from llamantino.job.prepare import run_all
    from llamantino_plugin.encode import tokenise_text

    mirror, cache = _mirror(tmp_path / "mirror"), tmp_path / "cache"
    plans = {setting: _plan(mirror, cache, f"data.normalize={setting}") for setting in ("true", "false")}
    assert plans["true"].key != plans["false"].key and plans["true"].base != plans["false"].base
    assert plans["true"].key == _plan(mirror, cache).key  # the default is true
    assert [s.normalize for s in plans["false"].sources] == [False]
    for setting, corpus in plans.items():
        entry = corpus.entry_dir()
        entry.write(entry.REQUEST, corpus.as_request())
        manifest = run_all(entry, echo=lambda line: None)
        counts = manifest["sources"]["clean_mc4_it"]
        assert {key: counts[key] for key in COUNTS[setting]} == COUNTS[setting], setting
        rows = concatenate_datasets([Dataset.from_file(str(entry.path / "units" / f"{unit['name']}.arrow"))
                                     for unit in manifest["units"]])["input_ids"]
        expected = tokenise_text({"text": KEPT[setting]}, tokenizer=tiny_tokenizer, sequence_len=SEQ)["input_ids"]
        assert [list(row) for row in rows] == expected, setting


def test_a_mixture_takes_each_sources_setting_and_its_own_false_covers_all(tmp_path, monkeypatch):
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    import llamantino.config.registry as registry_module
    from llamantino.inputs.resolve import Inputs
    from llamantino.render.axolotl import _corpus_keys

    mirror = _mirror(tmp_path / "mirror")
    wiki = mirror / "datasets" / "wikimedia" / "wikipedia" / "20231101.it"
    wiki.mkdir(parents=True)
    pq.write_table(pa.table({"text": ROWS}), wiki / "train-00000-of-00010.parquet")
    cache = tmp_path / "cache"
    assert [s.normalize for s in _plan(mirror, cache, "data=it_web_mix").sources] == [True, True]
    assert [s.normalize for s in _plan(mirror, cache, "data=it_web_mix", "data.normalize=false").sources] == [
        False, False]

    # a source's own registry entry says false: only that source is read as is
    entries = registry_module.registry()
    raw = {**entries, "wikipedia_it": dataclasses.replace(entries["wikipedia_it"], normalize=False)}
    monkeypatch.setattr(registry_module, "registry", lambda: raw)
    cfg = _composed(mirror, cache, "data=it_web_mix")
    plan = _plan(mirror, cache, cfg=cfg)
    assert [(s.name, s.normalize) for s in plan.sources] == [("clean_mc4_it", True), ("wikipedia_it", False)]
    specs = {spec["path"]: spec for spec in _corpus_keys(cfg, Inputs(base_model="x", corpus=plan))["llamantino_datasets"]}
    assert "normalize" not in specs["gsarti/clean_mc4_it"] and specs["wikimedia/wikipedia"]["normalize"] is False


# --- refused values -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["stage=adapt", "data=it_text_sample", "data.normalize=maybe"], "data.normalize"),
    (["stage=sft", "data=it_instructions_sample", "data.normalize=false"], "data.normalize=false"),
], ids=["not a boolean", "not text"])
def test_a_bad_setting_is_one_error_line(tmp_path, args, needle):
    proc = cli(*args, "launcher=dry", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "run_dir:" not in proc.stdout and not any(tmp_path.iterdir())
