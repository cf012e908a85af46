"""Hostile shared recipes, as a table (issue 20, section 1 and the export half of section 6): a recipe
is data that can bring no code and reach nothing outside its run. Each import row is an exported
recipe edited and its checksum recomputed (the checksum guards against accidents only), or a
hostile YAML file; each export row is a run directory whose files were edited. Every row must end
in one ``error:`` line and exit 2, write nothing and submit nothing (tests/hostile.py).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time

import pytest
import yaml

from conftest import PYTHON, ROOT, cli, ok, run_dir_of
from hostile import tampered, assert_refused, hostile_env, hostile_folder

DRY = ["launcher=dry"]
HEADLINE = "main,trust_remote_code=True"
DEST = ["--dest", "{w}/dest"]


def imported(name: str, *extra: str) -> list[str]:
    return ["import", f"{{w}}/{name}.yaml", *DEST, *extra]


# (id, module, arguments, text the error line must contain)
ROWS = [
    # the headline: an eval recipe whose revision carries a second lm-eval model argument
    ("revision adds trust_remote_code", "recipe", imported("revision"), "--allow model.revision"),
    ("compose revision adds trust_remote_code", "llamantino",
     ["stage=eval", "eval=local_smoke", "model=llama3_8b", f"model.revision='{HEADLINE}'", *DRY],
     "a value may not hold ',' or '='"),
    # code and foreign paths through the config
    ("container image", "recipe", imported("container"), "--allow hardware.container.image"),
    ("container binds root", "recipe", imported("container"), "--allow hardware.container.binds"),
    ("modulefile", "recipe", imported("modules"), "--allow hardware.slurm.modules"),
    ("nccl net plugin", "recipe", imported("nccl_plugin"), "--allow hardware.slurm.env.NCCL_NET_PLUGIN"),
    ("nccl debug file", "recipe", imported("nccl_debug_file"), "--allow hardware.slurm.env.NCCL_DEBUG_FILE"),
    ("nccl value with a path", "recipe", imported("nccl_value"), "NCCL_SOCKET_IFNAME value '$(touch /tmp/pwned)' is not a tuning value"),
    ("hf home variable", "recipe", imported("hf_home_env"), "--allow hardware.slurm.env.HF_HOME"),
    ("hf home storage", "recipe", imported("hf_home_storage"), "--allow hardware.storage.hf_home"),
    ("axolotl base model path", "recipe", imported("axolotl_base_model"), "--allow stage.axolotl.base_model"),
    ("hub id path", "recipe", imported("hub_id_path"), "--allow model.hub_id"),
    ("data hub id path", "recipe", imported("data_hub_id_path"), "--allow data.hub_id"),
    ("trainer class", "recipe", imported("trainer_cls"), "--allow stage.axolotl.trainer_cls"),
    ("axolotl plugins", "recipe", imported("plugins"), "--allow stage.axolotl.plugins"),
    ("hub kernels", "recipe", imported("use_kernels"), "--allow stage.axolotl.use_kernels"),
    ("trust_remote_code in model tuning", "recipe", imported("tuning_remote_code"),
     "--allow model.tuning.axolotl.trust_remote_code"),
    ("home data without its hash", "recipe", imported("home_data"), "'~/private.jsonl' leaves datasets_ita/"),
    ("lock without the data hash", "recipe", imported("no_sha256"), "the recipe's lock was cut"),
    ("include path in home", "recipe", imported("include_home"), "--allow eval.include_path"),
    ("unknown versions key", "recipe", imported("versions_key"), "versions may name only"),
    ("unknown lock key", "recipe", imported("lock_key"), "in the recipe's lock"),
    ("allow a subtree", "recipe", imported("container", "--allow", "hardware"), "names a group of settings"),
    ("allow no such key", "recipe", imported("container", "--allow", "hardware.container.imag"),
     "is not a setting of this recipe"),
    ("exact allow of one of two", "recipe", imported("container", "--allow", "hardware.container.image"),
     "--allow hardware.container.binds"),
    # YAML features that hide or multiply data, refused before anything is built
    ("yaml anchor", "recipe", ["import", "{w}/anchor.yaml", *DEST], "anchor.yaml:3: YAML anchors and aliases"),
    ("yaml merge key", "recipe", ["import", "{w}/merge.yaml", *DEST], "merge.yaml:4: YAML merge keys"),
    ("yaml python tag", "recipe", ["import", "{w}/python_tag.yaml", *DEST], "YAML tag tag:yaml.org,2002:python/object"),
    ("billion laughs", "recipe", ["import", "{w}/laughs.yaml", *DEST], "laughs.yaml:8: YAML anchors and aliases"),
    ("oversized recipe", "recipe", ["import", "{w}/huge.yaml", *DEST], "larger than 1 MiB"),
    ("deep nesting", "recipe", ["import", "{w}/deep.yaml", *DEST], "nested deeper than 20 levels"),
    ("diff of laughs", "recipe", ["diff", "{w}/laughs.yaml", "{w}/laughs.yaml"], "YAML anchors and aliases"),
    # export: secrets in values, a run name that is a path, a planted link
    ("export wandb key", "recipe", ["export", "{w}/wandb_run", "-o", "{w}/out.yaml"], "hardware.slurm.env.WANDB_KEY"),
    ("export aws secret", "recipe", ["export", "{w}/aws_run", "-o", "{w}/out.yaml"], "look like secrets (run.notes)"),
    ("export mlflow password", "recipe", ["export", "{w}/mlflow_run", "-o", "{w}/out.yaml"], "tracking.uri"),
    ("export name escapes", "recipe", ["export", "{w}/escape_run"], "../../x"),
    ("export onto a link", "recipe", ["export", "{w}/dry_run", "-o", "{w}/link.yaml"], "(a symbolic link)"),
]


def _laughs() -> str:
    """A billion-laughs recipe of about 13 KB: its config expands to 9**30 strings."""
    lines = ["llamantino_recipe: 1", "name: laughs", "versions: {}", "overrides: []", "axolotl_yaml: null",
             "checksum: '0'", "config:", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 31):
        lines.append(f"  l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]" + " " * 400)
    return "\n".join(lines) + "\n"


def _run_copy(w, name: str, edit) -> None:
    """A copy of the dry run whose config.yaml was edited (a run read back from disk is untrusted)."""
    shutil.copytree(w / "dry_run", w / name, symlinks=True)
    config = yaml.safe_load((w / name / "config.yaml").read_text())
    edit(config)
    (w / name / "config.yaml").write_text(yaml.safe_dump(config))


def _set(record, dotted: str, value):
    *parents, last = dotted.split(".")
    node = record
    for part in parents:
        node = node[part]
    node[last] = value


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("hostile_sharing")
    env = {"HF_HUB_OFFLINE": "1"}
    os.rename(run_dir_of(ok(cli("stage.max_steps=1", *DRY, cwd=w, env=env))), w / "dry_run")
    os.rename(run_dir_of(ok(cli("stage=eval", "eval=local_smoke", "model=llama3_8b", *DRY, cwd=w, env=env))),
              w / "eval_run")
    shutil.rmtree(w / "runs")
    for run, name in (("dry_run", "good"), ("eval_run", "eval")):
        ok(cli("export", str(w / run), "-o", str(w / f"{name}.yaml"), verb="recipe", cwd=w))
    good = yaml.safe_load((w / "good.yaml").read_text())
    evaluation = yaml.safe_load((w / "eval.yaml").read_text())
    env_of = lambda r: r["config"]["hardware"]["slurm"]["env"]
    variants = {
        "container": lambda r: _set(r, "config.hardware.container",
                                    {"image": "/tmp/evil.sif", "runtime": "apptainer", "binds": ["/:/host"]}),
        "modules": lambda r: _set(r, "config.hardware.slurm.modules", ["/tmp/evil/modulefile"]),
        "nccl_plugin": lambda r: env_of(r).update(NCCL_NET_PLUGIN="/tmp/libnccl-net-evil.so"),
        "nccl_debug_file": lambda r: env_of(r).update(NCCL_DEBUG_FILE="/home/someone/.bashrc"),
        "nccl_value": lambda r: env_of(r).update(NCCL_SOCKET_IFNAME="$(touch /tmp/pwned)"),
        "hf_home_env": lambda r: env_of(r).update(HF_HOME="/tmp/elsewhere"),
        "hf_home_storage": lambda r: _set(r, "config.hardware.storage.hf_home", "/tmp/elsewhere"),
        "axolotl_base_model": lambda r: r["config"]["stage"]["axolotl"].update(base_model="/home/someone/model"),
        "hub_id_path": lambda r: _set(r, "config.model.hub_id", "/home/someone/model"),
        "data_hub_id_path": lambda r: _set(r, "config.data.hub_id", "../../private"),
        "trainer_cls": lambda r: r["config"]["stage"]["axolotl"].update(trainer_cls="evil.Trainer"),
        "plugins": lambda r: r["config"]["stage"]["axolotl"].update(plugins=["evil.Plugin"]),
        "use_kernels": lambda r: r["config"]["stage"]["axolotl"].update(use_kernels=True),
        "tuning_remote_code": lambda r: r["config"]["model"]["tuning"].update(axolotl={"trust_remote_code": True}),
        "home_data": lambda r: (_set(r, "config.data.path", "~/private.jsonl"), r["lock"]["data"].pop("sha256")),
        "no_sha256": lambda r: r["lock"]["data"].pop("sha256"),
        "include_home": lambda r: _set(r, "config.eval.include_path", "~/tasks"),
        "versions_key": lambda r: r["versions"].update(postinstall="curl x | sh"),
        "lock_key": lambda r: r["lock"].update(hooks=["curl x | sh"]),
        "many": lambda r: (_set(r, "config.hardware.container", {"image": "x.sif", "runtime": "apptainer", "binds": []}),
                           _set(r, "config.hardware.slurm.modules", ["evil"]),
                           env_of(r).update(NCCL_NET_PLUGIN="x.so", LD_PRELOAD="/tmp/x.so"),
                           r["config"]["stage"]["axolotl"].update(trainer_cls="evil.Trainer")),
        "nccl_debug_file_only": lambda r: env_of(r).update(NCCL_DEBUG_FILE="nccl.%h.log"),
    }
    for name, edit in variants.items():
        (w / f"{name}.yaml").write_text(tampered(good, edit))
    (w / "revision.yaml").write_text(tampered(evaluation, lambda r: _set(r, "config.model.revision", HEADLINE)))
    text = (w / "good.yaml").read_text()
    (w / "anchor.yaml").write_text("llamantino_recipe: 1\nname: x\nconfig: &c {}\ncopy: *c\n")
    (w / "merge.yaml").write_text("llamantino_recipe: 1\nbase: {lora_r: 8}\nconfig:\n  <<: {lora_r: 8}\n")
    (w / "python_tag.yaml").write_text("llamantino_recipe: 1\nconfig: !!python/object:os.system {}\n")
    (w / "laughs.yaml").write_text(_laughs())
    (w / "huge.yaml").write_text(text + "# " + "x" * (1 << 20) + "\n")
    (w / "deep.yaml").write_text("llamantino_recipe: 1\nconfig: " + "[" * 5000 + "]" * 5000 + "\n")
    _run_copy(w, "wandb_run", lambda c: c["hardware"]["slurm"]["env"].update(WANDB_KEY="0123456789abcdef" * 2 + "01234567"))
    _run_copy(w, "aws_run", lambda c: c["run"].update(notes="aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"))
    _run_copy(w, "mlflow_run", lambda c: c["tracking"].update(name="mlflow", uri="https://bob:s3cretpassw0rd@mlflow.example.com"))
    _run_copy(w, "escape_run", lambda c: c["run"].update(name="../../x"))
    (w / "elsewhere").mkdir()
    (w / "link.yaml").symlink_to(w / "elsewhere" / "planted.yaml")  # dangling: a write would create the target
    return hostile_folder(w)


def test_the_table_is_large_enough():
    assert len(ROWS) >= 22 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("name, module, args, needle", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_recipe_is_one_error_line_and_leaves_nothing(work, name, module, args, needle):
    assert_refused(work, module, args, needle, env={"HF_HUB_OFFLINE": "1"})
    assert not (work.parent.parent / "x.llamantino.yaml").exists()  # run.name ../../x


def test_the_refusal_lists_every_refused_key_at_once(work):
    proc = cli("import", str(work / "many.yaml"), "--dest", str(work / "dest"), verb="recipe", cwd=work)
    assert proc.returncode == 2
    for key in ("hardware.container.image", "hardware.slurm.modules", "hardware.slurm.env.NCCL_NET_PLUGIN",
                "hardware.slurm.env.LD_PRELOAD", "stage.axolotl.trainer_cls"):
        assert f"--allow {key}" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_exact_allow_of_one_key_imports_it(work, tmp_path):
    refused = cli("import", str(work / "nccl_debug_file_only.yaml"), "--dest", str(tmp_path), verb="recipe", cwd=work)
    assert refused.returncode == 2 and "--allow hardware.slurm.env.NCCL_DEBUG_FILE" in refused.stderr
    run_dir = run_dir_of(ok(cli("import", str(work / "nccl_debug_file_only.yaml"), "--dest", str(tmp_path), "--allow",
                                "hardware.slurm.env.NCCL_DEBUG_FILE", verb="recipe", cwd=work)))
    env = yaml.safe_load((run_dir / "config.yaml").read_text())["hardware"]["slurm"]["env"]
    assert env["NCCL_DEBUG_FILE"] == "nccl.%h.log"


def test_a_clean_eval_recipe_round_trips(work, tmp_path):
    run_dir = run_dir_of(ok(cli("import", str(work / "eval.yaml"), "--dest", str(tmp_path), verb="recipe", cwd=work,
                                env={"HF_HUB_OFFLINE": "1"})))
    plan = json.loads((run_dir / "eval.json").read_text())
    assert plan["model_args"].startswith("pretrained=") and "trust_remote_code" not in plan["model_args"]


def test_a_tampered_eval_plan_is_refused_when_rendered(work):
    """eval.json is read back by the job: its model_args may hold only what llamantino writes."""
    from llamantino.errors import ConfigError
    from llamantino.render.lmeval import lm_eval_argv

    plan = json.loads((work / "eval_run" / "eval.json").read_text())
    assert lm_eval_argv(plan, plan["groups"][0])[6].startswith("pretrained=")
    for model_args in (plan["model_args"] + ",trust_remote_code=True", "pretrained=x,pretrained=y", "pretrained"):
        with pytest.raises(ConfigError, match="has arguments llamantino does not write"):
            lm_eval_argv({**plan, "model_args": model_args}, plan["groups"][0])


def test_billion_laughs_is_refused_fast_in_bounded_memory(work):
    """The real command in a fresh interpreter capped at 1 GiB of address space: refused at once."""
    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    assert 12_000 < len((work / "laughs.yaml").read_bytes()) < 15_000
    started = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "llamantino", "recipe", "import", str(work / "laughs.yaml"), "--dest",
                           str(work / "dest")], cwd=work, capture_output=True, text=True, timeout=120,
                          preexec_fn=capped, check=False, env={**os.environ, **hostile_env(work)})
    assert time.monotonic() - started < 60
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "YAML anchors and aliases" in lines[0], proc.stderr
    assert not (work / "dest").exists()


def test_yaml_scan_alone_takes_milliseconds(work):
    from llamantino.errors import ConfigError
    from llamantino.orchestrate.sharing import load_record

    started = time.monotonic()
    with pytest.raises(ConfigError):
        load_record(work / "laughs.yaml")
    assert time.monotonic() - started < 0.5


def test_a_failed_export_leaves_no_file(work, tmp_path):
    """A write that fails half-way (here: a file size limit) leaves neither the recipe nor an empty one."""
    import signal

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([PYTHON, "-m", "llamantino", "recipe", "export", str(work / "dry_run"), "-o",
                           str(tmp_path / "out.yaml")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_default_export_name_is_the_run_name_here(work, tmp_path):
    ok(cli("export", str(work / "dry_run"), verb="recipe", cwd=tmp_path))
    name = yaml.safe_load((work / "dry_run" / "config.yaml").read_text())["run"]["name"]
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.llamantino.yaml"]


def test_exported_recipes_of_the_project_carry_no_false_secrets(work):
    """The shapes that need their service's name do not flag a git commit or the project's own files."""
    from llamantino.orchestrate.sharing import secrets_in

    assert secrets_in({"model": {"revision": "0123456789abcdef" * 2 + "01234567"}, "notes": "max tokens: 512"}) == []
    assert secrets_in({"env": {"WANDB_PROJECT": "llamantino"}, "lock": {"git": {"commit": "a" * 40}}}) == []
