"""python -m llamantino data: registry, checks with file/line/column, previews, offline preparation."""

from __future__ import annotations

import pytest

import json
from pathlib import Path

from conftest import read_json, build, cli, ok, run_dir_of


def test_list_shows_every_registry_entry(tmp_path):
    out = ok(cli("list", verb="data", cwd=tmp_path)).stdout
    for name in ("clean_mc4_it", "ultrachat_ita", "orpo_dpo_mix_40k", "it_ultrachat_sample"):
        assert name in out
    assert "(revision not pinned)" in out


def test_check_reports_every_bad_row(tmp_path):
    data = tmp_path / "x.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
                    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
                    '{"role": "assistant", "content": "c"}]}\n{"conversations": []}\n')
    proc = cli("check", str(data), "--format", "conversations", verb="data", cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {data}: 2 bad row(s) of 3"  # guards a CI step
    assert "3 rows, 1 good, 2 bad" in out
    assert f"{data}:2 [messages]" in out and f"{data}:3 [messages]: missing column 'messages'" in out
    strict = cli("check", str(data), "--format", "conversations", "--policy", "strict", verb="data",
                 cwd=tmp_path)
    assert strict.returncode == 2 and f"{data}:2" in strict.stderr


def test_check_of_a_good_file_exits_zero(tmp_path):
    out = ok(cli("check", "it_messages_sample", verb="data", cwd=tmp_path)).stdout
    assert ", 0 bad (conversations)" in out


def test_preview_marks_masked_and_trained_spans(tmp_path):
    out = ok(cli("preview", "it_messages_sample", "--template", "anita", "-n", "1", verb="data",
                 cwd=tmp_path)).stdout
    assert "[masked] '<|begin_of_text|><|start_header_id|>system<|end_header_id|>" in out
    assert "[trained] 'Ciao! Se ti piacciono" in out and "<|eot_id|>'" in out
    pairs = ok(cli("preview", "it_orpo_mix_sample", "--template", "llamantino2_chat", "-n", "1",
                   verb="data", cwd=tmp_path)).stdout
    assert '[prompt] "<s> [INST]<<SYS>>' in pairs and "[chosen] ' La capitale della Francia è Parigi. </s>'" in pairs


def test_prepare_pretokenises_a_run_for_offline_use(tmp_path):
    run_dir = run_dir_of(ok(cli("launcher=dry", "stage.max_steps=1", cwd=tmp_path)))
    out = ok(cli("prepare", str(run_dir), "--local-only", verb="data", cwd=tmp_path)).stdout
    assert "the job can now run offline" in out
    lock = json.loads((run_dir / "prepared" / "llamantino_lock.json").read_text())
    assert lock["data"]["sha256"]
    # the pre-tokenised rows (Arrow files) in the shared cache, not only the lock, are what training then loads
    entry = Path(lock["resolved"]["rows"])
    assert entry.name == read_json(run_dir / "provenance.json")["data"]["rows"]["key"]
    assert json.loads((entry / "manifest.json").read_text())["rows"] == 48
    assert any(path.suffix == ".arrow" for path in (entry / "rows").rglob("*"))


def test_pin_without_network_says_so(tmp_path):
    proc = cli("pin", "clean_mc4_it", verb="data", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "could not reach the hub" in proc.stderr


def test_prepare_caches_eval_task_data(tmp_path):
    run_dir = run_dir_of(ok(cli("stage=eval", "eval=local_smoke", "launcher=dry", cwd=tmp_path)))
    ok(cli("prepare", str(run_dir), "--local-only", verb="data", cwd=tmp_path))
    lock = json.loads((run_dir / "prepared" / "llamantino_lock.json").read_text())
    assert lock["eval_tasks"] == ["llamantino_smoke_it"]


def test_every_registry_entry_composes_and_renders_for_its_stage(compose, tmp_path):
    from llamantino.config.registry import registry

    from llamantino.errors import ConfigError

    for name, entry in registry().items():
        cfg = compose(f"data={name}", f"stage={entry.purpose[0]}", "hardware=leonardo_booster", "launcher=dry")
        if entry.corpus_scale and not entry.sources and not (entry.approx_tokens and entry.file_count):
            # nothing would bound its download from the hub: refused, naming what to set
            with pytest.raises(ConfigError, match="set data.approx_tokens and data.file_count"):
                build(cfg, tmp_path / name, validate=False)
            continue
        prepared = build(cfg, tmp_path / name, validate=False)
        def named(source):  # how the recipe names a source: its hub id, or its file linked under inputs/
            return source.hub_id or f"inputs/{source.path.rsplit('/', 1)[-1]}"

        if entry.sources:  # a mixture (a corpus, or SFT/DPO rows): one dataset per source, read prepared
            sources = registry()
            assert [d["path"] for d in prepared.recipe["datasets"]] == [named(sources[s.name]) for s in entry.sources]
            assert prepared.recipe["llamantino_prepared"].startswith("${FAST}/llamantino/prepared/"), name
            continue
        assert prepared.recipe["datasets"][0]["path"] == named(entry), name
        # everything is read prepared from the cache but local text for language adaptation
        local_text = entry.format == "text" and not entry.corpus_scale
        assert ("llamantino_prepared" in prepared.recipe) == (not local_text), name
