"""Domain adaptation on ANITA (conf/pipeline/anita_domain.yaml): adapt on a local domain corpus -> merge ->
sft on domain instructions -> merge -> release.

The command is the README's ("Domain adaptation on ANITA"), read from the README itself, so the command
users copy is the one tested: at full size on Leonardo and on a generic A100 cluster (every step
composed, rendered, validated with Axolotl and written as a job, nothing submitted), end to end on the
tiny model on CPU with the user's own files, and refused in one line when the corpus is missing.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, cli, ok, read_json, run_dir_of
from hostile import assert_refused, hostile_folder

from llamantino.paths import DATASETS_DIR, SAMPLES_DIR

ANITA = "swap-uniba/LLaMAntino-3-ANITA-8B-Inst-DPO-ITA"
STEPS = ["adapt", "merge_adapt", "sft", "merge_sft", "release"]
# The placeholders of the README's command, replaced by real files here.
README_CORPUS, README_INSTRUCTIONS = "/data/pa/corpus.jsonl", "/data/pa/istruzioni.jsonl"


def readme_command() -> list[str]:
    """The arguments of the README's domain-adaptation command (after ``python -m llamantino``)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("### Domain adaptation on ANITA", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:3] == ["python", "-m", "llamantino"], words
    return words[3:]


def user_files(folder: Path, corpus_rows: int | None = None, instruction_rows: int | None = None) -> tuple[Path, Path]:
    """A user's own corpus and instructions, outside the project (copies of the domain samples' rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus, instructions = folder / "corpus.jsonl", folder / "istruzioni.jsonl"
    for target, sample, rows in ((corpus, "pa_documenti.jsonl", corpus_rows),
                                 (instructions, "pa_conversazioni.jsonl", instruction_rows)):
        lines = (SAMPLES_DIR / "domain" / sample).read_text().splitlines(keepends=True)
        target.write_text("".join(lines[:rows]))
    return corpus, instructions


def user_command(corpus: Path, instructions: Path, *replace: tuple[str, str]) -> list[str]:
    """The README's command with its placeholders filled in (and ``old -> new`` argument swaps)."""
    args = readme_command()
    assert any(README_CORPUS in arg for arg in args) and any(README_INSTRUCTIONS in arg for arg in args)
    args = [arg.replace(README_CORPUS, str(corpus)).replace(README_INSTRUCTIONS, str(instructions))
            .replace("<PROJECT>", "IscrC_EXAMPLE") for arg in args]
    for old, new in replace:
        assert old in args, (old, args)
        args[args.index(old)] = new
    return args


def with_step_values(args: list[str], step: str, *values: str) -> list[str]:
    """Add ``values`` to the ``+pipeline.<step>=[...]`` list of the command."""
    key = f"+pipeline.{step}=["
    [index] = [i for i, arg in enumerate(args) if arg.startswith(key)]
    assert args[index].endswith("]")
    extra = ",".join(json.dumps(value) for value in values)
    return [*args[:index], f"{args[index][:-1]},{extra}]", *args[index + 1:]]


def recipe(step_dir: Path) -> dict:
    return yaml.safe_load((step_dir / "axolotl.yaml").read_text())


# --- full size ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hardware, own_data", [("leonardo_booster", True), ("a100_cluster", False)],
                         ids=["leonardo-own-data", "a100-samples"])
def test_every_step_validates_at_full_size(tmp_path, hardware, own_data):
    """The README's command (own data on Leonardo; the samples, no step lists, on an A100 cluster):
    every step composed, rendered and validated with Axolotl, its job script written, nothing submitted."""
    corpus, instructions = user_files(tmp_path / "mine")
    args = user_command(corpus, instructions, ("hardware=leonardo_booster", f"hardware={hardware}"))
    if not own_data:
        args = [arg for arg in args if not arg.startswith("+pipeline.")]
    proc = ok(cli(*args, "launcher.submit=false", f"run.output_root={tmp_path / 'runs'}",
                  f"hardware.storage.cache={tmp_path / 'cache'}", cwd=tmp_path))
    pipeline = run_dir_of(proc)
    assert pipeline.name == "anita_domain-anita_8b"
    manifest = read_json(pipeline / "pipeline.json")
    assert manifest["pipeline"] == "anita_domain" and manifest["launcher"] == "slurm"
    assert [s["name"] for s in manifest["steps"]] == STEPS
    assert [s["stage"] for s in manifest["steps"]] == ["adapt", "merge", "sft", "merge", "release"]
    for step in STEPS:
        assert (pipeline / step / "job.sbatch").is_file(), step  # written, not submitted
    assert "launch " + str(pipeline) in proc.stdout

    # adapt: QLoRA on the released ANITA, the script's values for unsupervised text
    adapt = recipe(pipeline / "adapt")
    assert adapt["base_model"] == ANITA and adapt["load_in_4bit"] is True and adapt["adapter"] == "qlora"
    assert (adapt["lora_r"], adapt["lora_alpha"], adapt["learning_rate"], adapt["sequence_len"]) == (16, 8, 2e-5, 1024)
    assert (adapt["micro_batch_size"], adapt["gradient_accumulation_steps"], adapt["optimizer"]) == (16, 8, "paged_adamw_8bit")
    assert adapt["datasets"][0]["path"] == ("inputs/corpus.jsonl" if own_data else "inputs/pa_documenti.jsonl")
    assert adapt["bf16"] is True and adapt["attn_implementation"] == "flash_attention_2"
    # each merge loads the bf16 base its adapter was trained on; sft trains on the merged adapt model
    merge = recipe(pipeline / "merge_adapt")
    assert merge["base_model"] == ANITA and merge["load_in_4bit"] is False
    assert (pipeline / "sft" / "inputs" / "base_model").resolve() == (pipeline / "merge_adapt" / "output" / "merged").resolve()
    sft = recipe(pipeline / "sft")
    assert sft["base_model"] == "inputs/base_model" and sft["llamantino_template"] == "anita"
    assert (sft["adapter"], sft["learning_rate"], sft["sequence_len"], sft["train_on_inputs"]) == ("qlora", 2e-4, 8192, True)
    assert sft["datasets"][0]["path"] == ("inputs/istruzioni.jsonl" if own_data else "inputs/pa_conversazioni.jsonl")
    assert recipe(pipeline / "merge_sft")["base_model"] == "inputs/base_model"
    assert (pipeline / "release" / "release.json").is_file()

    # the authors' job: one GPU, boost_qos_lprod, four days, --mem=243000 (MB)
    script = (pipeline / "adapt" / "job.sbatch").read_text()
    for line in ("#SBATCH --gres=gpu:1", "#SBATCH --qos=boost_qos_lprod", "#SBATCH --time=4-00:00:00",
                 "#SBATCH --mem=243000M"):
        assert line in script, line
    assert "#SBATCH --account=IscrC_EXAMPLE" in script

    # the user's data, named and licensed as the command line says, with the file's own hash
    config = yaml.safe_load((pipeline / "adapt" / "config.yaml").read_text())
    provenance = read_json(pipeline / "adapt" / "provenance.json")
    if own_data:
        assert (config["data"]["name"], config["data"]["license"]) == ("pa_corpus", "internal")
        assert provenance["data"]["local"] == str(corpus.resolve())
        assert read_json(pipeline / "sft" / "provenance.json")["data"]["name"] == "pa_istruzioni"
    else:
        assert config["data"]["name"] == "it_pa_text_sample"
        assert provenance["data"]["local"] == str((SAMPLES_DIR / "domain" / "pa_documenti.jsonl").resolve())
    assert config["experiment"] == "anita_8b_domain_adapt" and config["provenance"]["stage.learning_rate"]["status"] == "verified"


# --- end to end on the tiny model ----------------------------------------------------------------


@pytest.mark.e2e
def test_the_readme_command_runs_end_to_end_on_the_tiny_model(tmp_path):
    """The same command on the tiny model, on CPU, here: the user's corpus and instructions (given in the
    step lists as the README shows) are trained on, each step on the one before, up to the release."""
    corpus, instructions = user_files(tmp_path / "mine", corpus_rows=12, instruction_rows=8)
    args = user_command(corpus, instructions, ("model=anita_8b", "model=tiny_llama"), ("hardware=leonardo_booster", "hardware=cpu"),
                        ("launcher=slurm", "launcher=local"))
    short = ("stage.max_steps=2", "stage.micro_batch_size=2", "stage.gradient_accumulation_steps=1")
    args = with_step_values(args, "adapt", *short, "stage.sequence_len=128")
    args = with_step_values(args, "sft", *short, "stage.sequence_len=512")
    proc = ok(cli(*args, f"run.output_root={tmp_path / 'runs'}", f"hardware.storage.cache={tmp_path / 'cache'}",
                  cwd=tmp_path))
    pipeline = run_dir_of(proc)
    assert pipeline.name == "anita_domain-tiny_llama"
    for step in STEPS:
        assert read_json(pipeline / step / "status.json")["state"] == "COMPLETED", step
    # the adapt step read the user's corpus, every document of it
    report = read_json(pipeline / "adapt" / "output" / "llamantino_data_report.json")["inputs/corpus.jsonl"]
    assert report["rows"] == 12 and report["invalid"] == 0 and report["trainable_tokens"] > 0
    adapt = read_json(pipeline / "adapt" / "provenance.json")
    assert adapt["data"]["name"] == "pa_corpus" and adapt["data"]["local"] == str(corpus.resolve())
    # the sft step read the user's instructions, prepared once, on the merged adapt model
    sft_report = read_json(pipeline / "sft" / "output" / "llamantino_data_report.json")["pa_istruzioni"]
    assert sft_report["kept"] == 8 and sft_report["trainable_tokens"] > 0
    assert (pipeline / "sft" / "inputs" / "base_model").resolve() == (pipeline / "merge_adapt" / "output" / "merged").resolve()
    assert (pipeline / "merge_sft" / "output" / "merged" / "config.json").is_file()
    # the release folder: the merged SFT model, with a card naming the preset and the steps
    release = pipeline / "release" / "release"
    assert (release / "model.safetensors").is_file() and (release / "chat_template.jinja").is_file()
    card = (release / "README.md").read_text()
    assert "anita\\_8b\\_domain\\_adapt" in card and "anita\\_8b\\_domain\\_sft" in card
    lineage = card.split("## Training lineage", 1)[1].split("\n## ", 1)[0]
    assert "| adapt | pa\\_corpus |" in lineage and "| sft | pa\\_istruzioni |" in lineage


# --- refused ----------------------------------------------------------------------------------------


def test_a_missing_corpus_is_one_error_line_and_nothing_is_submitted(tmp_path):
    work = hostile_folder(tmp_path / "work")
    _, instructions = user_files(tmp_path / "mine")
    args = user_command(Path("{w}") / "nowhere" / "corpus.jsonl", instructions) + ["run.output_root={w}/runs"]
    proc = assert_refused(work, "llamantino", args, "file not found")
    assert f"pipeline step adapt: data=pa_corpus: {work}/nowhere/corpus.jsonl: file not found" in proc.stderr


# --- the presets and samples ---------------------------------------------------------------------


def test_the_presets_follow_the_authors_script_and_mark_our_choices(compose):
    adapt = compose("experiment=anita_8b_domain_adapt")
    assert (adapt.model.hub_id, adapt.stage.learning_rate, adapt.stage.adapter) == (ANITA, 2e-5, "qlora")
    assert adapt.provenance["stage.adapter"].override == "stage.adapter=lora"
    assert compose("experiment=anita_8b_domain_adapt", "stage.adapter=lora").stage.adapter == "lora"
    assert "eaf49a6" in adapt.provenance["stage.learning_rate"].source
    sft = compose("experiment=anita_8b_domain_sft")
    assert (sft.stage.learning_rate, sft.stage.sequence_len, sft.prompt.template) == (2e-4, 8192, "anita")
    assert "ad85742" in sft.provenance["stage.learning_rate"].source
    for cfg, ours in ((adapt, {"data", "stage.sequence_len"}), (sft, {"data", "prompt.template"})):
        assert {key for key, row in cfg.provenance.items() if row.status == "unpublished"} == ours
        assert all(cfg.provenance[key].source.startswith("ours:") for key in ours)


def test_the_domain_samples_leave_the_tiny_tokenizer_and_hub_mirror_alone():
    """The tiny model's tokenizer and the test hub mirror are built from samples/*.jsonl: the domain
    samples live in samples/domain/, so adding them changed neither."""
    from llamantino.config.registry import registry
    from llamantino_plugin.formats import check_file, columns_for

    entries = {name: registry()[name] for name in ("it_pa_text_sample", "it_pa_messages_sample")}
    for name, entry in entries.items():
        path = DATASETS_DIR / entry.path
        assert path.parent == SAMPLES_DIR / "domain" and path not in set(SAMPLES_DIR.glob("*.jsonl"))
        report = check_file(path, entry.format, columns_for(entry.format, entry.columns))
        assert report.kept == report.rows == entry.num_rows, name
        assert entry.license.startswith("CC0-1.0")
