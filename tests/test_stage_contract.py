"""The stage contract: stage types by their own unique names, unknown ones refused, and a new stage
added in exactly the files the README names, picked up by the config matrix without edits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, cli

TOY_STAGE = '''"""A toy reward stage (tests/test_stage_contract.py): preference pairs, trained under its own name."""

from llamantino.stages.train import TrainStage


class RewardStage(TrainStage):
    task = "reward"
'''
TOY_OPTION = """defaults:
  - override /data@_global_.data: it_preferences_sample

name: reward
task: reward
data_formats: [preferences]
adapter: lora
rl: dpo
rl_beta: 0.1
lora_r: 8
lora_alpha: 16
"""


def test_a_stage_type_must_name_itself_and_names_are_unique():
    from llamantino.stages import STAGES, registry
    from llamantino.stages.train import TrainStage

    assert set(STAGES) == {"train", "merge", "eval", "release"}

    class ForgotItsName(TrainStage):  # would silently replace TrainStage under "train"
        pass

    class AlsoTrain(TrainStage):
        task = "train"

    with pytest.raises(TypeError, match="must declare its own task name"):
        registry((TrainStage, ForgotItsName))
    with pytest.raises(TypeError, match="both declare task 'train'"):
        registry((TrainStage, AlsoTrain))


def test_an_unknown_stage_type_is_one_error_line_and_nothing_is_written(tmp_path):
    proc = cli("stage.task=reward", "launcher=dry", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "stage.task='reward' names no stage type; valid: train, merge, eval" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_written_run_knows_its_stage_type_from_its_record(tmp_path):
    from conftest import ok, run_dir_of
    from llamantino.records.rundir import RunDir
    from llamantino.stages import stage_for

    run = RunDir(run_dir_of(ok(cli("launcher=dry", cwd=tmp_path))))
    assert stage_for(run).task == "train"


def test_a_new_stage_takes_the_files_the_readme_names_and_the_matrix_finds_it(tmp_path):
    copy = tmp_path / "project"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():  # conf/data -> ../datasets_ita/registry
            (copy / name).symlink_to(os.readlink(ROOT / name))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, copy / name)
    # The three files the README's "A new stage" names, and nothing else:
    (copy / "llamantino/stages/reward.py").write_text(TOY_STAGE)
    init = copy / "llamantino/stages/__init__.py"
    text = init.read_text()
    text = text.replace("from llamantino.stages.train import TrainStage\n",
                        "from llamantino.stages.train import TrainStage\nfrom llamantino.stages.reward import RewardStage\n")
    text = text.replace("(TrainStage, MergeStage, EvalStage, ReleaseStage)",
                        "(TrainStage, MergeStage, EvalStage, ReleaseStage, RewardStage)")
    init.write_text(text)
    (copy / "conf/stage/reward.yaml").write_text(TOY_OPTION)

    readme = (ROOT / "README.md").read_text()
    bullet = re.search(r"- \*\*A new stage\*\*.*?(?=\n- \*\*)", readme, re.S).group(0)
    for named in ("llamantino/stages/", "STAGE_TYPES", "llamantino/stages/__init__.py", "conf/stage/<name>.yaml"):
        assert named in bullet, named

    env = {key: value for key, value in os.environ.items() if key != "LLAMANTINO_CONFIG_PATH"}
    env["PYTHONPATH"] = str(copy)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-q",
                           "tests/test_config_matrix.py", "-k", "tiny_llama and reward and cpu"],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\b1 passed\b", proc.stdout), proc.stdout[-2000:]  # it built the run, its record names "reward"
