"""Every hub corpus of the registry reads exactly its own language, config and training split.

A mirror laid out as the hub (tests/hub_mirror.py ``build_multilingual_mirror``) holds each
repository's files and what must never be read beside them: other languages, other configs, test
and validation splits. Each registry entry's ``files`` patterns, matched as the corpus planner
matches them (``llamantino.inputs.corpus._listed``), must select its training files and nothing else.
An entry without ``files`` falls back to every data file of the repository and fails here.
"""

from __future__ import annotations

import pytest
import yaml

from conftest import cli, ok, read_json, run_dir_of
from hub_mirror import HUB_LAYOUTS, build_multilingual_mirror


def hub_corpora() -> list[str]:
    from llamantino.config.registry import registry

    return [name for name, entry in registry().items() if entry.format == "text" and entry.hub_id]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return build_multilingual_mirror(tmp_path_factory.mktemp("hub") / "mirror")


def test_the_registry_has_hub_corpora_to_check():
    assert {"clean_mc4_it", "fineweb2_it", "culturax_it", "wikipedia_it"} <= set(hub_corpora())


@pytest.mark.parametrize("name", hub_corpora())
def test_a_hub_corpus_selects_exactly_its_training_files(mirror, name):
    from llamantino.config.registry import registry
    from llamantino.errors import ConfigError
    from llamantino.inputs.corpus import DATA_FILES, _listed

    entry = registry()[name]
    layout = HUB_LAYOUTS.get((entry.hub_id, entry.subset))
    assert layout is not None, (f"{name}: no layout of {entry.hub_id} ({entry.subset}) in tests/hub_mirror.py "
                                "HUB_LAYOUTS: add the repository's files, its other languages and splits")
    own, others = layout
    assert others, f"{name}: the layout needs files the entry must not read (other languages, test splits)"
    patterns = tuple(entry.files) or DATA_FILES  # the planner's fallback for an entry with no pattern
    try:
        selected = set(_listed(mirror / "datasets" / entry.hub_id, patterns, name))
    except ConfigError as exc:
        pytest.fail(f"{name}: {exc}")
    assert not selected & set(others), f"{name} ({', '.join(patterns)}) reads {sorted(selected & set(others))}"
    assert selected == set(own), f"{name} ({', '.join(patterns)}) misses {sorted(set(own) - selected)}"


def test_every_layout_is_a_registry_corpus():
    """A layout no entry uses is a stale one (an entry renamed or its subset changed)."""
    from llamantino.config.registry import registry

    used = {(registry()[name].hub_id, registry()[name].subset) for name in hub_corpora()}
    assert set(HUB_LAYOUTS) == used


def test_a_run_on_fineweb2_prepares_only_italian_training_shards(mirror, tmp_path):
    """End to end: the command plans, prepares and trains on the mirror; the entry's request and
    manifest name only data/ita_Latn/train, never the test split or another language."""
    own, _ = HUB_LAYOUTS[("HuggingFaceFW/fineweb-2", "ita_Latn")]
    proc = ok(cli("data=fineweb2_it", "stage=adapt", "stage.max_steps=3", "stage.sequence_len=64",
                  "stage.micro_batch_size=2", f"hardware.storage.hub_mirror={mirror}",
                  f"hardware.storage.cache={tmp_path / 'cache'}", "launcher=local", cwd=tmp_path))
    recipe = yaml.safe_load((run_dir_of(proc) / "axolotl.yaml").read_text())
    entry = tmp_path / "cache" / "prepared" / recipe["llamantino_prepared"].rsplit("/", 1)[1]
    [source] = read_json(entry / "request.json")["sources"]
    assert sorted(source["files"]) == sorted(own)
    fineweb = read_json(entry / "manifest.json")["sources"]["fineweb2_it"]
    assert fineweb["available_files"] == len(own)
    assert fineweb["read_files"] and set(fineweb["read_files"]) <= set(own)
