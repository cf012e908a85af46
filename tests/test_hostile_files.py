"""Every file read back is untrusted (issue 20, section 3), and leftovers go (section 7), as a table.

Each row runs one real command (status, collect, compare, launch, finish, evaluate) on a run,
pipeline or sweep directory one of whose files is broken: empty, cut short, not an object, a field
of the wrong type, huge, nested deep, a link to /dev/zero or to a file outside, a FIFO. Each must end
in one ``error:`` line naming the file (and the field), exit 2, write nothing and submit nothing;
rows that aim at a file outside the work folder watch it too. Below the table: ``finish`` records a
job's outcome when what the job left is broken, writes replace planted links instead of following
them, and the leftovers of gone processes are removed whatever their age.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, ok, read_json, run_dir_of
from hostile import assert_refused, hostile_folder, snapshot

HUGE = 9 * 2**20  # past MAX_RECORD_BYTES (8 MiB)
DEEP = 100  # past MAX_DEPTH, well inside Python's recursion limit
VERY_DEEP = 200_000  # past Python's recursion limit


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# (id, command, arguments, text the error line must contain, watch the outside folder)
ROWS = [
    # status.json, read by status
    ("status link to /dev/zero", "status", ["{w}/status_zero"], "status.json is a symbolic link"),
    ("status link outside", "status", ["{w}/status_outside"], "status.json is a symbolic link"),
    ("status fifo", "status", ["{w}/status_fifo"], "status.json is not a regular file"),
    ("status huge", "status", ["{w}/status_huge"], "over the 8388608"),
    ("status deep", "status", ["{w}/status_deep"], "nested more than 32 levels"),
    ("status very deep", "status", ["{w}/status_very_deep"], "nested too deeply"),
    ("status not utf-8", "status", ["{w}/status_latin1"], "status.json is not UTF-8"),
    # job.json, read by status
    ("job deep", "status", ["{w}/job_deep"], "job.json is nested more than 32 levels"),
    ("job fifo", "status", ["{w}/job_fifo"], "job.json is not a regular file"),
    ("job id type", "status", ["{w}/job_id_type"], "job.job_id=5 must be a string"),
    ("job submissions type", "status", ["{w}/job_submissions_type"], "job.submissions must be a list"),
    ("job submission without id", "status", ["{w}/job_submission_no_id"], "job.submissions[0].job_id is missing"),
    ("job link to /dev/zero", "status", ["{w}/job_zero"], "job.json is a symbolic link"),
    # provenance.json, read by finish (the run's own record: refused before anything is written)
    ("provenance fifo", "llamantino.job.finish", ["{w}/prov_fifo", "--rc", "1"], "provenance.json is not a regular file"),
    ("provenance deep", "llamantino.job.finish", ["{w}/prov_deep", "--rc", "1"],
     "provenance.json is nested more than 32 levels"),
    ("provenance field type", "llamantino.job.finish", ["{w}/prov_type", "--rc", "1"], "provenance.output.kind=5"),
    ("provenance output escapes", "llamantino.job.finish", ["{w}/prov_escape", "--rc", "0"],
     "output.path='../../victim' must be a path inside the run directory"),
    ("provenance absolute output", "llamantino.job.finish", ["{w}/prov_absolute", "--rc", "0"],
     "must be a path inside the run directory"),
    ("provenance output through a link", "llamantino.job.finish", ["{w}/prov_linked_output", "--rc", "0"],
     "leads outside"),
    ("provenance link to /dev/zero", "llamantino.job.finish", ["{w}/prov_zero", "--rc", "0"],
     "provenance.json is a symbolic link"),
    ("provenance huge", "llamantino.job.finish", ["{w}/prov_huge", "--rc", "0"], "over the 8388608"),
    # config.yaml, read by launch
    ("config empty", "launch", ["{w}/config_empty"], "config.yaml: config must be a mapping"),
    ("config not a mapping", "launch", ["{w}/config_list"], "config.yaml: config must be a mapping, got list"),
    ("config field type", "launch", ["{w}/config_type"], "config.yaml: stage.lora_r='many' must be an integer"),
    ("config aliases", "launch", ["{w}/config_laughs"], "YAML anchors and aliases are refused"),
    ("config fifo", "launch", ["{w}/config_fifo"], "config.yaml is not a regular file"),
    ("config very deep", "launch", ["{w}/config_very_deep"], "config.yaml:1: nested deeper than 32 levels"),
    ("config link to /dev/zero", "launch", ["{w}/config_zero"], "config.yaml is a symbolic link"),
    ("config huge", "launch", ["{w}/config_huge"], "over the 8388608"),
    # pipeline.json, read by status
    ("pipeline huge", "status", ["{w}/pipeline_huge"], "over the 8388608"),
    ("pipeline steps type", "status", ["{w}/pipeline_steps_type"], "pipeline.steps must be a list"),
    ("pipeline step escapes", "status", ["{w}/pipeline_escape"], "pipeline.steps[0].name='../x' must name an entry"),
    ("pipeline step missing key", "status", ["{w}/pipeline_no_stage"], "pipeline.steps[0].stage is missing"),
    ("pipeline step is a link", "status", ["{w}/pipeline_linked_step"], "is a symbolic link"),
    # sweep.json, read by status and collect
    ("sweep index type", "collect", ["{w}/sweep_index_type"], "sweep.points[0].index='x' must be an integer"),
    ("sweep point escapes", "collect", ["{w}/sweep_escape"], "sweep.points[0].run_dir='../../outside' must name"),
    ("sweep overrides type", "collect", ["{w}/sweep_overrides_type"], "sweep.points[0].overrides must be a list"),
    ("sweep points missing", "status", ["{w}/sweep_no_points"], "sweep.points is missing"),
    ("sweep job id type", "status", ["{w}/sweep_job_type"], "sweep.job_id=[1] must be a string"),
    ("sweep link to /dev/zero", "collect", ["{w}/sweep_zero"], "sweep.json is a symbolic link"),
    ("collect cannot write", "collect", ["{w}/sweep_unwritable"], "cannot write"),
    # results.json, read by compare
    ("results score type", "compare", ["{w}/results_score_type"], "results.scores.arc_it='high' must be a number"),
    ("results missing eval", "compare", ["{w}/results_no_eval"], "results.eval is missing"),
    ("results huge", "compare", ["{w}/results_huge"], "over the 8388608"),
    ("results link outside", "compare", ["{w}/results_outside"], "results.json is a symbolic link"),
    # eval.json, read by evaluate
    ("eval plan huge", "llamantino.job.evaluate", ["{w}/eval_huge"], "over the 8388608"),
    ("eval plan groups type", "llamantino.job.evaluate", ["{w}/eval_groups_type"], "eval.groups must be a list"),
    ("eval plan metric type", "llamantino.job.evaluate", ["{w}/eval_metric_type"], "eval.metrics.arc_it=1 must be a string"),
    ("eval plan link to /dev/zero", "llamantino.job.evaluate", ["{w}/eval_zero"], "eval.json is a symbolic link"),
]

EVAL_PLAN = {"eval": "local_smoke", "model": {"kind": "built", "builder": "tiny_llama"}, "model_args": "pretrained=x", "device": "cpu",
             "processes": 1, "gpus": 0, "batch_size": "1", "limit": None, "include_path": None, "harness": {},
             "groups": [{"num_fewshot": 0, "tasks": ["arc_it"]}], "metrics": {"arc_it": "acc"},
             "leaderboard": False, "target": None, "evaluated_run": None}
RESULTS = {"eval": "local_smoke", "scores": {"arc_it": 0.5}, "model": {"kind": "built", "builder": "tiny_llama"}, "harness": {"mode": "current"}}


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A folder outside the work folder that rows aim at: nothing in it may change."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "victim").mkdir()
    (folder / "victim" / "README.md").write_text("the victim's own card\n")
    (folder / "secret.json").write_text('{"state": "COMPLETED"}\n')
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory, outside):
    w = tmp_path_factory.mktemp("hostile_files")
    dry = run_dir_of(ok(cli("launcher=dry", "stage.max_steps=1", cwd=w)))
    good = w / "good_run"
    os.rename(dry, good)
    shutil.rmtree(w / "runs")
    provenance = read_json(good / "provenance.json")

    def run(name: str, base: Path = good) -> Path:
        shutil.copytree(base, w / name, symlinks=True)
        return w / name

    def plant(name: str, file: str, content: str | bytes | None = None, link: str | None = None, base=good):
        folder = run(name, base)
        path = folder / file
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        if link is not None:
            os.symlink(link, path)
        elif content is not None:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return folder

    # status.json
    plant("status_zero", "status.json", link="/dev/zero")
    plant("status_outside", "status.json", link=str(outside / "secret.json"))
    os.mkfifo(run("status_fifo") / "status.json")
    plant("status_huge", "status.json", '{"state": "COMPLETED", "finished": "' + "x" * HUGE + '"}')
    plant("status_deep", "status.json", '{"state": "COMPLETED", "losses": {"a": ' + _deep(DEEP) + "}}")
    plant("status_very_deep", "status.json", '{"state": "COMPLETED", "losses": {"a": ' + _deep(VERY_DEEP) + "}}")
    plant("status_latin1", "status.json", '{"state": "COMPLETED", "source": "perch\u00e9"}'.encode("latin-1"))
    # job.json
    plant("job_deep", "job.json", '{"submissions": [], "x": ' + _deep(DEEP) + "}")
    os.mkfifo(run("job_fifo") / "job.json")
    plant("job_id_type", "job.json", '{"job_id": 5, "submissions": []}')
    plant("job_submissions_type", "job.json", '{"job_id": "5", "submissions": "5"}')
    plant("job_submission_no_id", "job.json", '{"job_id": "5", "submissions": [{"submitted": "now"}]}')
    plant("job_zero", "job.json", link="/dev/zero")
    # provenance.json
    folder = run("prov_fifo")
    (folder / "provenance.json").unlink()
    os.mkfifo(folder / "provenance.json")
    plant("prov_deep", "provenance.json", json.dumps({**provenance, "git": {"a": json.loads(_deep(DEEP))}}))
    plant("prov_type", "provenance.json", json.dumps({**provenance, "output": {**provenance["output"], "kind": 5}}))
    plant("prov_escape", "provenance.json",
          json.dumps({**provenance, "output": {**provenance["output"], "path": "../../victim"}}))
    shutil.copytree(outside / "victim", w.parent / "victim", dirs_exist_ok=True)  # where ../../victim leads
    plant("prov_absolute", "provenance.json",
          json.dumps({**provenance, "output": {**provenance["output"], "path": str(outside / "victim")}}))
    plant("prov_linked_output", "output", link=str(outside / "victim"))
    plant("prov_zero", "provenance.json", link="/dev/zero")
    plant("prov_huge", "provenance.json", json.dumps({**provenance, "notices": ["x" * HUGE]}))
    # config.yaml
    config = (good / "config.yaml").read_text()
    plant("config_empty", "config.yaml", "")
    plant("config_list", "config.yaml", "- a\n- b\n")
    plant("config_type", "config.yaml", config.replace("lora_r: 64", "lora_r: many", 1))
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    plant("config_laughs", "config.yaml", laughs)
    folder = run("config_fifo")
    (folder / "config.yaml").unlink()
    os.mkfifo(folder / "config.yaml")
    plant("config_very_deep", "config.yaml", "stage: " + _deep(VERY_DEEP) + "\n")
    plant("config_zero", "config.yaml", link="/dev/zero")
    plant("config_huge", "config.yaml", config + "# " + "x" * HUGE + "\n")

    # pipelines: one step folder each
    def pipeline(name: str, manifest, step_link: str | None = None):
        folder = w / name
        folder.mkdir()
        if step_link is not None:
            os.symlink(step_link, folder / "a")
        else:
            shutil.copytree(good, folder / "a", symlinks=True)
        (folder / "pipeline.json").write_text(json.dumps(manifest))

    step = {"name": "a", "run_dir": "a", "stage": "sft", "action": "run"}
    pipeline("pipeline_huge", {"pipeline": "p", "launcher": "dry", "steps": [step], "description": "x" * HUGE})
    pipeline("pipeline_steps_type", {"pipeline": "p", "launcher": "dry", "steps": {"a": step}})
    pipeline("pipeline_escape", {"pipeline": "p", "launcher": "dry", "steps": [{**step, "name": "../x"}]})
    pipeline("pipeline_no_stage", {"pipeline": "p", "launcher": "dry",
                                   "steps": [{k: v for k, v in step.items() if k != "stage"}]})
    pipeline("pipeline_linked_step", {"pipeline": "p", "launcher": "dry", "steps": [step]}, step_link=str(outside))

    # sweeps: one point folder each
    def sweep(name: str, record, link: str | None = None) -> Path:
        folder = w / name
        folder.mkdir()
        shutil.copytree(good, folder / "000", symlinks=True)
        if link is not None:
            os.symlink(link, folder / "sweep.json")
        else:
            (folder / "sweep.json").write_text(json.dumps(record))
        return folder

    point = {"index": 0, "run_dir": "000", "overrides": ["stage.lora_r=8"]}
    sweep("sweep_index_type", {"launcher": "dry", "points": [{**point, "index": "x"}]})
    sweep("sweep_escape", {"launcher": "dry", "points": [{**point, "run_dir": "../../outside"}]})
    sweep("sweep_overrides_type", {"launcher": "dry", "points": [{**point, "overrides": "stage.lora_r=8"}]})
    sweep("sweep_no_points", {"launcher": "dry"})
    sweep("sweep_job_type", {"launcher": "dry", "points": [point], "job_id": [1]})
    sweep("sweep_zero", None, link="/dev/zero")
    (sweep("sweep_unwritable", {"launcher": "dry", "points": [point]}) / "loss_curves.png").mkdir()

    # eval runs: the dry run recorded as an eval run, with results.json
    evaluated = run("eval_base")
    (evaluated / "provenance.json").write_text(
        json.dumps({**provenance, "output": {"kind": "eval_results", "path": "results.json"}}))
    (evaluated / "eval.json").write_text(json.dumps(EVAL_PLAN))
    (evaluated / "results.json").write_text(json.dumps(RESULTS))
    plant("results_score_type", "results.json", json.dumps({**RESULTS, "scores": {"arc_it": "high"}}), base=evaluated)
    plant("results_no_eval", "results.json", json.dumps({k: v for k, v in RESULTS.items() if k != "eval"}),
          base=evaluated)
    plant("results_huge", "results.json", json.dumps({**RESULTS, "eval": "x" * HUGE}), base=evaluated)
    plant("results_outside", "results.json", link=str(outside / "secret.json"), base=evaluated)
    plant("eval_huge", "eval.json", json.dumps({**EVAL_PLAN, "model_args": "x" * HUGE}), base=evaluated)
    plant("eval_groups_type", "eval.json", json.dumps({**EVAL_PLAN, "groups": "arc_it"}), base=evaluated)
    plant("eval_metric_type", "eval.json", json.dumps({**EVAL_PLAN, "metrics": {"arc_it": 1}}), base=evaluated)
    plant("eval_zero", "eval.json", link="/dev/zero", base=evaluated)
    shutil.rmtree(evaluated)
    return hostile_folder(w)


def test_the_table_is_large_enough():
    assert len(ROWS) >= 22 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("name, command, args, needle", ROWS, ids=[row[0] for row in ROWS])
def test_a_broken_file_read_back_is_one_error_line_and_leaves_nothing(work, outside, name, command, args, needle):
    assert_refused(work, command, args, needle, watch=(outside, work.parent / "victim"))


# --- finish records the outcome whatever the job left -------------------------------------------------


def _dry_run(tmp_path: Path) -> Path:
    run = run_dir_of(ok(cli("launcher=dry", "stage.max_steps=1", cwd=tmp_path)))
    return run


def _checkpoint(run: Path, step: int, text: str) -> None:
    folder = run / "output" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(text)


def test_finish_records_a_failed_job_whose_newest_checkpoint_was_cut_short(tmp_path):
    run = _dry_run(tmp_path)
    history = {"log_history": [{"loss": 2.5, "step": 1}, {"loss": 2.0, "step": 2}]}
    _checkpoint(run, 2, json.dumps(history))
    _checkpoint(run, 4, json.dumps({"log_history": [*history["log_history"], {"loss": 1.5, "step": 3}]})[:30])
    proc = cli(str(run), "--rc", "137", module="llamantino.job.finish", cwd=tmp_path)
    assert proc.returncode == 137 and "error:" not in proc.stderr, proc.stderr
    status = read_json(run / "status.json")
    assert status["state"] == "FAILED" and status["exit_code"] == 137
    assert status["losses"] == {"first": 2.5, "last": 2.0, "best": 2.0, "count": 2}  # from the checkpoint before
    assert any("checkpoint-4/trainer_state.json is not readable JSON" in note for note in status["notes"])


@pytest.mark.parametrize("state", ["", "[1, 2]", '{"log_history": 5}', "\x00" * 64])
def test_finish_records_a_completed_job_whatever_its_trainer_state_holds(tmp_path, state):
    run = _dry_run(tmp_path)
    _checkpoint(run, 1, state)
    (run / "output" / "runs" / "x").mkdir(parents=True)
    (run / "output" / "runs" / "x" / "events.out.tfevents.1.host").write_bytes(b"\x00garbage" * 10)
    (run / "output" / "llamantino_data_report.json").write_text('{"data": ')
    proc = cli(str(run), "--rc", "0", module="llamantino.job.finish", cwd=tmp_path)
    assert proc.returncode == 0 and "error:" not in proc.stderr, proc.stderr
    status = read_json(run / "status.json")
    assert status["state"] == "COMPLETED" and status["exit_code"] == 0 and status["notes"]
    assert any("llamantino_data_report.json" in note for note in status["notes"])
    assert (run / "output" / "README.md").is_file()  # the card, all the same


def test_finish_without_trainer_state_records_the_outcome(tmp_path):
    run = _dry_run(tmp_path)
    (run / "output" / "checkpoint-3").mkdir(parents=True)  # killed before its trainer_state.json
    (run / "output" / "checkpoint-junk").mkdir()
    proc = cli(str(run), "--rc", "1", module="llamantino.job.finish", cwd=tmp_path)
    assert proc.returncode == 1 and "error:" not in proc.stderr, proc.stderr
    status = read_json(run / "status.json")
    assert status["state"] == "FAILED" and "checkpoint-3 has no trainer_state.json" in status["notes"][0]


# --- writes replace planted links, never follow them ----------------------------------------------------


def test_finish_replaces_a_planted_status_link_and_leaves_its_target(tmp_path, outside):
    run = _dry_run(tmp_path)
    before = snapshot(outside), (outside / "secret.json").read_text()
    os.symlink(outside / "secret.json", run / "status.json")
    (run / "output").mkdir()
    os.symlink(outside / "victim" / "README.md", run / "output" / "README.md")
    ok(cli(str(run), "--rc", "0", module="llamantino.job.finish", cwd=tmp_path))
    assert not (run / "status.json").is_symlink() and read_json(run / "status.json")["state"] == "COMPLETED"
    assert not (run / "output" / "README.md").is_symlink()
    assert (snapshot(outside), (outside / "secret.json").read_text()) == before
    assert (outside / "victim" / "README.md").read_text() == "the victim's own card\n"


def test_collect_replaces_a_planted_csv_link_and_leaves_its_target(tmp_path, outside):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copytree(_dry_run(tmp_path), sweep / "000", symlinks=True)
    (sweep / "sweep.json").write_text(json.dumps({"launcher": "dry", "points": [
        {"index": 0, "run_dir": "000", "overrides": ["stage.lora_r=8"]}]}))
    os.symlink(outside / "secret.json", sweep / "collect.csv")
    os.symlink(outside / "victim" / "README.md", sweep / "loss_curves.png")
    before = snapshot(outside), (outside / "secret.json").read_text()
    ok(cli(str(sweep), verb="collect", cwd=tmp_path))
    assert not (sweep / "collect.csv").is_symlink() and (sweep / "collect.csv").read_text().startswith("point,")
    assert not (sweep / "loss_curves.png").is_symlink()
    assert (snapshot(outside), (outside / "secret.json").read_text()) == before
    assert not [p for p in sweep.iterdir() if p.name.endswith((".tmp", ".partial"))]


# --- leftovers: removed by the next write once their process is gone, whatever their age -----------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_gone_processes_are_removed_by_the_next_write_however_young(tmp_path):
    from llamantino.records.files import leftover_suffix, write_text
    from llamantino.records.rundir import write_atomic

    mine = leftover_suffix("partial").split("@", 1)[1]  # this host's mark
    dead, live = _dead_pid(), os.getppid()
    dead_dir = tmp_path / f".run.abc.{dead}@{mine}"
    dead_tmp = tmp_path / f".status.json.abc.{dead}@{mine.removesuffix('.partial')}.tmp"
    live_dir = tmp_path / f".run.def.{live}@{mine}"
    other_host = tmp_path / f".run.ghi.{dead}@another-node.partial"
    dead_dir.mkdir()
    live_dir.mkdir()
    other_host.mkdir()
    dead_tmp.write_text("{")
    assert time.time() - dead_dir.stat().st_mtime < 60  # seconds old, not an hour
    write_text(tmp_path / "status.json", "{}\n")
    assert not dead_dir.exists() and not dead_tmp.exists()
    assert live_dir.exists()  # its process may still be writing
    assert other_host.exists()  # another host's processes cannot be seen: only age removes it
    os.utime(other_host, (0, 0))
    write_atomic(tmp_path / "next", {"x": "y"})
    assert not other_host.exists() and live_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".run.def")) == ["next", "status.json"]


def test_a_write_killed_by_sigterm_leaves_nothing(tmp_path):
    """SIGTERM during a write: the temporary file is removed, then the process dies of SIGTERM as before."""
    code = ("import os, signal, sys\n"
            "from pathlib import Path\n"
            "import llamantino.records.files as files\n"
            "real = os.replace\n"
            "def killed(*args):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    real(*args)\n"
            "files.os.replace = killed\n"
            "files.write_text(Path(sys.argv[1]) / 'status.json', '{}')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -15, proc.stderr
    assert list(tmp_path.iterdir()) == []
