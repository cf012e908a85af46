"""Script-exact mode: the first training example of the sample data, token for token, as the ANITA
scripts (marcopoli/LLaMAntino-3-ANITA f5919e2, TRL 0.8.5, Unsloth 88eee50) built it.

The expected strings are written here from reading the scripts; the expected ids are what TRL 0.8.5 did
with them (``trl085_*`` below, written from reading its ``SFTTrainer`` and ``DPOTrainer.tokenize_row``).
Three tokenizers: the tiny model's, a Llama-3-style one (the tiny vocabulary with Llama-3's BOS/EOS, its
BOS added by the post-processor and no pad or unk, as Meta-Llama-3-8B-Instruct) and a SentencePiece one.
"""

from __future__ import annotations

import json

import pytest

from conftest import cli, ok, read_json, run_dir_of
from llamantino.paths import SAMPLES_DIR
from llamantino_plugin.encode import tokeniser

TRL_LABEL_PAD = -100


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from llamantino.inputs.tiny import build_sentencepiece_tokenizer

    return AutoTokenizer.from_pretrained(str(build_sentencepiece_tokenizer(tmp_path_factory.mktemp("sp"))))


@pytest.fixture(scope="module")
def llama3_style_tokenizer(tiny_model):
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    tok.pad_token = None
    tok.unk_token = None
    assert tok("Ciao")["input_ids"][0] == bos and tok.pad_token_id is None
    return tok


@pytest.fixture(params=["tiny_bpe", "llama3_style", "sentencepiece"])
def tokenizer(request, tiny_tokenizer, llama3_style_tokenizer, sentencepiece_tokenizer):
    return {"tiny_bpe": tiny_tokenizer, "llama3_style": llama3_style_tokenizer,
            "sentencepiece": sentencepiece_tokenizer}[request.param]


def first_row(name: str) -> dict:
    return json.loads((SAMPLES_DIR / name).read_text().splitlines()[0])


# --- what the scripts built (read from finetune_llama3.py / dpo_llama3.py at f5919e2) --------------


def llama3_turn(role: str, content: str) -> str:
    """One turn of Meta-Llama-3-8B-Instruct's stock template (content trimmed)."""
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>"


def script_sft_text(messages: list[dict], bos: str) -> str:
    rendered = bos + "".join(llama3_turn(m["role"], m["content"]) for m in messages)
    text = rendered + "<|end_of_text|>"
    return text.replace("<|eot_id|>", " <|eot_id|> ").replace("<|begin_of_text|>", "<|begin_of_text|> ")


def trl085_sft_ids(tokenizer, text: str, max_seq_length: int) -> tuple[list[int], list[int]]:
    """SFTTrainer(dataset_text_field="text"): tokenised with special tokens and truncated; the LM
    collator trains every token but the pad id (Unsloth 88eee50: pad, else unk, else EOS)."""
    ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_seq_length)["input_ids"]
    pad = next(i for i in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id) if i is not None)
    return ids, [TRL_LABEL_PAD if token == pad else token for token in ids]


def trl085_tokenize_row(tokenizer, prompt: str, chosen: str, rejected: str, max_length: int, max_prompt: int):
    """DPOTrainer.tokenize_row (decoder-only): the chosen and rejected sequences and their labels."""
    def enc(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer(text):
        full, prompt_ids = enc(prompt + text), enc(prompt)
        start = len(prompt_ids) if full[:len(prompt_ids)] == prompt_ids else len(prompt_ids) - 1
        return {"prompt": [tokenizer.bos_token_id] + full[:start], "answer": full[start:] + [tokenizer.eos_token_id]}

    sides = [answer(chosen), answer(rejected)]
    longer = max(len(side["answer"]) for side in sides)
    for side in sides:
        if len(side["prompt"]) + longer > max_length:
            side["prompt"] = side["prompt"][-max_prompt:]
    for side in sides:
        if len(side["prompt"]) + longer > max_length:
            side["answer"] = side["answer"][:max_length - max_prompt]
    return [(side["prompt"] + side["answer"], [TRL_LABEL_PAD] * len(side["prompt"]) + side["answer"]) for side in sides]


def as_sequences(pair: dict):
    """Our ids (TRL 1.9's layout: one prompt, two completions) as TRL 0.8.5's sequences and labels."""
    prompt = pair["llamantino_prompt_ids"]
    return [(prompt + pair[key], [TRL_LABEL_PAD] * len(prompt) + pair[key])
            for key in ("llamantino_chosen_ids", "llamantino_rejected_ids")]


def script_pairs(rows: list[dict], tokenizer, sequence_len: int, max_prompt: int) -> dict:
    from axolotl.utils.dict import DictDefault

    from llamantino_plugin.preferences import load

    config = DictDefault({"datasets": [{"path": "p.jsonl"}], "llamantino_template": "anita",
                          "llamantino_datasets": [{"path": "p.jsonl", "format": "preferences"}],
                          "llamantino_script_exact": True, "sequence_len": sequence_len,
                          "max_prompt_len": max_prompt})
    transform_fn, _ = load(config, 0)
    return transform_fn({key: [row[key] for row in rows] for key in ("prompt", "chosen", "rejected")},
                        tokenizer=tokenizer)


# --- SFT ------------------------------------------------------------------------------------------


def test_the_sft_scripts_text_is_what_the_issue_reads_off_the_script():
    messages = [{"role": "user", "content": " Ciao? "}, {"role": "assistant", "content": "Salve!\n"}]
    from llamantino_plugin.script_exact import sft_text

    assert sft_text(messages) == ("<|begin_of_text|> <|start_header_id|>user<|end_header_id|>\n\nCiao? <|eot_id|> "
                                  "<|start_header_id|>assistant<|end_header_id|>\n\nSalve! <|eot_id|> <|end_of_text|>")


@pytest.mark.parametrize("sequence_len", [4096, 40])
def test_the_first_sft_example_has_the_scripts_ids(tokenizer, sequence_len):
    """The first conversation of the sample (with its own system turn, which the stock template keeps),
    through the plugin's tokeniser and the loader's truncation, against TRL 0.8.5 on the script's text."""
    from llamantino_plugin.loading import _truncate

    messages = first_row("it_conversazioni_messages.jsonl")["messages"]
    encoded = tokeniser("conversations", "anita", tokenizer=tokenizer, sequence_len=sequence_len, system_prompt=None,
                        train_on_inputs=True, script_exact=True)({"messages": [messages]})
    row = _truncate({key: encoded[key][0] for key in ("input_ids", "attention_mask", "labels")},
                    sequence_len=sequence_len)
    ids, labels = trl085_sft_ids(tokenizer, script_sft_text(messages, tokenizer.bos_token), sequence_len)
    assert row["input_ids"] == ids and row["labels"] == labels
    if tokenizer.bos_token == "<|begin_of_text|>":  # Llama-3: the tokenizer's BOS, then the text's own
        bos = tokenizer.bos_token_id
        assert ids[:2] == [bos, bos] and TRL_LABEL_PAD in labels  # every <|eot_id|> (the EOS, = pad) untrained
    if sequence_len == 40:
        assert len(tokenizer(script_sft_text(messages, tokenizer.bos_token))["input_ids"]) > 40 and len(ids) == 40


# --- DPO ------------------------------------------------------------------------------------------


def test_the_dpo_scripts_strings_are_what_the_issue_reads_off_the_script():
    from llamantino_plugin.script_exact import dpo_strings

    strings = dpo_strings([{"role": "user", "content": "Domanda?"}], {"role": "assistant", "content": "Sì."},
                          {"role": "assistant", "content": "No."})
    assert strings == {
        "prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nDomanda?<|eot_id|><|end_of_text|>",
        "chosen": "<|begin_of_text|><|start_header_id|>assistant<|end_header_id|>\n\nSì.<|eot_id|><|end_of_text|>",
        "rejected": "<|begin_of_text|><|start_header_id|>assistant<|end_header_id|>\n\nNo.<|eot_id|><|end_of_text|>"}


def script_dpo_strings(row: dict, bos: str) -> tuple[str, str, str]:
    prompt = bos + llama3_turn("user", row["prompt"]) + "<|end_of_text|>"
    return (prompt, bos + llama3_turn("assistant", row["chosen"]) + "<|end_of_text|>",
            bos + llama3_turn("assistant", row["rejected"]) + "<|end_of_text|>")


@pytest.mark.parametrize("cut", ["none", "prompt", "answers"])
def test_the_first_dpo_pair_has_the_scripts_ids(tokenizer, cut):
    """Whole, with its prompt cut (keep_end: the BOS goes) and with answers cut (no EOS after the cut);
    the limits are set from the pair's own lengths so each case happens with every tokenizer."""
    row = first_row("it_preferenze.jsonl")
    strings = script_dpo_strings(row, tokenizer.bos_token)
    whole = trl085_tokenize_row(tokenizer, *strings, 10**6, 10**6)
    prompt_len = whole[0][1].count(TRL_LABEL_PAD)
    answer_len = max(len(labels) - prompt_len for _, labels in whole)
    sequence_len, max_prompt = {"none": (1024, 512), "prompt": (prompt_len + answer_len - 1, prompt_len - 2),
                                "answers": (answer_len + 3, 4)}[cut]
    pair = script_pairs([row], tokenizer, sequence_len, max_prompt)
    ours = as_sequences({key: values[0] for key, values in pair.items()})
    assert ours == trl085_tokenize_row(tokenizer, *strings, sequence_len, max_prompt)
    chosen_ids, prompt_ids = pair["llamantino_chosen_ids"][0], pair["llamantino_prompt_ids"][0]
    longer = max(pair["llamantino_chosen_ids"][0], pair["llamantino_rejected_ids"][0], key=len)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if cut == "none":  # TRL added one BOS and one EOS to the script's own
        assert prompt_ids[0] == bos and chosen_ids[-1] == eos and len(prompt_ids) == prompt_len
        if tokenizer.bos_token == "<|begin_of_text|>":
            assert prompt_ids[:2] == [bos, bos]
    if cut == "prompt":
        assert len(prompt_ids) == max_prompt and prompt_ids[0] != bos and chosen_ids[-1] == eos
    if cut == "answers":
        assert len(prompt_ids) == 4 and len(longer) == answer_len - 1 and longer[-1] != eos
    # the strings TRL 1.9 and Axolotl's length filter see fit, so no pair is dropped for length
    lengths = [len(tokenizer(pair[key][0], add_special_tokens=False)["input_ids"]) for key in ("prompt", "chosen")]
    assert sum(lengths) <= sequence_len


def test_pairs_the_script_kept_are_kept(tiny_tokenizer):
    """Equal answers and a rejected conversation with other prompt turns: refused in the default mode,
    trained in script-exact mode (with chosen's prompt turns, as the script took them)."""
    from llamantino_plugin.preferences import PreferenceError

    same = {"prompt": "Ciao?", "chosen": "Salve.", "rejected": "Salve."}
    assert len(script_pairs([same], tiny_tokenizer, 1024, 512)["prompt"]) == 1
    from axolotl.utils.dict import DictDefault

    from llamantino_plugin.preferences import load

    config = DictDefault({"datasets": [{"path": "p.jsonl"}], "llamantino_template": "anita",
                          "llamantino_datasets": [{"path": "p.jsonl", "format": "preferences"}]})
    with pytest.raises(PreferenceError, match="teaches nothing"):
        load(config, 0)[0]({key: [same[key]] for key in same}, tokenizer=tiny_tokenizer)


# --- end to end: real Axolotl, real TRL, the tiny model -------------------------------------------

SCRIPT_DPO = ("model=tiny_llama", "stage=dpo", "hardware=cpu", "data=it_preferences_sample", "prompt.template=anita",
              "prompt.script_exact=true", "stage.sequence_len=40", "stage.max_prompt_len=12", "stage.max_steps=1",
              "stage.adapter=lora", "run.output_root=runs")


@pytest.mark.xdist_group("rows")
def test_script_exact_dpo_trains_on_the_scripts_ids_and_seeds_the_adapter_alone(tmp_path, tiny_model):
    """Three tiny DPO runs: the trainer's rows are the prepared TRL 0.8.5 ids (cut prompts without BOS,
    cut answers without EOS, nothing dropped for length); the adapter's initial weights follow
    stage.lora_seed whatever stage.seed is (learning rate 1e-12: one step leaves them where they began)."""
    import torch
    from safetensors.torch import load_file

    runs = {}
    for name, seeds in {"a": ("stage.seed=1", "stage.lora_seed=3407"), "b": ("stage.seed=2", "stage.lora_seed=3407"),
                        "c": ("stage.seed=1", "stage.lora_seed=7")}.items():
        proc = ok(cli(*SCRIPT_DPO, *seeds, "stage.learning_rate=1e-12", f"run.name=dpo-{name}", cwd=tmp_path))
        runs[name] = run_dir_of(proc)
    log = (runs["a"] / "logs" / "train.log").read_text(errors="replace")
    assert "script-exact DPO: the pairs' TRL 0.8.5 ids replace TRL's own" in log
    assert "adapter weights initialised from seed 3407 (training seed 1)" in log

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    import yaml

    recipe = yaml.safe_load((runs["a"] / "axolotl.yaml").read_text())
    rows = load_from_disk(f"{recipe['llamantino_prepared']}/rows")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    samples = [json.loads(line) for line in (SAMPLES_DIR / "it_preferenze.jsonl").read_text().splitlines() if line]
    assert len(rows) == len(samples)  # nothing dropped, though most pairs are longer than 40 tokens
    for sample in samples:
        expected = trl085_tokenize_row(tokenizer, *script_dpo_strings(sample, tokenizer.bos_token), 40, 12)
        assert any(as_sequences(row) == expected for row in rows), sample["prompt"]
    assert any(row["llamantino_prompt_ids"][0] != tokenizer.bos_token_id for row in rows)  # a cut prompt
    assert any(row["llamantino_chosen_ids"][-1] != tokenizer.eos_token_id for row in rows)  # a cut answer

    def lora_a(run):
        weights = load_file(str(run / "output" / "adapter_model.safetensors"))
        return torch.cat([value.flatten().float() for key, value in sorted(weights.items()) if "lora_A" in key])

    same_seed, other_seed = lora_a(runs["b"]) - lora_a(runs["a"]), lora_a(runs["c"]) - lora_a(runs["a"])
    assert same_seed.abs().max() < 1e-6 < other_seed.abs().max()


def test_script_exact_sft_truncates_long_rows_instead_of_dropping_them(tmp_path, tiny_model):
    proc = ok(cli("model=tiny_llama", "stage=sft", "hardware=cpu", "data=it_messages_sample", "prompt.template=anita",
                  "prompt.script_exact=true", "stage.train_on_inputs=true", "stage.sequence_len=64",
                  "stage.max_steps=1", "run.output_root=runs", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    report = read_json(run_dir / "output" / "llamantino_data_report.json")
    counts = next(iter(report.values()))
    assert counts.get("truncated", 0) > 0 and counts.get("too_long", 0) == 0, counts
    assert counts["kept"] == counts["rows"], counts


def test_the_mode_and_the_lora_seed_reach_a_recipe_axolotl_validates(tmp_path):
    import yaml

    run_dir = run_dir_of(ok(cli("model=tiny_llama", "stage=dpo", "data=it_preferences_sample", "prompt.template=anita",
                                "prompt.script_exact=true", "stage.lora_seed=3407", "launcher=dry", cwd=tmp_path)))
    recipe = yaml.safe_load((run_dir / "axolotl.yaml").read_text())
    assert recipe["llamantino_script_exact"] is True and recipe["llamantino_lora_seed"] == 3407
    run_dir = run_dir_of(ok(cli("model=tiny_llama", "stage=sft", "data=it_messages_sample", "prompt.template=anita",
                                "prompt.script_exact=true", "stage.train_on_inputs=true", "launcher=dry",
                                cwd=tmp_path)))
    recipe = yaml.safe_load((run_dir / "axolotl.yaml").read_text())
    assert recipe["llamantino_script_exact"] is True and recipe["excess_length_strategy"] == "truncate"


def test_data_preview_shows_what_script_exact_mode_trains_on(tmp_path):
    pairs = ok(cli("preview", "it_preferences_sample", "--template", "anita", "--script-exact", "-n", "1",
                   verb="data", cwd=tmp_path)).stdout
    row = first_row("it_preferenze.jsonl")
    assert f"[prompt] '<s><s><|start_header_id|>user<|end_header_id|>\\n\\n{row['prompt']}<|eot_id|><|end_of_text|>'" \
        in pairs  # the tiny tokenizer's BOS is <s>: TRL's, then the template's
    assert "<|eot_id|><|end_of_text|></s>'" in pairs
    sft = ok(cli("preview", "it_messages_sample", "--template", "anita", "--script-exact", "-n", "1",
                 verb="data", cwd=tmp_path)).stdout
    assert " <|eot_id|> <|start_header_id|>user" in sft and "<|eot_id|> <|end_of_text|>'" in sft
    text = cli("preview", "it_text_sample", "--script-exact", verb="data", cwd=tmp_path)
    assert text.returncode == 2 and text.stderr.strip().splitlines()[-1].startswith("error: --script-exact previews")
