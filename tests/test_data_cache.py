"""``python -m llamantino data cache``: the shared cache's entries (size, last use, the runs that name
them) and ``--remove`` of the ones no run names, ``--dry-run`` first.

Runs are real: written by the main command (``launcher=dry``: the run names its prepared corpus, which
is not made). Entries are made with the cache's own writers (PreparedDir, DownloadDir), or prepared
for real by a ``launcher=local`` run. Every ``data cache`` runs as its own process, as a user types it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli, ok, read_json, run_dir_of
from hub_mirror import build_mirror

TINY_ADAPT = ("stage=adapt", "data=clean_mc4_it", "stage.max_steps=3", "stage.sequence_len=64",
              "stage.micro_batch_size=2")
HOUR = 3600


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("hub") / "mirror")


def cache_cmd(tmp_path, *args):
    return cli("cache", "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"), *args,
               verb="data", cwd=tmp_path, subprocess=True)


def listing(tmp_path, *args) -> dict:
    report = json.loads(ok(cache_cmd(tmp_path, *args, "--json")).stdout)
    report["by_key"] = {entry["key"]: entry for entry in report["entries"]}
    return report


def named_run(mirror, tmp_path, *extra) -> tuple[Path, str]:
    """A run written by the main command (not started) and the corpus key it names."""
    proc = ok(cli(*TINY_ADAPT, *extra, f"hardware.storage.hub_mirror={mirror}",
                  f"hardware.storage.cache={tmp_path / 'cache'}", f"run.output_root={tmp_path / 'runs'}",
                  "launcher=dry", cwd=tmp_path))
    run = run_dir_of(proc)
    return run, read_json(run / "provenance.json")["data"]["corpus"]["key"]


def prepared_entry(tmp_path, key: str, *, complete: bool = True, payload: int = 96 * 1024):
    """An entry as the prepare steps leave it: request, a unit (random bytes stand in for Arrow), manifest."""
    from llamantino.records.files import write_bytes
    from llamantino.records.rundir import PreparedDir

    entry = PreparedDir(tmp_path / "cache" / PreparedDir.ROOT / key)
    entry.write(PreparedDir.REQUEST, {"key": key})
    entry.unit("000").parent.mkdir(parents=True, exist_ok=True)
    write_bytes(entry.unit("000"), os.urandom(payload))
    if complete:
        entry.write(PreparedDir.MANIFEST, {"key": key, "blocks": 1})
    return entry


def age(path: Path, seconds: float) -> float:
    """Set every mtime under ``path`` (links themselves, not their targets) ``seconds`` back; the time set."""
    when = time.time() - seconds
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(Path(folder) / name, (when, when), follow_symlinks=False)
    os.utime(path, (when, when), follow_symlinks=False)
    return when


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
               .stdout.split()[0])


KEY_A, KEY_B = "a" * 32, "b" * 32


def test_the_listing_shows_size_last_use_and_the_runs_naming_each_entry(mirror, tmp_path):
    run, key = named_run(mirror, tmp_path)
    named = prepared_entry(tmp_path, key)
    unnamed = prepared_entry(tmp_path, KEY_A, payload=300 * 1024)
    used = age(named.path, 2 * 24 * HOUR)
    (named.path / "last_used").touch()
    os.utime(named.path / "last_used", (used, used))
    report = listing(tmp_path)
    first, other = report["by_key"][key], report["by_key"][KEY_A]
    assert first["runs"] == [str(run)] and other["runs"] == []
    assert first["state"] == other["state"] == "complete"
    assert first["bytes"] == du_bytes(named.path) and other["bytes"] == du_bytes(unnamed.path) > 300 * 1024
    assert first["last_use"] == pytest.approx(used) and first["last_use_from"] == "last_used"
    manifest_mtime = (unnamed.path / "manifest.json").stat().st_mtime
    assert other["last_use"] == pytest.approx(manifest_mtime) and other["last_use_from"] == "manifest.json"
    table = ok(cache_cmd(tmp_path)).stdout
    line = next(line for line in table.splitlines() if key[:12] in line)
    assert str(first["bytes"]) in line and time.strftime("%Y-%m-%d %H:%M", time.localtime(used)) in line
    assert str(run) in line
    assert "1 named by no run" in table and "--remove --dry-run" in table


def test_dry_run_removes_nothing_and_remove_takes_only_the_unnamed(mirror, tmp_path):
    _, key = named_run(mirror, tmp_path)
    named, unnamed = prepared_entry(tmp_path, key), prepared_entry(tmp_path, KEY_A)
    age(tmp_path / "cache", 2 * HOUR)
    size = listing(tmp_path)["by_key"][KEY_A]["bytes"]
    dry = ok(cache_cmd(tmp_path, "--remove", "--dry-run")).stdout
    assert f"would remove prepared {KEY_A}" in dry and f"would remove prepared {key}" not in dry
    assert "nothing was removed (--dry-run)" in dry and named.path.is_dir() and unnamed.path.is_dir()
    report = listing(tmp_path, "--remove")
    assert [item["key"] for item in report["removed"]] == [KEY_A] and report["freed"] == size > 0
    assert not unnamed.path.exists() and named.complete() and named.unit("000").is_file()
    assert sorted(p.name for p in (tmp_path / "cache" / "prepared").iterdir()) == [key]  # no leftover, no lock
    assert ok(cache_cmd(tmp_path, "--remove")).stdout.strip().endswith("removed 0 entries, 0 B")


def test_an_unnamed_entry_used_or_written_within_the_hour_is_kept(tmp_path):
    entry = prepared_entry(tmp_path, KEY_A, complete=False)
    report = listing(tmp_path, "--remove")
    assert report["removed"] == [] and "min ago" in report["kept"][0]["kept"] and entry.unit("000").is_file()
    age(entry.path, 2 * HOUR)
    (entry.path / "last_used").touch()  # a run elsewhere read it just now
    assert listing(tmp_path, "--remove")["removed"] == [] and entry.path.is_dir()


def test_a_download_entry_named_by_a_run_waiting_for_its_job_stays(mirror, tmp_path):
    from llamantino.records.rundir import DownloadDir, RunDir

    run, _ = named_run(mirror, tmp_path)
    RunDir(run).record_job("9001", dependency="afterok:4242")
    waited, other = (DownloadDir(tmp_path / "cache" / DownloadDir.ROOT / key) for key in (KEY_A, KEY_B))
    for entry, job in ((waited, "4242"), (other, "4343")):
        entry.write(DownloadDir.REQUEST, {"reads": []})
        entry.write(DownloadDir.JOBS, {"download": job})
        entry.write(DownloadDir.DONE, {"reads": []})
    age(tmp_path / "cache", 2 * HOUR)
    report = listing(tmp_path, "--remove")
    assert report["by_key"][KEY_A]["runs"] == [str(run)] and report["by_key"][KEY_A]["kind"] == "download"
    assert [item["key"] for item in report["removed"]] == [KEY_B]
    assert waited.complete() and not other.path.exists()


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm_b")
def test_an_entry_whose_jobs_are_queued_is_kept(tmp_path):
    from llamantino.records.rundir import PreparedDir

    proc = subprocess.run(["sbatch", "--parsable", "--hold", "--job-name=llamantino-test-cache", "--wrap", "sleep 60"],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    try:
        entry = prepared_entry(tmp_path, KEY_A, complete=False)
        entry.write(PreparedDir.JOBS, {"task": job, "finish": job})
        age(entry.path, 2 * HOUR)
        report = listing(tmp_path, "--remove")
        assert report["removed"] == [] and f"job {job} PENDING" in report["kept"][0]["kept"]
        assert entry.unit("000").is_file()
    finally:
        subprocess.run(["scancel", job], capture_output=True, check=False)


def test_an_entry_held_by_another_command_is_kept(tmp_path):
    from llamantino.records.lock import directory_lock

    entry = prepared_entry(tmp_path, KEY_A)
    age(entry.path, 2 * HOUR)
    with directory_lock(entry.path):
        report = listing(tmp_path, "--remove")
    assert report["removed"] == [] and "by another llamantino command" in report["kept"][0]["kept"]
    assert entry.complete()


def test_links_are_never_followed_nor_removed_through(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"x" * 200_000)
    entry = prepared_entry(tmp_path, KEY_A)
    (entry.path / "units" / "escape").symlink_to(outside)  # a link inside an entry
    (tmp_path / "cache" / "prepared" / KEY_B).symlink_to(outside, target_is_directory=True)  # an entry that is a link
    age(tmp_path / "cache", 2 * HOUR)
    report = listing(tmp_path)
    assert report["by_key"][KEY_A]["bytes"] == du_bytes(entry.path) < 200_000  # the link's target is not counted
    assert report["by_key"][KEY_B]["state"] == "link" and report["by_key"][KEY_B]["bytes"] == 0
    report = listing(tmp_path, "--remove")
    assert [item["key"] for item in report["removed"]] == [KEY_A]
    assert "symbolic link" in report["kept"][0]["kept"]
    assert (outside / "data.bin").read_bytes() == b"x" * 200_000  # nothing outside the cache was deleted
    assert (tmp_path / "cache" / "prepared" / KEY_B).is_symlink() and not entry.path.exists()


def test_garbage_records_are_shown_not_a_crash(mirror, tmp_path):
    from llamantino.records.rundir import PreparedDir

    run, key = named_run(mirror, tmp_path)
    entry = prepared_entry(tmp_path, KEY_A)
    (entry.path / PreparedDir.MANIFEST).write_bytes(b"\xff{not json")
    (entry.path / PreparedDir.JOBS).write_text("[1, 2")
    (run / "provenance.json").write_text('{"record": ')
    (tmp_path / "cache" / "prepared" / "not-a-key").mkdir()
    proc = ok(cache_cmd(tmp_path))
    assert "unreadable" in proc.stdout and "manifest.json" in proc.stdout
    assert f"{run}/provenance.json" in proc.stdout and "not-a-key is not an entry" in proc.stdout
    report = listing(tmp_path)
    assert report["by_key"][KEY_A]["state"] == "unreadable"
    # the run's recipe still names its corpus: an entry at that key would stay
    prepared_entry(tmp_path, key)
    assert listing(tmp_path)["by_key"][key]["runs"] == [str(run)]


def test_the_cache_and_runs_come_from_the_composed_hardware_option(mirror, tmp_path):
    run, key = named_run(mirror, tmp_path, "hardware.storage.runs=\\${LLAMANTINO_TEST_WORK}/runs")
    prepared_entry(tmp_path, key)
    env = {"LLAMANTINO_TEST_WORK": str(tmp_path)}
    proc = ok(cli("cache", f"hardware.storage.cache={tmp_path / 'cache'}",
                  "hardware.storage.runs=\\${LLAMANTINO_TEST_WORK}/runs", "--json", verb="data", cwd=tmp_path,
                  env=env, subprocess=True))
    report = json.loads(proc.stdout)
    assert report["cache"] == str(tmp_path / "cache") and str(tmp_path / "runs") in report["roots"]
    assert report["entries"][0]["runs"] == [str(run)]


@pytest.mark.parametrize("args, message", [
    (("--dry-run",), "--dry-run goes with --remove"),
    (("hardware=nope",), "hardware"),
    (("--runs",), "expected one argument"),
])
def test_bad_arguments_are_one_line(tmp_path, args, message):
    proc = cli("cache", *args, verb="data", cwd=tmp_path, subprocess=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_corpus_prepared_for_real_is_listed_and_kept_while_its_run_exists(mirror, tmp_path):
    proc = ok(cli(*TINY_ADAPT, f"hardware.storage.hub_mirror={mirror}", f"hardware.storage.cache={tmp_path / 'cache'}",
                  f"run.output_root={tmp_path / 'runs'}", "launcher=local", cwd=tmp_path))
    run = run_dir_of(proc)
    key = read_json(run / "provenance.json")["data"]["corpus"]["key"]
    entry = tmp_path / "cache" / "prepared" / key
    age(tmp_path / "cache", 2 * HOUR)
    report = listing(tmp_path, "--remove")
    assert report["removed"] == [] and report["by_key"][key]["runs"] == [str(run)]
    assert report["by_key"][key]["state"] == "complete" and report["by_key"][key]["bytes"] == du_bytes(entry)
    import shutil

    shutil.rmtree(run)  # the run is deleted: nothing names the corpus any more
    report = listing(tmp_path, "--remove")
    assert [item["key"] for item in report["removed"]] == [key] and not entry.exists()
