"""Presets reproduce the published models' settings; recipes are shared as data, safely."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT, cli, ok, run_dir_of

from llamantino.paths import RECIPES_DIR
from llamantino.orchestrate.sharing import preset_names, render_preset


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_renders_validates_and_matches_its_committed_recipe(name):
    for filename, text in render_preset(name).items():  # render_preset validates with Axolotl
        committed = RECIPES_DIR / name / filename
        assert committed.is_file(), f"{committed} missing: python -m llamantino recipe presets --write"
        assert committed.read_text() == text, f"{committed} drifted: re-render and review"
    assert f"# preset: {name}" in (RECIPES_DIR / name / "axolotl.yaml").read_text()
    assert f"# re-create: python -m llamantino experiment={name}" in (RECIPES_DIR / name / "axolotl.yaml").read_text()


def test_every_committed_sbatch_is_valid_bash():
    scripts = sorted(RECIPES_DIR.glob("*/job.sbatch")) + sorted((ROOT / "tests" / "golden").glob("*.sbatch"))
    assert len(scripts) >= 8
    for script in scripts:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script


def test_preset_targets_are_the_leaderboard_scores(compose):
    from llamantino.job.evaluate import leaderboard

    board = leaderboard()["models"]
    for name in preset_names():
        target = compose(f"experiment={name}").target
        if target:
            assert target.scores == board[target.model_id], name


def test_published_settings(compose):
    adapt = compose("experiment=llamantino2_7b_adapt")
    assert (adapt.stage.adapter, adapt.stage.lora_r, adapt.stage.lora_alpha, adapt.stage.lora_dropout,
            adapt.stage.micro_batch_size, adapt.stage.max_steps, adapt.stage.sequence_len,
            adapt.hardware.nodes, adapt.hardware.gpus_per_node, adapt.data.hub_id,
            adapt.data.subset) == ("qlora", 64, 16, 0.1, 8, 25000, 1024, 3, 4, "gsarti/clean_mc4_it", "medium")
    for name, epochs in (("llamantino2_chat_7b_sft", 3), ("llamantino2_chat_13b_sft", 5)):
        sft = compose(f"experiment={name}")
        assert (sft.stage.adapter, sft.stage.micro_batch_size, sft.stage.num_epochs,
                sft.hardware.nodes, sft.prompt.template) == (None, 16, epochs, 2, "llamantino2_chat")
    dpo = compose("experiment=anita_8b_dpo").stage
    assert (dpo.lora_r, dpo.lora_alpha, dpo.use_rslora, dpo.rl_beta, dpo.learning_rate, dpo.num_epochs,
            dpo.sequence_len, dpo.max_prompt_len, dpo.adapter, dpo.val_set_size) == \
        (64, 16, True, 0.1, 5e-6, 2, 1024, 512, "qlora", 0.01)  # f5919e2, the commit run on Llama-3-8B-Instruct
    anita = compose("experiment=anita_8b_sft")
    sft = anita.stage
    assert (sft.adapter, sft.lora_r, sft.lora_alpha, sft.learning_rate, sft.num_epochs, sft.optimizer,
            sft.train_on_inputs, sft.sample_packing) == ("lora", 16, 8, 8e-6, 1, "paged_adamw_32bit", True, False)
    # f5919e2 applied the chat template with no system turn (its English prompt sat in an unused variable)
    assert anita.prompt.system_prompt is None and anita.prompt.script_exact
    assert not compose("experiment=anita_8b_adapt").stage.sample_packing  # the script did not pack
    big = compose("experiment=llamantino2_70b_sft")
    assert (big.prompt.template, big.stage.lora_dropout) == ("llamantino2_chat_70b", 0.1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run to share: rendered and written, not trained (the e2e test below trains its import)."""
    work = tmp_path_factory.mktemp("share")
    return run_dir_of(ok(cli("stage.max_steps=1", "stage.saves_per_epoch=null", "launcher=dry", cwd=work))), work


def fresh_clone(tmp_path):
    """The project's files (tracked and new, not ignored) copied elsewhere: another machine's clone."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    clone = tmp_path / "elsewhere" / "llamantino"
    for name in files:
        source = ROOT / name
        if source.is_symlink() or source.is_file():
            target = clone / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    return clone


@pytest.mark.e2e
def test_export_import_in_another_clone_renders_byte_identical_and_trains(trained_run, tmp_path):
    run_dir, work = trained_run
    recipe = tmp_path / "shared.llamantino.yaml"
    ok(cli("export", str(run_dir), "-o", str(recipe), verb="recipe", cwd=work))
    assert "HF_TOKEN" not in recipe.read_text()
    clone = fresh_clone(tmp_path)
    env = {"PYTHONPATH": str(clone)}
    imported = run_dir_of(ok(cli("import", str(recipe), "--dest", str(tmp_path / "imported"),
                                 verb="recipe", cwd=tmp_path, env=env)))
    assert (imported / "axolotl.yaml").read_bytes() == (run_dir / "axolotl.yaml").read_bytes()
    assert str(clone) in str((imported / "inputs" / "it_istruzioni.jsonl").resolve())  # the clone's own data
    ok(cli(str(imported), "--launcher", "local", verb="launch", cwd=tmp_path, env=env))
    assert (imported / "output" / "adapter_model.safetensors").is_file()
    diff = ok(cli("diff", str(run_dir), str(imported), verb="recipe", cwd=tmp_path)).stdout
    assert "stage." not in diff and "model." not in diff


def _tamper(recipe, tmp_path, edit, name="bad.yaml"):
    record = yaml.safe_load(recipe.read_text())
    edit(record)
    from llamantino.orchestrate.sharing import checksum

    record["checksum"] = checksum(record)  # a consistent checksum: the other checks must catch it
    path = tmp_path / name
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def exported(trained_run):
    run_dir, work = trained_run
    recipe = work / "exported.llamantino.yaml"
    if not recipe.exists():
        ok(cli("export", str(run_dir), "-o", str(recipe), verb="recipe", cwd=work))
    return recipe


@pytest.mark.parametrize("case, edit, message", [
    ("target", lambda r: r["config"]["stage"]["axolotl"].update({"_target_": "os.system", "_args_": ["touch pwned"]}),
     "instantiation keys are refused"),
    ("shell name", lambda r: r["config"]["run"].update({"name": "../../x"}), "cannot be a folder name"),
    ("escaping path", lambda r: r["config"]["data"].update({"path": "../../../etc/passwd"}), "leaves datasets_ita"),
    ("unknown key", lambda r: r.update({"postinstall": "curl x | sh"}), "unknown keys postinstall"),
    ("version", lambda r: r["versions"].update({"axolotl": "0.12.0"}), "made with axolotl 0.12.0"),
    ("data", lambda r: r["lock"]["data"].update({"sha256": "0" * 64}), "sha256"),
    ("edited recipe", lambda r: r.update({"axolotl_yaml": r["axolotl_yaml"].replace("lora_r: 64", "lora_r: 8")}),
     "differs from the recipe"),
])
def test_bad_recipes_are_refused_without_side_effects(exported, tmp_path, case, edit, message):
    path = _tamper(exported, tmp_path, edit)
    proc = cli("import", str(path), "--dest", str(tmp_path / "dest"), verb="recipe", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").rglob("config.yaml"))
    assert not list(tmp_path.rglob("pwned"))


def test_interpolations_in_a_recipe_stay_text(exported, tmp_path):
    import os

    path = _tamper(exported, tmp_path, lambda r: r["config"]["run"].update({"notes": "${oc.env:HOME}"}))
    run_dir = run_dir_of(ok(cli("import", str(path), "--dest", str(tmp_path / "dest"), verb="recipe",
                                cwd=tmp_path)))
    notes = yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["notes"]
    assert notes == "${oc.env:HOME}" and os.environ["HOME"] not in notes


def test_tampered_and_truncated_files_are_refused(exported, tmp_path):
    text = exported.read_text()
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(text.replace("lora_r: 64", "lora_r: 65", 1))
    proc = cli("import", str(tampered), verb="recipe", cwd=tmp_path)
    assert proc.returncode == 2 and "checksum mismatch" in proc.stderr
    truncated = tmp_path / "truncated.yaml"
    truncated.write_text(text[: len(text) // 3].rsplit("\n", 1)[0] + "\n")
    proc = cli("import", str(truncated), verb="recipe", cwd=tmp_path)
    assert proc.returncode == 2 and ("truncated" in proc.stderr or "not a readable recipe" in proc.stderr), proc.stderr


def test_secrets_are_never_exported(trained_run, tmp_path):
    import json

    run_dir, work = trained_run
    leaky = tmp_path / "leaky"
    shutil.copytree(run_dir, leaky, symlinks=True)
    config = yaml.safe_load((leaky / "config.yaml").read_text())
    config["hardware"]["slurm"]["env"]["HF_TOKEN"] = "hf_" + "a" * 30
    (leaky / "config.yaml").write_text(yaml.safe_dump(config))
    proc = cli("export", str(leaky), "-o", str(tmp_path / "x.yaml"), verb="recipe", cwd=tmp_path)
    assert proc.returncode == 2 and "hardware.slurm.env.HF_TOKEN" in proc.stderr
    assert not (tmp_path / "x.yaml").exists()
    assert "hf_" not in json.dumps(json.loads((run_dir / "provenance.json").read_text())["overrides"])


def test_a_recipe_is_also_a_hydra_experiment(compose):
    """Presets are Hydra experiment configs: usable with experiment=<name> or from a search path."""
    cfg = compose("experiment=anita_8b_dpo")
    assert cfg.experiment == "anita_8b_dpo" and cfg.stage.rl == "dpo"
