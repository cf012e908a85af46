"""End to end: real Axolotl trains the tiny model on CPU through the rendered recipes and the plugin."""

from __future__ import annotations

import json

import pytest

from conftest import cli, ok, read_json, run_dir_of

pytestmark = pytest.mark.e2e


def load_adapter(tiny_model, adapter_dir):
    """Load base + adapter like a user would; return the LoRA B matrices (zero at init)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return [p for n, p in model.named_parameters() if "lora_B" in n]


def trained(tiny_model, adapter_dir):
    lora_b = load_adapter(tiny_model, adapter_dir)
    assert lora_b, "no LoRA weights in the adapter"
    return any(float(p.abs().sum()) > 0 for p in lora_b)


@pytest.mark.xdist_group("chat")  # the default job's run is shared with the chat tests
def test_embedded_default_job_trains_the_tiny_model_and_visibly_learns(default_job, tmp_path, tiny_model):
    from llamantino.records.curves import event_files, loss_curve
    from llamantino.records.rundir import RunDir

    proc, run_dir = default_job
    assert run_dir.parent.parent.name == "runs"
    assert "notice: stage sft asks for full fine-tuning" in proc.stdout  # the CPU fallback is announced
    assert "notice: model tiny_llama sets stage.adapter_learning_rate=0.01" in proc.stdout  # and the model's tuning
    assert "loss: first" in proc.stdout and "done: adapter in" in proc.stdout
    status = read_json(run_dir / "status.json")
    assert status["state"] == "COMPLETED" and status["losses"]["count"] == 120
    # it learns: the loss at least halves, read from the trainer's own TensorBoard records, by step
    curve = loss_curve(run_dir)
    assert event_files(RunDir(run_dir))
    assert [step for step, _ in curve] == list(range(1, 121))
    assert curve[-1][1] <= curve[0][1] / 2, curve
    assert (run_dir / "loss_curve.png").stat().st_size > 10_000
    sample = [line for line in proc.stdout.splitlines() if line.startswith("sample (greedy")]
    assert len(sample) == 1 and " -> " in sample[0] and (run_dir / "sample.txt").is_file()
    assert trained(tiny_model, run_dir / "output")
    report = read_json(run_dir / "output" / "llamantino_data_report.json")
    assert report["it_instructions_sample"]["kept"] == 48
    card = (run_dir / "output" / "README.md").read_text()
    assert card.startswith("---\n") and "## Axolotl recipe (as trained)" in card and "it_instructions_sample" in card
    provenance = read_json(run_dir / "provenance.json")
    assert provenance["data"]["sha256"] and provenance["packages"]["axolotl"] == "0.19.0"
    assert provenance["data_report"]["it_instructions_sample"]["trainable_tokens"] > 0

    # asked one of its training prompts, the model answers and stops at the turn end, not at the limit
    from transformers import AutoTokenizer

    limit = 48
    chat = ok(cli(str(run_dir), "--prompt", "Qual è la capitale d'Italia?", "--max-new-tokens", str(limit),
                  verb="chat", cwd=tmp_path))
    answer = chat.stdout.strip()
    assert answer, chat.stdout
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "output"))
    assert tokenizer.eos_token == "<|eot_id|>"
    assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) < limit - 4, answer
    assert "<|eot_id|>" not in answer and "assistant" not in answer


def test_adapt_qlora_on_raw_text_normalises_dedups_and_filters(tmp_path, tiny_model):
    proc = ok(cli("stage=adapt", "stage.max_steps=3", "stage.sequence_len=128", "stage.micro_batch_size=4",
                  "stage.save_steps=null", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    config = json.loads((run_dir / "output" / "adapter_config.json").read_text())
    assert config["r"] == 64 and config["lora_alpha"] == 16 and config["lora_dropout"] == 0.1
    assert "load_in_4bit: true" in (run_dir / "axolotl.yaml").read_text()
    report = read_json(run_dir / "output" / "llamantino_data_report.json")["inputs/it_testo.jsonl"]
    # the sample has one exact duplicate, one whitespace variant of it and one 5-character line
    assert (report["rows"], report["duplicates"], report["too_short"]) == (44, 2, 1)
    assert report["normalised"] >= 3  # typographic apostrophes, combining accent, double space
    assert trained(tiny_model, run_dir / "output")
    # text trains on no format: the saved tokenizer is the base's, plain, as the released base models
    from transformers import AutoTokenizer

    assert "llamantino_template" not in (run_dir / "axolotl.yaml").read_text()
    assert AutoTokenizer.from_pretrained(str(tiny_model)).chat_template is None
    assert AutoTokenizer.from_pretrained(str(run_dir / "output")).chat_template is None
    assert not (run_dir / "output" / "chat_template.jinja").exists()


def test_sft_conversations_with_llamantino2_template(tmp_path, tiny_model):
    proc = ok(cli("data=it_ultrachat_sample", "prompt.template=llamantino2_chat", "stage.max_steps=3",
                  "stage.micro_batch_size=4", "stage.saves_per_epoch=null", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    template = (run_dir / "output" / "chat_template.jinja").read_text()
    assert "Sei un assistente disponibile" in template and "[/INST]" in template
    assert trained(tiny_model, run_dir / "output")


def test_dpo_trains_on_preference_pairs(tmp_path, tiny_model):
    proc = ok(cli("stage=dpo", "data=it_orpo_mix_sample", "stage.max_steps=2", "stage.micro_batch_size=2",
                  "stage.gradient_accumulation_steps=1", "stage.sequence_len=512", "stage.saves_per_epoch=null",
                  cwd=tmp_path))
    run_dir = run_dir_of(proc)
    assert (run_dir / "output" / "adapter_model.safetensors").is_file()
    assert read_json(run_dir / "status.json")["losses"]["first"] == pytest.approx(0.6931, abs=0.01)  # log 2
    assert trained(tiny_model, run_dir / "output")


def test_dpo_with_every_pair_too_long_fails_clearly(tmp_path):
    proc = cli("stage=dpo", "stage.max_steps=2", "stage.sequence_len=32", cwd=tmp_path)
    assert proc.returncode == 2
    assert "every preference pair would be dropped" in proc.stderr
    # said once, when the pairs are prepared (before any model loads), naming the preparation's log
    assert "sequence_len is 32" in proc.stderr and "/logs/rows-" in proc.stderr
    run_dir = next((tmp_path / "runs").iterdir()).iterdir().__next__()
    assert not (run_dir / "status.json").exists() or read_json(run_dir / "status.json")["state"] != "COMPLETED"


def test_skip_policy_drops_and_counts_bad_rows(tmp_path, tiny_model):
    from llamantino.paths import SAMPLES_DIR

    data = tmp_path / "conversazioni.jsonl"
    good = (SAMPLES_DIR / "it_conversazioni_messages.jsonl").read_text()
    data.write_text(good + '{"messages": [{"role": "robot", "content": "x"}]}\n{"messages": \n')
    proc = ok(cli(f"data.path={data}", "data=it_messages_sample", "stage.bad_rows=skip", "stage.max_steps=2",
                  "stage.micro_batch_size=4", "stage.saves_per_epoch=null", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    counts = read_json(run_dir / "provenance.json")["data"]["report"]
    assert (counts["rows"], counts["kept"], counts["skipped"]) == (14, 12, 2)
    assert any("unknown role 'robot'" in error for error in counts["errors"])
    assert (run_dir / "inputs" / "conversazioni.jsonl").read_text().count("\n") == 12  # the cleaned copy
    assert trained(tiny_model, run_dir / "output")


def test_seeded_training_reproduces_its_first_losses(tmp_path):
    """Pinned losses (torchtune's recipe-test pattern): a change to the data path, the templates, the tiny
    model or the rendered recipe that changes what is trained shows up here, before it shows in a loss curve."""
    proc = ok(cli("stage.max_steps=3", "stage.saves_per_epoch=null", cwd=tmp_path))
    losses = [float(line.split("loss ")[1].split()[0]) for line in proc.stdout.splitlines() if "  step " in line]
    # CPU kernels may sum in another order from run to run (up to ~0.01 seen with two test workers busy)
    assert losses == pytest.approx([6.946, 6.878, 6.611], abs=3e-2)
    from llamantino.records.curves import loss_curve

    curve = loss_curve(run_dir_of(proc))  # the same, at full precision, from the trainer's event files
    assert [step for step, _ in curve] == [1, 2, 3]
    assert [loss for _, loss in curve] == pytest.approx([6.94630, 6.87814, 6.61087], abs=3e-2)


def test_wandb_offline_run_is_written_without_network_and_sync_lists_it(tmp_path):
    proc = ok(cli("tracking=wandb", "tracking.mode=offline", "stage.max_steps=2", "stage.saves_per_epoch=null",
                  cwd=tmp_path, env={"WANDB_API_KEY": ""}))
    run_dir = run_dir_of(proc)
    recipe = (run_dir / "axolotl.yaml").read_text()
    assert "wandb_mode: offline" in recipe and "wandb_project: llamantino" in recipe and "use_tensorboard" not in recipe
    env = read_json(run_dir / "provenance.json")["env"]
    assert env["WANDB_MODE"] == "offline" and "model:tiny_llama" in env["WANDB_TAGS"].split(",")
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    listed = ok(cli(str(run_dir), "--dry-run", verb="sync", cwd=tmp_path)).stdout
    assert f"would sync {offline[0]}" in listed and "1 offline W&B run(s) (dry run)" in listed
