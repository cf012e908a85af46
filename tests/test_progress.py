"""Progress with totals and ETA: the plugin's training lines, ``status`` of a running job, lm-eval's
progress and the per-task lines of an evaluation, corpus preparation while it works, and the
reading back of progress lines that are garbled or hostile."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import time

import pytest

from conftest import cli, ok, run_dir_of
from hub_mirror import build_mirror

LINE = re.compile(r"^llamantino: step (\d+)/(\d+) \(\d+\.\d%\) loss \d+\.\d{4} lr \S+ epoch \S+ \| (.*)$")


def progress_lines(log: str) -> list[re.Match]:
    return [match for match in map(LINE.match, log.splitlines()) if match]


@pytest.mark.e2e
def test_a_200_step_run_logs_step_of_total_seconds_per_step_tokens_per_second_and_eta(tmp_path):
    from llamantino.records.progress import parse_progress, run_progress
    from llamantino.records.rundir import RunDir

    proc = ok(cli("stage=adapt", "stage.max_steps=200", "stage.sequence_len=64", "stage.micro_batch_size=1",
                  "stage.save_steps=null", "stage.saves_per_epoch=null", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    log = (run_dir / "logs" / "train.log").read_text()
    assert "\r" not in log  # lines, not a carriage-return bar
    lines = progress_lines(log)
    assert [int(match[1]) for match in lines] == list(range(1, 201)) and {match[2] for match in lines} == {"200"}
    # the first step of the attempt pays for warm-up: no rate yet; every later line has one and an ETA
    assert lines[0][3] == "ETA -"
    for match in lines[1:]:
        assert re.fullmatch(r"\d[0-9.e+-]* s/step [0-9,]+ tokens/s \| ETA (\d+m\d\ds|\d+s)", match[3]), match[0]
    etas = [parse_progress(match[0]).eta_seconds for match in lines[1:]]
    assert etas[-1] == 0 and etas[10] > etas[100] > etas[-1]
    assert re.search(r"^llamantino: training done: step 200/200 in \S+ \(200 steps this attempt\) \| \S+ s/step",
                     log, re.MULTILINE)
    # the console shows the same lines (not a terminal: no live bar), the Axolotl log dicts still feed the losses
    shown = [line for line in proc.stdout.splitlines() if line.startswith("  step ")]
    assert len(shown) == 200 and shown[-1].startswith("  step 200/200 (100.0%) loss ")
    assert "(200 logged steps)" in proc.stdout
    progress = run_progress(RunDir(run_dir))
    assert (progress.step, progress.total, progress.fraction, progress.eta_seconds) == (200, 200, "200/200", 0)
    assert progress.seconds_per_step > 0 and progress.tokens_per_second > 0


def test_the_console_on_a_terminal_draws_one_live_bar_from_the_progress_lines():
    from llamantino.launchers.console import ConsoleProgress

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        console = ConsoleProgress(live=True)
        console.feed("  llamantino data: inputs/x.jsonl [text]: rows 4")
        for step in range(1, 4):
            console.feed(f"llamantino: step {step}/3 ({100 * step / 3:.1f}%) loss 6.{step}000 lr 1.00e-04 epoch 0.10 "
                         "| 0.5 s/step 1,000 tokens/s | ETA 1s")
        console.feed("llamantino: training done: step 3/3 in 2s (3 steps this attempt) | 0.5 s/step")
        console.close()
    text = out.getvalue()
    assert text.startswith("  llamantino data: inputs/x.jsonl")
    assert "\r" in text and "3/3" in text and "loss 6.3000" in text and "ETA 0s" in text
    assert "  step 1/3" not in text  # the steps move the bar instead of printing lines
    assert text.rstrip().endswith("training done: step 3/3 in 2s (3 steps this attempt) | 0.5 s/step")


HOSTILE = [
    "llamantino: step 99999999999/2",  # a step past any run
    "llamantino: step 5/3 loss 1.0",  # past its total
    "llamantino: step 5/0",  # a total of nothing
    "llamantino: step -5/10",  # negative
    "llamantino: step nan/10",
    "llamantino: step 1/2 loss 1.0\x1b[2J\x07",  # control characters
    "llamantino: step 1/2\x00",
    "llamantino: step 7/" + "9" * 5000,  # a total of thousands of digits
    "llamantino: step 1e3/2000",
    "xllamantino: step 1/2",
    "llamantino: step 1/2 | ETA 1m00s" + "\u202e",
]


@pytest.mark.parametrize("line", HOSTILE, ids=range(len(HOSTILE)))
def test_a_garbled_or_hostile_progress_line_is_ignored(tmp_path, line):
    from llamantino.records.progress import parse_progress, run_progress
    from llamantino.records.rundir import RunDir

    assert parse_progress(line) is None
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.log").write_text(f"llamantino: step 3/9 loss 2.0 | 2 s/step | ETA 12s\n{line}\n")
    progress = run_progress(RunDir(tmp_path))  # the line before it counts, the hostile one is skipped
    assert (progress.step, progress.total, progress.eta_seconds) == (3, 9, 12)


def test_numbers_out_of_range_are_left_out_and_never_raise(tmp_path):
    from llamantino.records.progress import parse_progress, run_progress
    from llamantino.records.rundir import RunDir

    odd = parse_progress("llamantino: step 1/2 loss nan | inf s/step 1e999 tokens/s | ETA 1s")
    assert (odd.step, odd.total, odd.loss, odd.seconds_per_step, odd.tokens_per_second, odd.eta_seconds) == (
        1, 2, None, None, None, None)
    huge = parse_progress("llamantino: step 1/2 | 99999999999 s/step 9,999,999,999,999,999 tokens/s | ETA 1s")
    assert huge.seconds_per_step is None and huge.tokens_per_second is None
    # the multi-node label of whichever srun task global rank 0 ran on
    assert parse_progress("1: llamantino: step 4/8 loss 1.5000 | 2 s/step | ETA 8s").eta_seconds == 8
    # a line still being written counts only once it ends
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "train.log"
    log.write_text("llamantino: step 3/9 | 2 s/step | ETA 12s\nllamantino: step 4/9 | 2 s")
    assert run_progress(RunDir(tmp_path)).step == 3
    # no progress line: the newest checkpoint's trainer state; a garbled one gives way to the one before
    log.write_text("nothing yet\n")
    for step, state in ((2, '{"global_step": 2, "max_steps": 10}'), (4, '{"global_step": "4", "max_steps": []}'),
                        (6, "{not json")):
        (tmp_path / "output" / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / "output" / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert run_progress(RunDir(tmp_path)).fraction == "2/10"
    # a log that is a link to elsewhere is not read
    log.unlink()
    elsewhere = tmp_path / "elsewhere.log"
    elsewhere.write_text("llamantino: step 8/9 | 2 s/step | ETA 2s\n")
    log.symlink_to(elsewhere)
    assert run_progress(RunDir(tmp_path)).fraction == "2/10"


def test_corpus_preparation_says_documents_and_tokens_per_unit_while_it_works(tmp_path, monkeypatch):
    mirror = build_mirror(tmp_path / "mirror", mc4_files=3, wiki_files=1)
    # a budget that reads all three files (approx_tokens: ~10,000 a file), in one task: three units
    run_dir = run_dir_of(ok(cli("stage=adapt", "stage.max_steps=300", "stage.sequence_len=64",
                                "stage.micro_batch_size=2", "data=clean_mc4_it", "hardware.prepare.tasks=1",
                                "data.approx_tokens=30000", f"hardware.storage.hub_mirror={mirror}",
                                f"hardware.storage.cache={tmp_path / 'cache'}", "hardware=local_slurm", "hardware.nodes=1",
                                "launcher=slurm", "launcher.submit=false", cwd=tmp_path)))
    out = ok(cli("prepare", str(run_dir), verb="data", cwd=tmp_path)).stdout.splitlines()
    unit = re.compile(r"^llamantino prepare: (scan|task) 1/1: unit (\d)/3 0-0000\d done: .* documents.*; "
                      r"([0-9,]+) documents(?:, ([0-9,]+) tokens)? so far$")
    said = [(index, match) for index, match in ((i, unit.match(line)) for i, line in enumerate(out)) if match]
    tokenised = [match for _, match in said if match[1] == "task"]
    assert [int(match[2]) for match in tokenised] == [1, 2, 3], out
    documents = [int(match[3].replace(",", "")) for match in tokenised]
    tokens = [int(match[4].replace(",", "")) for match in tokenised]
    assert 0 < documents[0] < documents[1] < documents[2] and 0 < tokens[0] < tokens[1] < tokens[2]
    # each unit is said as it finishes, before the entry is: not one summary at the end
    finished = next(index for index, line in enumerate(out) if line.startswith("llamantino: prepared "))
    assert all(index < finished for index, _ in said)
    # inside a unit: a line every PROGRESS_SECONDS (here every batch of 16 documents), on a copy of the entry
    import shutil

    from llamantino.job import prepare
    from llamantino.job.units import read_request, sample_units
    from llamantino.records.rundir import PreparedDir

    (entry,) = (tmp_path / "cache" / "prepared").iterdir()
    copy = PreparedDir(shutil.copytree(entry, tmp_path / "copy"))
    request = {**read_request(copy), "dedup": False, "near_dedup": False}  # its dedup records are gone
    monkeypatch.setattr(prepare, "PROGRESS_SECONDS", 0)
    monkeypatch.setattr(prepare, "BATCH_DOCS", 16)
    lines: list[str] = []
    report = prepare.tokenise_unit(copy, request, sample_units(copy, request)[0], prepare.load_tokenizer(request),
                                   progress=lines.append)
    counted = [tuple(int(n.replace(",", "")) for n in re.fullmatch(r"([0-9,]+) documents, ([0-9,]+) tokens so far",
                                                                   line).groups()) for line in lines]
    assert [documents for documents, _ in counted] == [16, 32, 48, 60], lines
    assert counted[-1][1] == report["tokens"] and [n for _, n in counted] == sorted(n for _, n in counted)


@pytest.mark.e2e
def test_evaluation_logs_lm_evals_progress_as_lines_and_one_line_per_task(tmp_path):
    trained = run_dir_of(ok(cli("stage.max_steps=2", "stage.saves_per_epoch=null", cwd=tmp_path)))
    # every update drawn (tqdm reads TQDM_* settings from the environment): on an idle machine the
    # 64 requests take under tqdm's 0.1 s between redraws, and only 0% and 100% would be drawn
    proc = ok(cli("stage=eval", "eval=local_smoke", f"run.input_model={trained}", cwd=tmp_path,
                  env={"TQDM_MININTERVAL": "0"}))
    log = (run_dir_of(proc) / "logs" / "train.log").read_text()
    assert "\r" not in log
    requests = re.findall(r"^llamantino eval: Running loglikelihood requests: (\d+)/(\d+) \((\d+)%\)", log,
                          re.MULTILINE)
    assert len(requests) >= 3 and requests[-1][0] == requests[-1][1] and requests[-1][2] == "100", log[-3000:]
    assert [int(done) for done, _, _ in requests] == sorted(int(done) for done, _, _ in requests)
    task = re.findall(r"^llamantino eval: task llamantino_smoke_it: 16 samples in \d+s; acc=(\d\.\d{4})$", log,
                      re.MULTILINE)
    assert len(task) == 1 and 0 <= float(task[0]) <= 1
    # the console shows them too
    assert "llamantino eval: task llamantino_smoke_it: 16 samples" in proc.stdout
    assert "llamantino eval: Running loglikelihood requests: 64/64 (100%)" in proc.stdout


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_status_of_a_running_slurm_job_shows_step_of_total_and_eta(tmp_path):
    import json

    from test_slurm import TERMINAL, cluster, job, job_id_of, wait  # noqa: F401 (cluster: the cluster check)

    from llamantino.records.progress import run_progress
    from llamantino.records.rundir import RunDir

    proc = ok(cli("hardware=local_slurm", "launcher=slurm", "hardware.nodes=1", "stage=adapt",
                  "stage.max_steps=1500", "stage.micro_batch_size=1", "stage.sequence_len=64",
                  "stage.save_steps=null", "stage.saves_per_epoch=null", cwd=tmp_path))
    run_dir = run_dir_of(proc)
    job_id = job_id_of(run_dir)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and job(job_id).state not in TERMINAL:
            progress = run_progress(RunDir(run_dir))
            if progress is not None and progress.step >= 5:
                break
            time.sleep(1)
        assert job(job_id).state == "RUNNING", (run_dir / "logs" / "train.log").read_text(errors="replace")[-3000:]
        progress = run_progress(RunDir(run_dir))
        assert progress.total == 1500 and 5 <= progress.step < 1500 and progress.eta_seconds > 0
        rows = json.loads(ok(cli(str(run_dir), "--json", verb="status", cwd=tmp_path)).stdout)
        row = next(row for row in rows if row["job"] == job_id)
        assert row["state"] == "RUNNING"
        step, total = map(int, row["step"].split("/"))
        assert total == 1500 and progress.step <= step < 1500, row
        assert re.fullmatch(r"\d+h\d\dm|\d+m\d\ds|\d+s", row["eta"]), row
        table = ok(cli(str(run_dir), verb="status", cwd=tmp_path)).stdout
        assert re.search(r"RUNNING\s+\d+/1500\s+(\d+h\d\dm|\d+m\d\ds|\d+s)", table), table
    finally:
        subprocess.run(["scancel", job_id], check=False)
        wait(job_id, timeout=120)


def test_recipe_import_says_what_it_is_doing_before_each_slow_phase(tmp_path):
    run_dir = run_dir_of(ok(cli("launcher=dry", "stage.max_steps=2", cwd=tmp_path)))
    recipe = tmp_path / "recipe.yaml"
    ok(cli("export", str(run_dir), "--output", str(recipe), verb="recipe", cwd=tmp_path))
    out = ok(cli("import", str(recipe), "--dest", str(tmp_path / "imported"), verb="recipe", cwd=tmp_path)).stdout
    said = [line.split(":", 1)[1].split()[0] for line in out.splitlines() if line.startswith("recipe import: ")]
    assert said == ["checking", "rendering", "rendering", "comparing", "writing"], out
    assert "validating it with Axolotl" in out and out.splitlines()[-1].startswith("run_dir: ")
