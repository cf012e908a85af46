"""The job graph (issue 21): ``launcher.submit=false`` writes every script a submission makes and the
graph of what waits on what; ``launch`` submits exactly that graph, once; ``status`` shows the jobs
making a run's inputs and why one failed; the offline fallback (``data prepare`` then ``launch``)
works for a corpus stage; one pipeline step takes overrides from the command line.

The SLURM tests run on the local cluster (tests/test_slurm.py), single-node, on a tiny hub mirror.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import TESTS, cli, ok, read_json, run_dir_of
from hub_mirror import build_mirror
from test_slurm import job, wait

SLURM = ("hardware=local_slurm", "hardware.nodes=1", "launcher=slurm")
TINY_ADAPT = ("stage=adapt", "stage.max_steps=3", "stage.sequence_len=64", "stage.micro_batch_size=2")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("hub") / "mirror", mc4_files=3, wiki_files=1)


def storage(mirror, tmp_path):
    return (f"hardware.storage.hub_mirror={mirror}", f"hardware.storage.cache={tmp_path / 'cache'}")


def only_entry(tmp_path, kind="corpus"):
    """The one entry of the prepared cache of ``kind`` (a corpus; the SFT step's rows are another)."""
    entries = [path for path in (tmp_path / "cache" / "prepared").iterdir()
               if read_json(path / "request.json").get("kind", "corpus") == kind]
    assert len(entries) == 1, entries
    return entries[0]


def launch_command(stdout: str) -> list[str]:
    """The one command launcher.submit=false prints, as arguments of the launch verb."""
    line = next(line for line in stdout.splitlines() if line.startswith("not submitted (launcher.submit=false)"))
    argv = shlex.split(line.split("submit them all with: ", 1)[1])
    assert argv[:4] == ["python", "-m", "llamantino", "launch"], line
    return argv[4:]


def holding_sbatch(folder: Path) -> dict[str, str]:
    """An environment whose ``sbatch`` is the real one with ``--hold`` added (released by the test)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\nexec {shlex.quote(shutil.which('sbatch'))} --hold \"$@\"\n")
    (bin_dir / "sbatch").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def submissions_of(pipeline, steps) -> dict[str, int]:
    return {step: len(read_json(pipeline / step / "job.json")["submissions"]) for step in steps
            if (pipeline / step / "job.json").exists()}


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_submit_false_writes_the_whole_graph_and_launch_submits_exactly_it_once(mirror, tmp_path):
    args = (f"hydra.searchpath=[file://{TESTS / 'conf'}]", "pipeline=tiny_corpus", *SLURM, *storage(mirror, tmp_path),
            "run.name=graph", "launcher.submit=false")
    written = ok(cli(*args, cwd=tmp_path))
    pipeline = run_dir_of(written)
    entry = only_entry(tmp_path)
    graph = read_json(pipeline / "graph.json")
    key = entry.name
    steps = ["scan", "dedup", "task", "finish"]  # a mirror needs no fetch; the mixture is deduplicated
    prepare = [f"prepare-{key[:12]}-{step}" for step in steps]
    # the SFT step's rows are tokenised with the merged model: their job waits on merge, sft on both
    rows_entry = only_entry(tmp_path, "rows")
    rows_node = f"prepare-{rows_entry.name[:12]}-rows"
    assert [node["name"] for node in graph["nodes"]] == [*prepare, "adapt", "merge", rows_node, "sft"]
    after = {node["name"]: node["after"] for node in graph["nodes"]}
    assert after == {prepare[0]: [], prepare[1]: [prepare[0]], prepare[2]: [prepare[1]], prepare[3]: [prepare[2]],
                     "adapt": [prepare[3]], "merge": ["adapt"], rows_node: ["merge"], "sft": ["merge", rows_node]}
    assert graph["entries"][0]["id"] == f"prepared/{key}" and graph["entries"][0]["request"]["key"] == key
    # every script the submission makes is written, nothing is submitted
    for step in steps:
        assert (entry / f"prepare-{step}.sbatch").read_text().startswith("#!/bin/bash")
    assert read_json(entry / "request.json")["key"] == key
    for step in ("adapt", "merge", "sft"):
        assert (pipeline / step / "job.sbatch").is_file() and not (pipeline / step / "job.json").exists()
    assert not (entry / "jobs.json").exists()

    # one step of it: that step and what it waits on (the preparation, adapt), not the steps after it.
    # Every job is submitted held (sbatch --hold), so SLURM's dependencies are read before any ends.
    hold = holding_sbatch(tmp_path)
    ok(cli(str(pipeline / "merge"), verb="launch", cwd=tmp_path, env=hold))
    assert set(submissions_of(pipeline, ["adapt", "merge", "sft"])) == {"adapt", "merge"}
    # then the printed command: only what is left (sft, after merge's job)
    again = ok(cli(*launch_command(written.stdout), verb="launch", cwd=tmp_path, env=hold))
    assert "sft: submitted job" in again.stdout and "adapt: already queued or running" in again.stdout
    jobs = {**{f"prepare-{key[:12]}-{step}": job_id for step, job_id in read_json(entry / "jobs.json").items()},
            **{step: read_json(pipeline / step / "job.json")["job_id"] for step in ("adapt", "merge", "sft")},
            rows_node: read_json(rows_entry / "jobs.json")["rows"]}
    try:
        for name, waits in after.items():  # SLURM's dependencies are the graph's edges
            assert job(jobs[name]).reason == "JobHeldUser", name
            dependency = job(jobs[name]).dependency or ""
            assert dependency.startswith("afterok:") == bool(waits), (name, dependency)
            # an array job is waited on whole: afterok:<array>_*
            waited = [part.split("(")[0].removesuffix("_*") for part in dependency.removeprefix("afterok:").split(":")]
            assert sorted(waited if waits else []) == sorted(jobs[wait_on] for wait_on in waits), (name, dependency)
        # launched again: nothing new
        third = ok(cli(str(pipeline), verb="launch", cwd=tmp_path))
        assert "submitted job" not in third.stdout and ": submitted" not in third.stdout
        assert third.stdout.count("not submitted again") == 3
        assert submissions_of(pipeline, ["adapt", "merge", "sft"]) == {"adapt": 1, "merge": 1, "sft": 1}
        assert {f"prepare-{key[:12]}-{step}": job_id for step, job_id in read_json(entry / "jobs.json").items()} == \
            {name: jobs[name] for name in prepare}
        subprocess.run(["scontrol", "release", *jobs.values()], check=True)
        # the preparation and the first step run as submitted (the rest of the chain: test_slurm.py)
        info = wait(jobs["adapt"], timeout=600)
        assert info.state == "COMPLETED", (pipeline / "adapt" / "logs" / "train.log").read_text(errors="replace")[-3000:]
        rows = {row["name"]: row for row in json.loads(ok(cli(str(pipeline), "--json", verb="status",
                                                              cwd=tmp_path)).stdout)}
        assert list(rows) == [*prepare, rows_node, "adapt", "merge", "sft"]  # the entries, then the runs
        assert all(rows[name]["state"] == "COMPLETED" and not rows[name]["error"] for name in [*prepare, "adapt"]), rows
    finally:
        subprocess.run(["scancel", *jobs.values()], capture_output=True)


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_status_says_why_a_preparation_failed_and_what_it_cancelled(mirror, tmp_path):
    # a budget far larger than the mirror holds: the finish step fails for real, SLURM cancels the run
    run_dir = run_dir_of(ok(cli(*SLURM, "stage=adapt", "data=it_web_mix", "stage.max_steps=4000", "stage.sequence_len=64",
                                "stage.micro_batch_size=2", *storage(mirror, tmp_path), cwd=tmp_path)))
    entry = only_entry(tmp_path)
    finish = read_json(entry / "jobs.json")["finish"]
    assert wait(finish).state == "FAILED"
    assert wait(read_json(run_dir / "job.json")["job_id"], timeout=120).state == "CANCELLED"
    rows = json.loads(ok(cli(str(run_dir), "--json", verb="status", cwd=tmp_path)).stdout)
    failed = {row["name"]: row for row in rows if row["state"].startswith("FAILED")}
    assert list(failed) == [f"prepare-{entry.name[:12]}-finish"], rows
    reason = failed[f"prepare-{entry.name[:12]}-finish"]["error"]
    assert reason.startswith("error: the sample has") and "the budget needs 8,000" in reason
    assert str(entry / "logs") in reason
    run_row = rows[-1]
    assert run_row["state"].startswith("CANCELLED") and run_row["job"] == read_json(run_dir / "job.json")["job_id"]
    assert run_row["error"] == f"waited on prepare-{entry.name[:12]}-finish (job {finish}), which failed"
    table = ok(cli(str(run_dir), verb="status", cwd=tmp_path)).stdout
    assert f"prepare-{entry.name[:12]}-finish: error: the sample has" in table


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_without_a_download_partition_data_prepare_makes_the_corpus_and_launch_submits_only_the_run(mirror, tmp_path):
    # local_slurm's nodes have no network and no download partition; this machine has no network either,
    # so a download of the whole data repository (what data prepare did before) fails here
    run_dir = run_dir_of(ok(cli(*SLURM, *TINY_ADAPT, "data=clean_mc4_it", *storage(mirror, tmp_path),
                                "launcher.submit=false", cwd=tmp_path)))
    entry = only_entry(tmp_path)
    assert not (entry / "manifest.json").exists()
    prepared = ok(cli("prepare", str(run_dir), verb="data", cwd=tmp_path))
    assert "prepared" in prepared.stdout and read_json(entry / "manifest.json")["key"] == entry.name
    assert not (entry / "jobs.json").exists()  # made here, no job
    launched = ok(cli(str(run_dir), verb="launch", cwd=tmp_path))
    assert "already prepared" in launched.stdout and launched.stdout.count("submitted") == 1
    record = read_json(run_dir / "job.json")
    assert record["submissions"][-1]["dependency"] is None and not (entry / "jobs.json").exists()
    info = wait(record["job_id"], timeout=420)
    assert info.state == "COMPLETED", (run_dir / "logs" / "train.log").read_text(errors="replace")[-3000:]
    assert read_json(run_dir / "output" / "llamantino_data_report.json")


def test_one_step_takes_overrides_from_the_command_line_and_a_bad_step_is_refused(tmp_path):
    base = ("pipeline=tiny", "launcher=dry", "launcher.validate=false", f"run.output_root={tmp_path / 'runs'}")
    pipeline = run_dir_of(ok(cli(*base, '+pipeline.sft=["data=it_sharegpt_sample","stage.max_steps=4"]',
                                 cwd=tmp_path)))

    def chosen(step):
        config = yaml.safe_load((pipeline / step / "config.yaml").read_text())
        return config["data"]["name"], config["stage"]["max_steps"]

    assert chosen("sft") == ("it_sharegpt_sample", 4)
    assert chosen("adapt") == ("it_text_sample", 3) and chosen("dpo") == ("it_preferences_sample", 2)
    assert read_json(pipeline / "sft" / "provenance.json")["overrides"][-2:] == ["data=it_sharegpt_sample",
                                                                                 "stage.max_steps=4"]
    assert not any("pipeline.sft" in o for o in read_json(pipeline / "adapt" / "provenance.json")["overrides"])

    elsewhere = tmp_path / "refused"
    refused = ("pipeline=tiny", "launcher=dry", f"run.output_root={elsewhere}")
    for override, message in (
            ('+pipeline.sftt=["data=it_sharegpt_sample"]',
             "+pipeline.sftt: pipeline tiny has no step 'sftt'; its steps: adapt, merge_adapt, sft, merge_sft, dpo, eval"),
            ("+pipeline.sft=[1,2]", "+pipeline.sft must be a list of quoted overrides"),
            ('+pipeline.sft=["run.name=x"]', "run.name=x describes the whole pipeline"),
            ('+pipeline.sft=["data=nope"]', "pipeline step sft: In 'config': Could not find 'data/nope'")):
        proc = cli(*refused, override, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not elsewhere.exists()


def test_a_graph_that_points_elsewhere_is_refused_and_nothing_submitted(tmp_path):
    run_dir = run_dir_of(ok(cli(*SLURM, *TINY_ADAPT, "data=it_text_sample", "launcher.submit=false",
                                "launcher.validate=false", f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path)))
    graph = read_json(run_dir / "graph.json")
    assert [node["run"] for node in graph["nodes"]] == ["."]  # a single run: the graph's own directory
    for change, message in ((lambda g: g["nodes"][0].update(run="../elsewhere"), "must name an entry of the folder"),
                            (lambda g: g["nodes"][0].update(after=["later"]), "which is not an earlier node"),
                            (lambda g: g["entries"].append({"id": "prepared/../../x", "config": ".", "request": {}}),
                             "must be a distinct prepared/<key>")):
        tampered = json.loads(json.dumps(graph))
        change(tampered)
        (run_dir / "graph.json").write_text(json.dumps(tampered))
        proc = cli(str(run_dir), verb="launch", cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and "graph.json" in proc.stderr, proc.stderr
        assert not (run_dir / "job.json").exists()
