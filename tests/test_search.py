"""``llamantino search``: Optuna studies run as batches of trials (local here; SLURM in test_search_slurm.py).

The space is parsed from Hydra's sweep syntax and checked whole before anything is written; a local
study trains every trial of the tiny model for real through Axolotl, the plugin reports each
evaluation to the journal and its pruner stops trials; status, collect, runs and --report read the
study; files read back (the journal, study.json, the trials' own records) are untrusted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import cli, ok, read_json

QUICK = ("stage=sft", "data=it_ultrachat_sample", "stage.max_steps=4", "stage.val_set_size=0.2",
         "stage.micro_batch_size=2", "stage.saves_per_epoch=null", "+stage.axolotl.eval_steps=1")


def journal_trials(study: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study / "journal.log")))
    return optuna.load_study(study_name="llamantino", storage=storage).get_trials(deepcopy=False)


# --- the space -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind, low, high, log, step, choices", [
    ("stage.learning_rate=tag(log,interval(1e-5,1e-3))", "float", 1e-5, 1e-3, True, None, []),
    ("stage.warmup_ratio=interval(0,0.1)", "float", 0.0, 0.1, False, None, []),
    ("stage.lora_r=choice(8,16,64)", "categorical", None, None, False, None, ["8", "16", "64"]),
    ("stage.lora_r=8,16", "categorical", None, None, False, None, ["8", "16"]),
    ("stage.num_epochs=range(1,4)", "int", 1, 3, False, 1, []),
    ("stage.lora_alpha=tag(int,interval(8,64))", "int", 8, 64, False, None, []),
    ("stage.lora_alpha=tag(int,log,interval(8,64))", "int", 8, 64, True, None, []),
    ("stage.optimizer=choice(adamw_torch,adamw_8bit)", "categorical", None, None, False, None,
     ["adamw_torch", "adamw_8bit"]),
])
def test_dimensions_parse_as_hydra_writes_sweeps(text, kind, low, high, log, step, choices):
    from llamantino.search.space import is_dimension, parse_dimension

    assert is_dimension(text)
    dimension = parse_dimension(text)
    assert (dimension.kind, dimension.low, dimension.high, dimension.log, dimension.step, dimension.choices) == \
        (kind, low, high, log, step, choices)
    assert not is_dimension(text.split("=")[0] + "=3")  # a plain override is shared, not searched


def test_values_from_the_journal_must_lie_inside_the_space():
    from llamantino.errors import ConfigError
    from llamantino.search.space import parse_dimension, trial_overrides

    space = [parse_dimension("stage.learning_rate=tag(log,interval(1e-5,1e-3))"),
             parse_dimension("stage.lora_r=choice(8,16)")]
    assert trial_overrides(space, {"stage.learning_rate": 2e-4, "stage.lora_r": "16"}, "t") == \
        ["stage.learning_rate=0.0002", "stage.lora_r=16"]
    for params in ({"stage.learning_rate": 0.5, "stage.lora_r": "8"},  # outside the interval
                   {"stage.learning_rate": 2e-4, "stage.lora_r": "8 hydra.run.dir=/etc"},  # not a choice
                   {"stage.learning_rate": float("nan"), "stage.lora_r": "8"},
                   {"stage.learning_rate": 2e-4, "stage.lora_r": "8", "launcher.name": "local"},  # a key not searched
                   {"stage.learning_rate": True, "stage.lora_r": "8"}):
        with pytest.raises(ConfigError):
            trial_overrides(space, params, "t")


# --- bad input: one error line, exit 2, nothing written or submitted -----------------------------


@pytest.mark.parametrize("arguments, needles", [
    (["stage.lora_rr=choice(8,16)"], ["stage.lora_rr", "not a config key"]),
    (["stage.learning_rate=interval(1e-3,1e-3)"], ["empty"]),
    (["stage.learning_rate=interval(1e-3,1e-5)"], ["inverted", "lower bound first"]),
    (["stage.learning_rate=tag(log,interval(0,1e-3))"], ["log interval needs a positive lower bound"]),
    (["stage.lora_r=choice(0,8)"], ["stage.lora_r=0 is refused", "stage.lora_r"]),
    (["stage.learning_rate=tag(sqrt,interval(1e-5,1e-3))"], ["tag 'sqrt'", "log, int"]),
    (["model=choice(tiny_llama,llama3_8b)"], ["not a dotted config key", "-m sweep"]),
    (["run.output_root=choice(a,b)"], ["run.output_root is set by the study"]),
    (["stage.optimizer=choice(adamw_torch,'a b')"], ["plain word"]),
    (["stage.learning_rate=1e-4"], ["no search dimension"]),
    (["stage.lora_r=choice(8,16)", "stage.lora_r=4"], ["both searched and set"]),
    (["stage.lora_r=choice(8,16)", "--trials", "0"], ["--trials 0", "at least one"]),
    (["stage.lora_r=choice(8,16)", "--batch", "0"], ["--batch 0"]),
    (["stage.lora_r=choice(8,16)", "--sampler", "grid"], ["--sampler grid", "tpe, random, cmaes, gp"]),
    (["stage.lora_r=choice(8,16)", "--objective", "loss", "--pruner", "median"], ["needs an eval objective"]),
    (["stage.lora_r=choice(8,16)", "launcher=dry"], ["launcher=dry", "launcher=slurm"]),
    (["stage.lora_r=choice(8,16)", "pipeline=tiny"], ["single training stages"]),
])
def test_bad_search_input_is_one_line_and_writes_nothing(tmp_path, arguments, needles):
    if "--trials" not in arguments:
        arguments = [*arguments, "--trials", "2"]
    proc = cli(*arguments, verb="search", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("arguments, needles", [
    (["stage=sft", "stage.val_set_size=0"], ["--objective eval_loss", "stage.val_set_size=0.1"]),
    (["stage=sft", "stage.val_set_size=0.2", "--objective", "eval_rewards/accuracies"],
     ["eval_rewards/accuracies", "valid: loss, eval_loss"]),
    (["stage=eval"], ["stage eval trains nothing", "stage=adapt, sft or dpo"]),
])
def test_an_objective_no_stage_logs_is_refused_before_anything_is_written(tmp_path, arguments, needles):
    proc = cli(*arguments, "data=it_ultrachat_sample", "stage.lora_dropout=choice(0.0,0.1)", "--trials", "2",
               verb="search", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr
    assert not (tmp_path / "runs" / "studies").exists() or not any((tmp_path / "runs" / "studies").iterdir())


def test_resume_and_report_refuse_a_folder_that_is_not_a_study(tmp_path):
    for option in ("--resume", "--report"):
        proc = cli(option, str(tmp_path), verb="search", cwd=tmp_path)
        assert proc.returncode == 2 and "not a study directory" in proc.stderr, proc.stderr
    proc = cli("--resume", str(tmp_path), "--trials", "3", verb="search", cwd=tmp_path)
    assert proc.returncode == 2 and "--trials cannot change it" in proc.stderr


# --- a whole local study, with pruning ------------------------------------------------------------


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """Three trials in batches of one, the median pruner on: seed 3 of the random sampler asks
    learning rate 0.01 first, then 1e-7 twice (checked below, not assumed)."""
    folder = tmp_path_factory.mktemp("study")
    proc = ok(cli(*QUICK, "stage.learning_rate=choice(0.01,1e-7)", "--trials", "3", "--batch", "1",
                  "--pruner", "median", "--sampler", "random", "--seed", "3", verb="search", cwd=folder))
    study = Path(proc.stdout.split("run_dir: ")[1].splitlines()[0])
    return proc, study


@pytest.mark.e2e
@pytest.mark.xdist_group("study")
def test_a_local_study_trains_every_trial_and_prunes_the_worse_ones(local_study):
    proc, study = local_study
    trials = journal_trials(study)
    assert len(trials) == 3 and all(trial.state.is_finished() for trial in trials)
    record = read_json(study / "study.json")
    assert [batch["trials"] for batch in record["batches"]] == [[0], [1], [2]]  # one batch after another
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert complete and pruned, [(t.number, t.state.name, t.params) for t in trials]
    for trial in trials:
        run = study / f"batch-{trial.number:03d}" / f"{trial.number:03d}"
        own = read_json(run / "output" / "llamantino_trial.json")  # the plugin's record of its evaluations
        assert own["pruned"] == (trial.state.name == "PRUNED")
        assert dict(trial.intermediate_values) == {step: value for step, value in own["values"]}
        provenance = read_json(run / "provenance.json")
        assert provenance["overrides"][-1] == f"stage.learning_rate={trial.params['stage.learning_rate']}"
        steps = read_json(run / "status.json")["losses"]["count"]
        if trial in pruned:  # stopped at its last evaluation, worse there than the median of those finished before
            last, value = max(trial.intermediate_values.items())
            before = [t.intermediate_values[last] for t in complete if t.number < trial.number]
            assert before and value > sorted(before)[len(before) // 2] and steps == last < 4
        else:  # ran every step; its objective is its final model's evaluation
            assert steps == 4 and trial.value == own["values"][-1][1] and own["values"][-1][0] == 4
    assert "the study is finished" in proc.stdout


@pytest.mark.e2e
@pytest.mark.xdist_group("study")
def test_status_collect_runs_and_report_read_a_study(local_study, tmp_path):
    _, study = local_study
    out = ok(cli(str(study), verb="status", cwd=tmp_path)).stdout
    assert out.startswith(f"study {study.name}: 1 complete, 2 pruned, 0 failed") and "000 " in out and "002 " in out
    listing = ok(cli(str(study.parent.parent), verb="runs", cwd=tmp_path)).stdout
    assert f"studies/{study.name} " in listing and "3/3 trials" in listing
    collected = ok(cli(str(study), verb="collect", cwd=tmp_path)).stdout
    assert "STAGE.LEARNING_RATE" in collected and (study / "collect.csv").is_file()
    report = ok(cli("--report", str(study), verb="search", cwd=tmp_path)).stdout
    best = min((t for t in journal_trials(study) if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert f"best: trial {best.number}, eval_loss={best.value:.6g}" in report
    folder = study / "report"
    for name in ("optimization_history.png", "param_importances.png", "slice.png", "intermediate_values.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG" and (folder / name).stat().st_size > 10_000, name
    rows = (folder / "trials.csv").read_text().splitlines()
    assert rows[0] == "trial,state,eval_loss,stage.learning_rate,run_dir,note" and len(rows) == 4
    assert f"stage.learning_rate={best.params['stage.learning_rate']}" in (folder / "best.txt").read_text()
    import yaml

    recipe = yaml.safe_load((folder / "best.llamantino.yaml").read_text())
    assert recipe["overrides"][-1] == f"stage.learning_rate={best.params['stage.learning_rate']}"
    assert recipe["config"]["run"]["trial"] is None and "llamantino_trial" not in recipe["axolotl_yaml"]
    # the shared recipe imports as it does for any run (re-rendered and compared)
    ok(cli("import", str(folder / "best.llamantino.yaml"), "--dest", str(tmp_path / "imported"), verb="recipe",
           cwd=tmp_path))


# --- files read back are untrusted -----------------------------------------------------------------


def _copy(study: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "copy" / study.name
    shutil.copytree(study, copy, symlinks=True)
    return copy


@pytest.mark.e2e
@pytest.mark.xdist_group("study")
def test_an_edited_journal_never_reaches_an_override(local_study, tmp_path):
    _, study = local_study
    copy = _copy(study, tmp_path)
    journal = copy / "journal.log"
    # a value outside the space written into the journal, as a hostile or careless hand would
    lines = journal.read_text().splitlines()
    edited = []
    for line in lines:
        data = json.loads(line)
        if data.get("op_code") == 5 and data.get("trial_id") == 0:  # set_trial_param of the complete trial
            data["distribution"] = json.dumps({"name": "CategoricalDistribution", "attributes": {
                "choices": ["0.01", "1e-07", "0.01 hydra.run.dir=/etc"]}})
            data["param_value_internal"] = 2
        edited.append(json.dumps(data))
    journal.write_text("\n".join(edited) + "\n")
    proc = ok(cli("--report", str(copy), verb="search", cwd=tmp_path))
    assert "outside the study's space" in proc.stdout  # said, and the trial shown without its values
    assert "hydra.run.dir" not in (copy / "report" / "trials.csv").read_text()
    # the only complete trial has no values the study accepts: it is not offered as the best
    assert "best: none yet" in proc.stdout and not (copy / "report" / "best.txt").exists()


@pytest.mark.e2e
@pytest.mark.xdist_group("study")
def test_broken_study_files_are_refused_naming_the_file(local_study, tmp_path):
    _, study = local_study
    copy = _copy(study, tmp_path)
    record = read_json(copy / "study.json")
    record["batches"][0]["name"] = "../../elsewhere"
    (copy / "study.json").write_text(json.dumps(record))
    proc = cli(str(copy), verb="status", cwd=tmp_path)
    assert proc.returncode == 2 and "study.json" in proc.stderr and "must name an entry" in proc.stderr

    for field, value in (("choices", ["0.01", "1e-07 hydra.run.dir=/etc"]), ("key", "launcher.name"),
                         ("high", 10.0)):
        copy = _copy(study, tmp_path / f"space-{field}")
        record = read_json(copy / "study.json")
        record["space"][0][field] = value  # the space no longer what its own text says
        (copy / "study.json").write_text(json.dumps(record))
        before = sorted(copy.rglob("*"))
        proc = cli("--report", str(copy), verb="search", cwd=tmp_path)
        assert proc.returncode == 2 and "study.json: study.space[0]" in proc.stderr, proc.stderr
        assert sorted(copy.rglob("*")) == before  # nothing written from it

    copy = _copy(study, tmp_path / "2")
    os.unlink(copy / "journal.log")
    os.symlink("/etc/hostname", copy / "journal.log")
    proc = cli("--report", str(copy), verb="search", cwd=tmp_path)
    assert proc.returncode == 2 and "journal.log is not a regular file" in proc.stderr

    copy = _copy(study, tmp_path / "3")
    trial = copy / "batch-000" / "000" / "output" / "llamantino_trial.json"
    trial.write_text(json.dumps({"metric": "eval_loss", "values": [["1", "x"]], "pruned": False}))
    from llamantino.errors import RunDirError
    from llamantino.records.rundir import RunDir
    from llamantino.search.study import objective_of

    with pytest.raises(RunDirError, match="values must be"):
        objective_of(RunDir(trial.parent.parent), "eval_loss")


# --- samplers, the step job's script, the submission that signals cannot cut -----------------------


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
def test_every_sampler_asks_values_inside_the_space_seeded_per_batch(tmp_path, sampler):
    from optuna.trial import TrialState

    from llamantino.records.manifests import StudyRecord
    from llamantino.records.rundir import StudyDir
    from llamantino.search.space import parse_dimension, suggest, trial_overrides
    from llamantino.search.study import open_study

    space = [parse_dimension("stage.learning_rate=tag(log,interval(1e-5,1e-3))"),
             parse_dimension("stage.lora_alpha=tag(int,interval(8,64))"), parse_dimension("stage.lora_r=choice(8,16)")]
    record = StudyRecord(name="s", launcher="local", overrides=[], space=space, objective="eval_loss",
                         direction="minimize", trials=8, batch=2, sampler=sampler, seed=7, pruner="none")
    study = StudyDir(tmp_path)
    asked = []
    for batch in range(4):
        optuna_study = open_study(study, record, batch, create=batch == 0)
        for _ in range(2):
            trial = optuna_study.ask()
            values = trial_overrides(space, {d.key: suggest(trial, d) for d in space}, "t")  # inside, or refused
            asked.append(tuple(values))
            optuna_study.tell(trial.number, float(len(asked)))
    assert len(set(asked)) == len(asked)  # each batch's process draws afresh, never the same values again
    again = StudyDir(tmp_path / "again")
    again.path.mkdir()
    first = open_study(again, record, 0, create=True).ask()
    assert tuple(trial_overrides(space, {d.key: suggest(first, d) for d in space}, "t")) == asked[0]  # seeded
    assert all(t.state == TrialState.COMPLETE for t in open_study(study, record, 4).trials)


def test_the_step_jobs_script_quotes_the_study_path(tmp_path, compose):
    from llamantino.render.sbatch import search_step_script

    hostile = tmp_path / "a b" / "$(touch pwned)'; touch pwned2 #"
    text = search_step_script(compose("hardware=local_slurm", "launcher=slurm"), hostile)
    script = tmp_path / "step.sbatch"
    script.write_text(text)
    assert subprocess_ok(["bash", "-n", str(script)])
    body = [line for line in text.splitlines() if line.startswith(("PYTHON=", "cd ", "exec "))]
    assert body[2].endswith("-m llamantino search --step " + body[1].removeprefix("cd ").removesuffix(" || exit 1"))
    # run the two lines with a stand-in Python: the path arrives as one argument, nothing is executed
    (hostile).mkdir(parents=True)
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    import subprocess

    subprocess.run(["bash", "-c", "\n".join(body)], cwd=tmp_path, check=True,
                   env={**os.environ, "LLAMANTINO_PYTHON": str(fake), "ARGS_OUT": str(tmp_path / "args")})
    assert (tmp_path / "args").read_text().splitlines() == ["-m", "llamantino", "search", "--step", str(hostile)]
    assert not list(tmp_path.rglob("pwned*"))


def subprocess_ok(argv) -> bool:
    import subprocess

    return subprocess.run(argv, capture_output=True).returncode == 0


def test_sigterm_waits_until_a_submission_and_its_record_are_done(tmp_path):
    """What scancel sends a step job mid-submission: the block finishes, then the signal takes effect."""
    import subprocess
    import sys

    code = (
        "import os, signal, time\n"
        "from llamantino.search.study import uninterrupted\n"
        "with uninterrupted():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.5)\n"
        f"    open({str(tmp_path / 'recorded')!r}, 'w').write('job 1')\n"
        f"open({str(tmp_path / 'after')!r}, 'w').write('never')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -15  # ended by the SIGTERM, once the block was done
    assert (tmp_path / "recorded").read_text() == "job 1" and not (tmp_path / "after").exists()


@pytest.mark.e2e
def test_a_local_study_cancelled_mid_trial_resumes_and_spends_its_budget(tmp_path):
    import subprocess
    import sys

    from conftest import until

    command = subprocess.Popen([sys.executable, "-m", "llamantino", "search", *QUICK, "stage.max_steps=30",
                                "stage.lora_r=choice(4,8)", "--trials", "2", "--batch", "1", "--seed", "1"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trial = until(lambda: next(iter(tmp_path.glob("runs/studies/*/batch-000/000/logs/train.log")), None), 300,
                  "trial 0 started")
    until(lambda: "step 2/30" in trial.read_text(errors="replace"), 300, "trial 0 training")
    study = trial.parents[3]
    out = ok(cli(str(study), verb="cancel", cwd=tmp_path)).stdout
    assert "cancelled 000" in out
    output = command.communicate(timeout=300)[0]
    assert command.returncode == 2 and "search --resume" in output.splitlines()[-1], output[-2000:]
    assert [t.state.name for t in journal_trials(study)] == ["RUNNING"]  # not an outcome of its values
    assert not (study / "batch-001").exists()  # nothing asked after the cancel

    proc = ok(cli("--resume", str(study), verb="search", cwd=tmp_path))
    assert "resuming trials 0 of batch-000" in proc.stdout and "the study is finished" in proc.stdout
    trials = journal_trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    run = study / "batch-000" / "000"
    assert read_json(run / "logs" / "status.attempt-1.json")["state"] == "CANCELLED"  # the cancelled attempt, kept
    assert read_json(run / "status.json")["state"] == "COMPLETED"


def test_plan_bills_a_study_as_its_trials_times_the_costliest_corner(tmp_path):
    from llamantino.orchestrate.costs import plan_job
    from llamantino.config.compose import compose_config
    from llamantino.search.plan import plan_study

    arguments = ["experiment=anita_8b_dpo", "stage.learning_rate=tag(log,interval(1e-6,1e-4))",
                 "stage.num_epochs=range(1,4)", "stage.lora_r=choice(16,64)"]
    result = plan_study(arguments, trials=10, batch=4)
    assert result["costliest"] == ["stage.learning_rate=0.0001", "stage.num_epochs=3", "stage.lora_r=64"]
    three = plan_job(compose_config(["experiment=anita_8b_dpo", "stage.num_epochs=3"]))[-1]
    one = plan_job(compose_config(["experiment=anita_8b_dpo", "stage.num_epochs=1"]))[-1]
    assert result["trial"]["gpu_hours"] == pytest.approx(three["gpu_hours"]) and three["gpu_hours"] > one["gpu_hours"]
    assert result["totals"]["gpu_hours"] == pytest.approx(10 * three["gpu_hours"])
    slots = compose_config(["experiment=anita_8b_dpo"]).launcher.array_parallelism  # 4: each batch of 4 at once
    prepare = max((job["wall_clock_hours"] for job in result["prepare"]), default=0.0)
    assert result["batches"] == 3 and slots == 4
    assert result["totals"]["wall_clock_hours"] == pytest.approx(prepare + 3 * three["wall_clock_hours"])
    out = ok(cli(*arguments, "--trials", "10", "--batch", "4", verb="plan", cwd=tmp_path)).stdout
    assert "plan: study of 10 trials in 3 batches" in out and "<- costliest" in out
    proc = cli("-m", *arguments, "--trials", "10", verb="plan", cwd=tmp_path)
    assert proc.returncode == 2 and "give one of them" in proc.stderr
