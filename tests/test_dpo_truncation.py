"""DPO prompt truncation (``stage.max_prompt_len``), the rule ANITA trained with (TRL 0.8.5, keep_end).

TRL 1.9 has no prompt limit and Axolotl 0.19 ignores ``max_prompt_len``, so without the plugin's
truncation a pair longer than ``sequence_len`` is dropped; with it, the prompt keeps its last tokens.
"""

from __future__ import annotations

import json

import pytest
from axolotl.utils.dict import DictDefault

from conftest import cli, ok, read_json, run_dir_of
from llamantino.paths import SAMPLES_DIR
from llamantino_plugin.preferences import load

LONG_CONTEXT = "Contesto: " + " ".join(["Il treno per Bari parte dal binario tre alle otto e un quarto."] * 12)


def long_prompt_pairs(path):
    rows = [json.loads(line) for line in (SAMPLES_DIR / "it_preferenze.jsonl").read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps({**row, "prompt": f"{LONG_CONTEXT}\n\n{row['prompt']}"}, ensure_ascii=False) + "\n"
                            for row in rows))
    return rows


def transformed(tokenizer, rows, **cfg):
    config = DictDefault({"datasets": [{"path": "pairs.jsonl"}], "llamantino_template": "anita",
                          "llamantino_datasets": [{"path": "pairs.jsonl", "format": "preferences"}], **cfg})
    transform_fn, _ = load(config, 0)
    return transform_fn({key: [row[key] for row in rows] for key in ("prompt", "chosen", "rejected")},
                        tokenizer=tokenizer)


def count(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_over_long_prompts_keep_their_last_tokens_and_their_bos(tiny_tokenizer, tmp_path):
    rows = [{**row, "prompt": f"{LONG_CONTEXT}\n\n{row['prompt']}"} for row in long_prompt_pairs(tmp_path / "p.jsonl")]
    whole = transformed(tiny_tokenizer, rows, sequence_len=128)  # no max_prompt_len: untouched
    cut = transformed(tiny_tokenizer, rows, sequence_len=128, max_prompt_len=48)
    assert all(count(tiny_tokenizer, p) > 128 for p in whole["prompt"])
    for full, prompt, chosen, original in zip(whole["prompt"], cut["prompt"], cut["chosen"], whole["chosen"]):
        assert count(tiny_tokenizer, prompt) <= 48
        assert prompt.startswith("<|begin_of_text|>") and full.endswith(prompt[len("<|begin_of_text|>"):])
        assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")  # the question survives
        assert chosen == original  # answers that fit are kept whole
        assert count(tiny_tokenizer, prompt) + count(tiny_tokenizer, chosen) <= 128


def test_answers_are_cut_only_when_the_cut_prompt_still_does_not_fit(tiny_tokenizer):
    rows = [{"prompt": LONG_CONTEXT, "chosen": LONG_CONTEXT, "rejected": "No."}]
    cut = transformed(tiny_tokenizer, rows, sequence_len=96, max_prompt_len=32)
    assert count(tiny_tokenizer, cut["prompt"][0]) <= 32
    assert count(tiny_tokenizer, cut["chosen"][0]) <= 96 - 32 and LONG_CONTEXT.startswith(cut["chosen"][0][:40])
    assert cut["rejected"][0].startswith("No.")
    short = [{"prompt": "Ciao?", "chosen": "Salve.", "rejected": "No."}]
    assert transformed(tiny_tokenizer, short, sequence_len=512, max_prompt_len=2)["prompt"] == \
        transformed(tiny_tokenizer, short, sequence_len=512)["prompt"]  # within max length: nothing is cut


def test_dpo_without_a_prompt_limit_drops_every_long_pair(tmp_path):
    data = tmp_path / "coppie.jsonl"
    long_prompt_pairs(data)
    proc = cli("stage=dpo", "data=it_preferences_sample", f"data.path={data}", "stage.sequence_len=128",
               "stage.max_prompt_len=null", "stage.max_steps=2", cwd=tmp_path)
    assert proc.returncode == 2 and "every preference pair would be dropped" in proc.stderr
    assert "max_prompt_len" in proc.stderr  # the error names the setting that would keep them


@pytest.mark.e2e
def test_dpo_with_a_prompt_limit_trains_on_the_same_pairs(tmp_path, tiny_model):
    data = tmp_path / "coppie.jsonl"
    rows = long_prompt_pairs(data)
    run_dir = run_dir_of(ok(cli("stage=dpo", "data=it_preferences_sample", f"data.path={data}", "stage.sequence_len=128",
                                "stage.max_prompt_len=48", "stage.max_steps=2", "stage.micro_batch_size=2",
                                "stage.gradient_accumulation_steps=1", "stage.saves_per_epoch=null", cwd=tmp_path)))
    report = read_json(run_dir / "output" / "llamantino_data_report.json")  # what Axolotl kept
    counts = next(iter(report.values()))  # counted once, when the pairs were prepared
    assert counts["format"] == "preferences (prepared)"
    assert (counts["rows"], counts["dropped_invalid_or_too_long"], counts["kept"], counts["taken_rows"]) == \
        (len(rows), 0, len(rows), len(rows))
    assert (run_dir / "output" / "adapter_model.safetensors").is_file()
