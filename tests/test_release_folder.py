"""stage=release, end to end on the tiny model: the folder a Hub model repository would hold.

One SFT run (its data under a non-commercial licence) and its eval run are made once; each test
releases them (merged, or the adapter alone) with the real command and reads the folder back with
the libraries its users have: huggingface_hub's card parser, transformers, peft. A hostile record
(a licence or run name carrying YAML front matter or HTML) must not change the card's metadata, and
a machine path planted in a copied file must stop the release with nothing written.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import cli, ok, run_dir_of

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("release")]

NC_LICENCE = "CC-BY-NC-4.0 (test)"
_runs: dict[str, Path] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 2-step SFT run on data licensed non-commercial, and its local_smoke eval (made once)."""
    if not _runs:
        folder = tmp_path_factory.mktemp("release-runs")
        trained = run_dir_of(ok(cli("stage.max_steps=2", "stage.saves_per_epoch=null", f"data.license='{NC_LICENCE}'",
                                    f"run.output_root={folder}", cwd=folder)))
        evaluated = run_dir_of(ok(cli("stage=eval", "eval=local_smoke", f"run.input_model={trained}",
                                      f"run.output_root={folder}", cwd=folder)))
        _runs.update(folder=folder, trained=trained, evaluated=evaluated)
    return _runs


def release(input_model: Path, root: Path, *overrides: str) -> tuple[Path, str]:
    """Run ``stage=release`` on ``input_model``; (the release run directory, its job's log)."""
    run_dir = run_dir_of(ok(cli("stage=release", f"run.input_model={input_model}", f"run.output_root={root}",
                                *overrides, cwd=root)))
    return run_dir, (run_dir / "logs" / "train.log").read_text()


def card_of(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def machine_traces(folder: Path, places: list[Path]) -> list[str]:
    """Every file of ``folder`` that names a machine folder, the home folder or the user name (as bytes)."""
    user = getpass.getuser().encode()
    needles = {str(place).encode() for place in places} | {os.path.expanduser("~").encode(), b"/tmp/", b"/home/",
                                                           b"/root", b"pytest-of-"}
    found = []
    for path in sorted(folder.rglob("*")):
        data = path.read_bytes()
        found += [f"{path.name}: {needle!r}" for needle in needles if needle in data]
        if re.search(rb"[/\\]" + re.escape(user) + rb"(?![\w.-])|(?<![\w.-])" + re.escape(user) + rb"[/\\]", data):
            found.append(f"{path.name}: the user name")
    return found


def logits(model, tokenizer):
    import torch

    ids = tokenizer("Qual è la capitale d'Italia?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def adapter_model(tiny_model: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(adapter)).eval()


def test_merged_release_carries_scores_licences_and_loads_as_the_trained_model(runs, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, log = release(runs["evaluated"], runs["folder"], "release.max_shard_size=300KB")
    folder = run_dir / "release"
    results = json.loads((runs["evaluated"] / "results.json").read_text())

    card = card_of(folder)
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == \
        [(task, "acc", score) for task, score in results["scores"].items()]
    result = card.data.eval_results[0]
    assert result.task_type == "text-generation" and result.dataset_args == {"num_few_shot": 0}
    assert result.metric_args == {"stderr": results["stderr"]["llamantino_smoke_it"]}
    assert "eval.mode=current" in result.metric_config
    assert card.data.base_model is None and card.data.base_model_relation == "finetune"
    assert "built locally by llamantino" in card.text and "no ``base_model``" in card.text
    assert card.data.datasets is None  # the sample data is a local file, no hub id
    assert card.data.language == ["it"] and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert (card.data.license, card.data.license_name, card.data.license_link) == \
        ("other", "built-by-llamantino-random-weights", "LICENSE")
    assert "built by llamantino (random weights)" in (folder / "LICENSE").read_text()
    # the non-commercial data licence: bold in the card, a notice of the job
    assert f"**{NC_LICENCE} (non-commercial" in card.text
    assert f"notice: data it_instructions_sample is licensed {NC_LICENCE}" in log
    # lineage with its hyperparameters and GPU hours, scores beside the leaderboard's, reproduce commands
    assert "| 1. sft-tiny\\_llama-it\\_instructions\\_sample | sft | it\\_instructions\\_sample | 0.01 | 2 steps |" \
        in card.text
    assert "| **release-tiny\\_llama** (this run) |" in card.text
    assert "python -m llamantino stage=eval eval=local_smoke 'run.input_model=<path>'" in card.text
    assert "apply_chat_template" in card.text and "Generation stops at `<|eot_id|>`" in card.text

    assert machine_traces(folder, [runs["folder"], tiny_model]) == []
    assert not [entry for entry in os.listdir(run_dir) if entry.startswith(".")]  # no staging folder left

    shards = sorted(path.name for path in folder.iterdir() if path.suffix in (".safetensors", ".bin", ".pt"))
    assert len(shards) > 1 and all(name.endswith(".safetensors") for name in shards), shards
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.eos_token == "<|eot_id|>"
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    expected = logits(adapter_model(tiny_model, runs["trained"] / "output"), tokenizer)
    assert torch.allclose(logits(merged, tokenizer), expected, atol=1e-4)
    assert json.loads((folder / "generation_config.json").read_text()) == \
        json.loads((runs["trained"] / "output" / "generation_config.json").read_text())


def test_adapter_release_loads_with_peft_on_its_base(runs, tiny_model):
    import torch
    from transformers import AutoTokenizer

    run_dir, _ = release(runs["evaluated"], runs["folder"], "release.what=adapter", "run.name=tiny-adapter")
    folder = run_dir / "release"
    assert sorted(path.name for path in folder.iterdir() if path.suffix == ".safetensors") == \
        ["adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny_llama"  # the base option's name: it is on no hub
    card = card_of(folder)
    assert card.data.base_model_relation == "adapter" and card.data.library_name == "peft"
    assert card.data.model_name == "tiny-adapter" and len(card.data.eval_results) == 1
    assert machine_traces(folder, [runs["folder"], tiny_model]) == []
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    released = adapter_model(tiny_model, folder)
    assert torch.allclose(logits(released, tokenizer),
                          logits(adapter_model(tiny_model, runs["trained"] / "output"), tokenizer))


def copy_run(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target, symlinks=True)
    return target


def test_hostile_licence_and_run_name_leave_the_cards_metadata_as_written(runs, tmp_path):
    hostile = copy_run(runs["trained"], tmp_path / "hostile-run")
    record = json.loads((hostile / "provenance.json").read_text())
    record["data"]["license"] = "CC-BY-NC-4.0\n---\nlicense: mit\n</script><script>alert(1)</script>"
    record["data"]["hub_id"] = "someone/italian-sample"
    (hostile / "provenance.json").write_text(json.dumps(record))
    config = yaml.safe_load((hostile / "config.yaml").read_text())
    config["run"]["name"] = "<script>x|*y*"
    (hostile / "config.yaml").write_text(yaml.safe_dump(config))

    run_dir, log = release(hostile, tmp_path, "run.name='rel: x #y [z]'")
    card = card_of(run_dir / "release")
    assert card.data.license == "other" and card.data.license_name == "built-by-llamantino-random-weights"
    assert card.data.eval_results is None and card.data.datasets == ["someone/italian-sample"]
    front, body = card.content.split("\n---\n", 1)
    assert "license: mit" not in front and "script" not in front
    assert body.lstrip().startswith("# rel: x \\#y \\[z\\]\n")
    assert "<script>" not in body.split("## Reproduce")[0]  # outside code blocks, HTML shows as text
    assert not [line for line in body.splitlines() if line.strip() == "---"]
    assert "**CC-BY-NC-4.0 --- license: mit &lt;/script&gt;" in body  # one line, bold, shown as text
    assert "| 1. &lt;script&gt;x\\|\\*y\\* | sft |" in body
    assert ("notice: data it_instructions_sample is licensed CC-BY-NC-4.0 --- license: mit "
            "</script><script>alert(1)</script>: the released model may not be used commercially\n") in log


def test_a_machine_path_in_a_copied_file_or_an_unfinished_run_stops_the_release_leaving_nothing(runs, tmp_path):
    leaky = copy_run(runs["trained"], tmp_path / "leaky-run")
    template = leaky / "output" / "chat_template.jinja"
    template.write_text(template.read_text() + "{# trained from /scratch/someone/data.jsonl #}")
    run_dir = run_dir_of(ok(cli("stage=release", f"run.input_model={leaky}", f"run.output_root={tmp_path}",
                                "launcher=dry", cwd=tmp_path)))
    job = cli(".", module="llamantino.job.release", cwd=run_dir)
    assert job.returncode == 2 and job.stderr.count("\n") == 1, job.stderr
    assert "chat_template.jinja names this machine (/scratch/someone/data.jsonl)" in job.stderr
    assert not [entry for entry in os.listdir(run_dir) if entry.startswith((".", "release"))
                and entry != "release.json"]

    template.write_text(template.read_text().replace("{# trained from /scratch/someone/data.jsonl #}", ""))
    done = ok(cli(".", module="llamantino.job.release", cwd=run_dir))
    first = (run_dir / "release" / "README.md").read_text()
    assert "llamantino release: model" in done.stdout
    ok(cli(".", module="llamantino.job.release", cwd=run_dir))  # again: replaces the folder in one rename
    assert (run_dir / "release" / "README.md").read_text() == first
    assert sorted(entry for entry in os.listdir(run_dir) if entry.startswith(".")) == []

    status = json.loads((leaky / "status.json").read_text())
    (leaky / "status.json").write_text(json.dumps({**status, "state": "FAILED", "exit_code": 1}))
    refused = cli(".", module="llamantino.job.release", cwd=run_dir)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"lineage run 1 {leaky} has not completed" in refused.stderr
    assert "has not completed (state: FAILED)" in refused.stderr
    assert (run_dir / "release" / "README.md").read_text() == first  # the earlier release stays as it was


def test_the_runs_own_card_shows_names_and_placeholders_not_machine_paths(runs):
    card = (runs["trained"] / "output" / "README.md").read_text()
    reproduce = card.split("## Reproduce", 1)[1].split("## Data", 1)[0]
    command = next(line for line in reproduce.splitlines() if line.startswith("python -m llamantino "))
    # each override quoted for the shell, as Hydra got it; the output root of this machine as <path>
    assert shlex.split(command) == ["python", "-m", "llamantino", "stage.max_steps=2", "stage.saves_per_epoch=null",
                                    f"data.license='{NC_LICENCE}'", "run.output_root=<path>"]
    assert str(runs["folder"]) not in reproduce
    evaluation = card.split("## Evaluation", 1)[1]
    assert "`local_smoke` (run `eval-tiny_llama-local_smoke`):" in evaluation
    assert str(runs["evaluated"]) not in evaluation


def test_scores_are_read_with_stderr_few_shot_and_dataset_and_old_results_stay_readable(tmp_path):
    from llamantino.errors import RunDirError
    from llamantino.job.evaluate import fewshot_counts, read_scores
    from llamantino.records.manifests import EvalGroup, EvalPlan
    from llamantino.records.rundir import RunDir

    plan = EvalPlan(eval="x", model={}, model_args="", device="cpu", processes=1, gpus=0, batch_size="1", limit=None,
                    include_path=None, harness={}, groups=[EvalGroup(0, ["arc_it"]), EvalGroup(5, ["local", "odd"])],
                    metrics={"arc_it": "acc_norm", "local": "acc", "odd": "acc"}, leaderboard=False, target=None,
                    evaluated_run=None)
    written = {"results": {"arc_it": {"acc_norm,none": 0.5, "acc_norm_stderr,none": 0.01},
                           "local": {"acc,none": 1, "acc_stderr,none": "N/A"},
                           "odd": {"acc,none": 0.25, "acc_stderr,none": float("nan")}},
               "versions": {"arc_it": 2.0},
               "configs": {"arc_it": {"dataset_path": "alexandrainst/m_arc", "dataset_name": "it"},
                           "local": {"dataset_path": "json"},
                           "odd": {"dataset_path": "/tmp/../etc", "dataset_name": ["not", "a", "name"]}}}
    folder = tmp_path / "eval_results" / "fewshot_0"
    folder.mkdir(parents=True)
    (folder / "results_1.json").write_text(json.dumps(written))
    found = read_scores(tmp_path, plan)
    assert found.scores == {"arc_it": 0.5, "local": 1.0, "odd": 0.25}
    assert found.stderr == {"arc_it": 0.01}  # "N/A" and NaN are not standard errors
    assert found.datasets == {"arc_it": "alexandrainst/m_arc"} and found.dataset_configs == {"arc_it": "it"}
    assert found.versions["arc_it"] == "2.0" and fewshot_counts(plan) == {"arc_it": 0, "local": 5, "odd": 5}

    (folder / "results_1.json").write_text(json.dumps({**written, "results": {"arc_it": {"acc_norm,none": "high"}}}))
    with pytest.raises(RunDirError, match="must be a number"):
        read_scores(tmp_path, plan)

    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"eval": "x", "scores": {"arc_it": 0.5}, "model": {}}))
    result = RunDir(old).results()
    assert result.stderr is None and result.num_fewshot is None and result.datasets is None
    (old / "results.json").write_text(json.dumps({"eval": "x", "scores": {}, "model": {}, "stderr": {"a": "low"}}))
    with pytest.raises(RunDirError, match="stderr.a='low' must be a number"):
        RunDir(old).results()


def test_a_merged_run_is_released_as_it_is_with_its_two_step_lineage(runs, tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = run_dir_of(ok(cli("stage=merge", f"run.input_adapter={runs['trained']}", f"run.output_root={tmp_path}",
                               cwd=tmp_path)))
    run_dir, log = release(merged, tmp_path)
    folder = run_dir / "release"
    card = card_of(folder)
    assert card.data.eval_results is None and "Not evaluated" in card.text
    lineage = [line for line in card.text.splitlines() if line.startswith(("| 1. ", "| 2. "))]
    assert len(lineage) == 2 and "| sft | it\\_instructions\\_sample | 0.01 | 2 steps | lora r=64 |" in lineage[0]
    assert "| merge | - | - | - | - | - | - |" in lineage[1]  # a merge trains nothing
    assert f"notice: data it_instructions_sample is licensed {NC_LICENCE}" in log  # from the first step's data
    assert machine_traces(folder, [runs["folder"], tmp_path, tiny_model]) == []
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    chat = [{"role": "user", "content": "Ciao"}]  # the released model answers in the format it was trained in
    trained_with = AutoTokenizer.from_pretrained(str(runs["trained"] / "output"))
    assert tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        trained_with.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    expected = logits(AutoModelForCausalLM.from_pretrained(str(merged / "output" / "merged")), tokenizer)
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(str(folder)), tokenizer), expected)
