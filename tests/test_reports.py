"""Reading results you can trust: ``collect`` (a sweep, a pipeline or a run: curves and tables labelled by
what varies, the best run marked; an eval sweep's scores with their standard errors) and ``compare``
(bars labelled by the model evaluated, error bars, differences within two standard errors marked).

The end-to-end tests train a real 3-point learning-rate sweep of the tiny model with an eval split,
evaluate two of its points, and read what the commands print and write.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import cli, ok, read_json, run_dir_of

RATES = ("0.0001", "0.0002", "0.0003")
SWEEP = ("stage.max_steps=4", "stage.saves_per_epoch=null", "stage.val_set_size=0.2", "+stage.axolotl.eval_steps=2")
TASK = "llamantino_smoke_it"
MODEL = "sft-tiny_llama-it_instructions_sample"  # the trained points' run.name


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def one_error_line(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def assert_png(path: Path, min_width: int = 600) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= min_width


# --- the varied keys, the significance rule: no training ------------------------------------------------


def test_only_the_keys_that_vary_label_the_runs():
    from llamantino.reports.varied import varied

    result = varied([["stage.learning_rate=1e-4", "stage.max_steps=5", "run.output_root=/tmp/x/runs"],
                     ["stage.learning_rate=2e-4", "stage.max_steps=5", "run.output_root=/tmp/x/runs", "+stage.seed=3"]])
    assert result.keys == ["stage.learning_rate", "stage.seed"]  # absent from one run: that varies too
    assert result.label(0) == "stage.learning_rate=1e-4 stage.seed=(unset)"
    assert result.label(1) == "stage.learning_rate=2e-4 stage.seed=3"
    assert result.columns(1) == {"stage.learning_rate": "2e-4", "stage.seed": "3"}
    assert result.constant_line() == "stage.max_steps=5"  # said once; the output root (a path) left out
    long = varied([["run.notes=" + "x" * 5000], ["run.notes=y"]])
    assert len(long.label(0)) < 60 and long.label(0).endswith("...")  # an untrusted record never makes a huge label
    assert varied([["a=1"]]).keys == [] and varied([]).keys == []


@pytest.mark.parametrize("a, se_a, b, se_b, marked", [
    (0.25, 0.11, 0.44, 0.11, True),  # the 16-item case: 0.19 apart, 2·sqrt(2)·0.11 = 0.31 needed
    (0.25, 0.03, 0.44, 0.03, False),  # 0.19 apart, 0.085 needed: a real difference
    (0.30, 0.05, 0.44, 0.05, True),  # 0.14 apart, 0.1414 needed: just within
])
def test_a_difference_within_two_standard_errors_is_not_significant(a, se_a, b, se_b, marked):
    from llamantino.reports.scores import not_significant

    assert not_significant(a, se_a, b, se_b) is marked
    assert not_significant(b, se_b, a, se_a) is marked  # symmetric


def test_lm_eval_keeps_the_samples_when_asked_and_the_harness_accepts_the_flag():
    from llamantino.render.lmeval import lm_eval_argv, parse_eval_argv

    plan = {"model_args": "pretrained=x", "batch_size": "1", "device": "cpu", "include_path": None, "limit": None}
    group = {"tasks": [TASK], "num_fewshot": 0}
    assert "--log_samples" not in lm_eval_argv(plan, group)
    argv = lm_eval_argv({**plan, "log_samples": True}, group)
    assert argv[-1] == "--log_samples" and "--output_path" in argv  # lm-eval needs both
    parse_eval_argv(argv)
    parse_eval_argv(lm_eval_argv({**plan, "processes": 4, "log_samples": True}, group))


# --- compare on eval runs written here (results.json as lm-eval's numbers would make it) --------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reports-dry")
    return run_dir_of(ok(cli("launcher=dry", "stage.max_steps=1", cwd=folder)))


def eval_run(base: Path, folder: Path, scores: dict, stderr: dict | None, model: dict | None = None,
             overrides: list[str] | None = None, raw: str | None = None) -> Path:
    """An eval run directory holding ``results.json`` (raw text when given: hostile values)."""
    shutil.copytree(base, folder, symlinks=True)
    provenance = read_json(folder / "provenance.json")
    provenance["output"] = {"kind": "eval_results", "path": "results.json"}
    provenance["overrides"] = overrides if overrides is not None else ["stage=eval", "eval=local_smoke"]
    (folder / "provenance.json").write_text(json.dumps(provenance))
    results = {"eval": "local_smoke", "scores": scores, "model": model or {"kind": "run", "run_dir": str(base)},
               "harness": {"mode": "current"}, **({"stderr": stderr} if stderr is not None else {})}
    (folder / "results.json").write_text(raw if raw is not None else json.dumps(results))
    return folder


def test_compare_marks_differences_within_two_standard_errors_and_says_the_rule(tmp_path, dry_run):
    eval_run(dry_run, tmp_path / "evals" / "a", {"arc_it": 0.44, "hella_it": 0.80}, {"arc_it": 0.11, "hella_it": 0.01})
    eval_run(dry_run, tmp_path / "evals" / "b", {"arc_it": 0.25, "hella_it": 0.60}, {"arc_it": 0.11, "hella_it": 0.01},
             model={"kind": "hub", "hub_id": "swap-uniba/LLaMAntino-2-7b-hf-ITA", "revision": "abc"})
    proc = ok(cli(str(tmp_path / "evals"), "--png", str(tmp_path / "compare.png"), verb="compare", cwd=tmp_path))
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split()}
    from llamantino.records.rundir import RunDir

    trained = RunDir(dry_run).config().run.name
    # each row is the model evaluated: the run it came from, or its hub id; the eval run has its own column
    assert trained in lines and "swap-uniba/LLaMAntino-2-7b-hf-ITA@abc" in lines
    assert "0.4400 ± 0.1100 *" in lines[trained] and "0.2500 ± 0.1100 ~" in lines["swap-uniba/LLaMAntino-2-7b-hf-ITA@abc"]
    assert "0.8000 ± 0.0100 *" in lines[trained]
    hub_row = lines["swap-uniba/LLaMAntino-2-7b-hf-ITA@abc"]
    assert "0.6000 ± 0.0100" in hub_row and "0.6000 ± 0.0100 ~" not in hub_row  # 0.2 apart, 0.028 needed
    assert "evals/a" in lines[trained] and "evals/b" in hub_row
    assert "|best - score| < 2·sqrt(se_best² + se²)" in proc.stdout and "not significantly different" in proc.stdout
    assert_png(tmp_path / "compare.png")

    from llamantino.reports.scores import bar_chart, comparison, find_results

    result = comparison(find_results([tmp_path / "evals", tmp_path / "evals" / "a"]))  # a run named twice: once
    assert [row.model for row in result.rows] == [trained, "swap-uniba/LLaMAntino-2-7b-hf-ITA@abc"]
    assert [row.marks for row in result.rows] == [{"arc_it": "*", "hella_it": "*"}, {"arc_it": "~"}]
    chart = bar_chart(result, tmp_path / "again.png")
    assert chart.labels == [trained, "swap-uniba/LLaMAntino-2-7b-hf-ITA@abc"]  # the legend, as drawn


def test_compare_skips_values_that_are_not_numbers_with_a_note(tmp_path, dry_run):
    nan = '{"eval": "local_smoke", "scores": {"arc_it": NaN, "hella_it": 0.5, "%s": 0.4}, ' \
          '"stderr": {"hella_it": -0.1, "%s": Infinity}, "model": {"kind": "run", "run_dir": "/nowhere/%s"}, ' \
          '"harness": {"mode": "current"}}' % ("t" * 5000, "t" * 5000, "x" * 100_000)
    eval_run(dry_run, tmp_path / "evals" / "hostile", {}, None, raw=nan)
    eval_run(dry_run, tmp_path / "evals" / "model", {"arc_it": 0.3}, None, model={"kind": 5})
    proc = ok(cli(str(tmp_path / "evals"), "--png", str(tmp_path / "c.png"), verb="compare", cwd=tmp_path))
    assert "results.scores.arc_it=nan is not a finite number: left out" in proc.stdout
    assert "results.stderr.hella_it=-0.1 is not a finite number at least 0: left out" in proc.stdout
    assert "unrecorded model" in proc.stdout and "results.model.kind" in proc.stdout
    assert max(map(len, proc.stdout.splitlines())) < 2000  # no 100 kB label or task name
    assert_png(tmp_path / "c.png")
    (tmp_path / "evals" / "model" / "results.json").write_text(json.dumps(
        {"eval": "x", "scores": {"a": 0.1}, "stderr": {"a": "N/A"}, "model": {}, "harness": {}}))
    one_error_line(cli(str(tmp_path / "evals"), verb="compare", cwd=tmp_path), "results.stderr.a='N/A' must be a number")


def test_collect_reads_hostile_trainer_records_without_a_traceback(tmp_path, dry_run):
    sweep = tmp_path / "sweep"
    for index, history in enumerate(([{"loss": float("nan"), "step": 1}, {"loss": "x", "step": 2},
                                      {"loss": 1e308, "step": 3}, {"loss": 2.0, "step": "4"}, {"step": True}, 7],
                                     [{"loss": 3.0, "step": 1}, {"loss": 2.5, "step": 2, "eval_loss": "low"}])):
        point = sweep / f"{index:03d}"
        shutil.copytree(dry_run, point, symlinks=True)
        (point / "output" / "checkpoint-2").mkdir(parents=True)
        (point / "output" / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    runs = sweep / "001" / "output" / "runs" / "x"
    runs.mkdir(parents=True)
    (runs / "events.out.tfevents.1.host").write_bytes(b"\x00garbage" * 10)
    (sweep / "sweep.json").write_text(json.dumps({"launcher": "dry", "points": [
        {"index": 0, "run_dir": "000", "overrides": ["stage.lora_r=8", "run.notes=" + "n" * 100_000]},
        {"index": 1, "run_dir": "001", "overrides": ["stage.lora_r=16", "run.notes=" + "n" * 100_000]}]}))
    proc = ok(cli(str(sweep), "--log-y", "--smooth", "2", verb="collect", cwd=tmp_path))
    assert max(map(len, proc.stdout.splitlines())) < 2000  # the 100 kB override cut short where it is shown
    rows = rows_of(sweep / "collect.csv")
    assert rows[1]["final_loss"] == "2.5000"  # a garbled event file gives way to the trainer's state
    assert [row["stage.lora_r"] for row in rows] == ["8", "16"] and "run.notes" not in rows[0]
    assert rows[0]["final_loss"] == "inf" or rows[0]["final_loss"].startswith("1")  # the last finite-or-not value
    assert rows[0]["best_loss"] == f"{1e308:.4f}" and rows[1]["best"] == "*"  # nan never wins
    assert_png(sweep / "loss_curves.png")
    one_error_line(cli(str(sweep), "--smooth", "-1", verb="collect", cwd=tmp_path), "--smooth -1")


# --- end to end: a real lr sweep, an eval sweep of two of its points -------------------------------------


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lr-sweep")
    proc = ok(cli("-m", "stage.learning_rate=1e-4,2e-4,3e-4", *SWEEP, f"run.output_root={folder}/runs", cwd=folder))
    return run_dir_of(proc)


@pytest.fixture(scope="module")
def eval_sweep(lr_sweep) -> Path:
    points = f"{lr_sweep / '000'},{lr_sweep / '002'}"
    proc = ok(cli("-m", "stage=eval", "eval=local_smoke", f"run.input_model={points}", "eval.log_samples=true",
                  f"run.output_root={lr_sweep.parent.parent}", cwd=lr_sweep.parent))
    return run_dir_of(proc)


@pytest.mark.e2e
def test_collect_on_an_lr_sweep_labels_only_the_learning_rate_and_marks_the_best(lr_sweep, tmp_path):
    proc = ok(cli(str(lr_sweep), verb="collect", cwd=tmp_path))
    rows = rows_of(lr_sweep / "collect.csv")
    assert list(rows[0]) == ["point", "stage.learning_rate", "state", "final_eval_loss", "best_eval_loss", "best_step",
                             "steps_logged", "best"]
    assert [row["stage.learning_rate"] for row in rows] == list(RATES)
    assert all(row["state"] == "COMPLETED" and row["steps_logged"] == "4" for row in rows)
    best = min(rows, key=lambda row: float(row["best_eval_loss"]))
    assert [row["best"] for row in rows] == ["*" if row is best else "" for row in rows]
    assert all(int(row["best_step"]) in (0, 2, 4) for row in rows)  # eval_steps=2: eval losses at even steps
    # the constant overrides said once, paths left out
    assert "shared: stage.max_steps=4 stage.saves_per_epoch=null stage.val_set_size=0.2" in proc.stdout
    assert "run.output_root" not in proc.stdout and str(lr_sweep.parent) not in proc.stdout.split("wrote")[0]
    assert "* best run: lowest eval_loss" in proc.stdout

    from llamantino.records.curves import run_metrics
    from llamantino.reports.sweeps import collect, write_collected

    metrics = run_metrics(lr_sweep / "000")
    assert {"loss", "eval_loss", "learning_rate", "grad_norm"} <= set(metrics)  # the trainer's, from its event files
    assert [step for step, _ in metrics["loss"]] == [1, 2, 3, 4]
    assert metrics["learning_rate"][0][1] == pytest.approx(1e-4, rel=1e-3)
    drawn = write_collected(collect(lr_sweep), out=tmp_path).figures[0]
    assert drawn.labels == [f"stage.learning_rate={rate}" + ("  ★ lowest eval loss" if rate == best["stage.learning_rate"]
                                                             else "") for rate in RATES]
    assert drawn.panels == ["training loss", "eval loss", "learning rate", "gradient norm"]
    assert drawn.steps and all(step == int(step) for step in drawn.steps)  # no 1.5, 2.5 steps
    assert_png(lr_sweep / "loss_curves.png", 1000)

    single = ok(cli(str(lr_sweep), "--metric", "loss", "--log-y", "--smooth", "2", "--out", str(tmp_path),
                    verb="collect", cwd=tmp_path))
    assert "* best run: lowest loss" in single.stdout
    assert list(rows_of(tmp_path / "collect.csv")[0])[3:5] == ["final_loss", "best_loss"]
    drawn = write_collected(collect(lr_sweep, metric="loss"), out=tmp_path, log_y=True, smooth=2).figures[0]
    assert drawn.panels == ["training loss"]
    one_error_line(cli(str(lr_sweep), "--metric", "bleu", verb="collect", cwd=tmp_path),
                   "--metric bleu: no run logged it; logged: ")


@pytest.mark.e2e
def test_collect_takes_a_run_or_a_pipeline_directory(lr_sweep, tmp_path):
    proc = ok(cli(str(lr_sweep / "001"), "--out", str(tmp_path), verb="collect", cwd=tmp_path))
    assert proc.stdout.startswith(f"run {MODEL} (001); shared: stage.learning_rate=0.0002 stage.max_steps=4")
    assert [row["point"] for row in rows_of(tmp_path / "collect.csv")] == [MODEL]
    pipeline = tmp_path / "pipeline"
    for step, point in (("adapt", "000"), ("sft", "002")):
        shutil.copytree(lr_sweep / point, pipeline / step, symlinks=True)
    (pipeline / "pipeline.json").write_text(json.dumps({"pipeline": "p", "launcher": "local", "steps": [
        {"name": "adapt", "run_dir": "adapt", "stage": "adapt", "action": "run"},
        {"name": "sft", "run_dir": "sft", "stage": "sft", "action": "run"}]}))
    out = ok(cli(str(pipeline), verb="collect", cwd=tmp_path)).stdout
    rows = rows_of(pipeline / "collect.csv")
    assert [row["point"] for row in rows] == ["adapt", "sft"] and all(row["final_eval_loss"] for row in rows)
    assert not any(row["best"] for row in rows) and "best run" not in out  # steps in a row are not rivals
    from llamantino.reports.sweeps import collect, write_collected

    assert write_collected(collect(pipeline)).figures[0].labels == ["adapt", "sft"]  # a step is labelled by its name
    assert_png(pipeline / "loss_curves.png")


@pytest.mark.e2e
def test_collect_on_an_eval_sweep_writes_the_scores_with_their_errors(eval_sweep, lr_sweep, tmp_path):
    proc = ok(cli(str(eval_sweep), verb="collect", cwd=tmp_path))
    assert not (eval_sweep / "loss_curves.png").exists() and not (eval_sweep / "collect.csv").exists()
    rows = rows_of(eval_sweep / "scores.csv")
    for index, row in zip(("000", "001"), rows):
        result = read_json(eval_sweep / index / "results.json")
        assert float(row[TASK]) == pytest.approx(result["scores"][TASK], abs=1e-6)
        assert float(row[f"{TASK}_stderr"]) == pytest.approx(result["stderr"][TASK], abs=1e-6)
        assert result["stderr"][TASK] > 0
        assert list((eval_sweep / index / "eval_results").rglob(f"samples_{TASK}_*.jsonl"))  # eval.log_samples
    assert [row["model"] for row in rows] == [f"{MODEL} stage.learning_rate={rate}" for rate in ("0.0001", "0.0003")]
    assert "±" in proc.stdout and "2·sqrt(se_best² + se²)" in proc.stdout
    from llamantino.reports.sweeps import collect, write_collected

    chart = write_collected(collect(eval_sweep), out=tmp_path).figures[0]
    assert chart.labels == [row["model"] for row in rows]
    assert_png(eval_sweep / "scores.png")

    compared = ok(cli(str(eval_sweep), "--png", str(tmp_path / "compare.png"), verb="compare", cwd=tmp_path)).stdout
    table = [line for line in compared.splitlines() if line.startswith(MODEL)]
    assert len(table) == 2 and all(f"{float(row[TASK]):.4f} ± {float(row[f'{TASK}_stderr']):.4f}" in line
                                   for row, line in zip(rows, table))
    assert "stage.learning_rate=0.0001" in table[0] and "stage.learning_rate=0.0003" in table[1]
    assert_png(tmp_path / "compare.png")
