"""Weeks on a real cluster: right-sized merge and eval jobs, the checkpoint lead, storage roots, the account."""

from __future__ import annotations

import json

import pytest

from conftest import cli, ok, run_dir_of

LEONARDO = ("hardware=leonardo_booster", "launcher=slurm", "launcher.submit=false", "hardware.slurm.account=PRJ")


def fails(proc):
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc


def directives(run_dir) -> list[str]:
    return [line.split(" ", 1)[1] for line in (run_dir / "job.sbatch").read_text().splitlines()
            if line.startswith("#SBATCH ")]


@pytest.mark.parametrize("model, extra, gpus, processes, sharded", [
    ("llama2_7b", [], 4, 4, False),  # fits one A100: a copy on each of the node's four, data-parallel
    ("llama3_8b", [], 4, 4, False),
    ("llama3_8b", ["eval.data_parallel=false"], 1, 1, False),
    ("llama2_70b", [], 3, 1, True),  # ~140 GB in bf16: one copy over three 64 GB A100s
])
def test_eval_jobs_ask_for_the_gpus_they_use(tmp_path, model, extra, gpus, processes, sharded):
    run = run_dir_of(ok(cli("stage=eval", "eval=ita_leaderboard", f"model={model}", *extra, *LEONARDO,
                            f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path)))
    lines = directives(run)
    assert f"--gres=gpu:{gpus}" in lines  # of the 4 A100s of a Leonardo node
    assert not any(line.startswith("--mem=494000M") for line in lines) and "--exclusive" not in lines
    assert f"--cpus-per-task={32 * gpus // 4}" in lines
    plan = json.loads((run / "eval.json").read_text())
    assert ("parallelize=True" in plan["model_args"]) == sharded and plan["processes"] == processes


@pytest.mark.parametrize("model, gpus, on_cpu", [("llama2_7b", 1, False), ("llama2_70b", 0, True)])
def test_merge_runs_on_one_gpu_or_in_host_memory_and_says_so(model, gpus, on_cpu):
    from llamantino.config.compose import compose_config
    from llamantino.config.method import model_ram_gb
    from llamantino.stages.merge import MergeStage, on_host

    cfg = compose_config(["stage=merge", f"model={model}", "hardware=leonardo_booster"])
    shape = MergeStage().shape(cfg, None)
    assert shape.gpus_per_node == gpus and on_host(cfg) == on_cpu
    assert shape.mem == f"{model_ram_gb(cfg.model.params_b)}G"


def test_the_checkpoint_lead_follows_the_checkpoint_size(tmp_path):
    from llamantino.config.method import checkpoint_gb

    big = run_dir_of(ok(cli("model=llama2_13b", "stage=sft", *LEONARDO, "hardware.nodes=2",
                            f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path)))
    expected = round(checkpoint_gb(13, None) / 1.0) + 60
    assert f"--signal=B:USR1@{expected}" in directives(big) and expected > 120
    small = run_dir_of(ok(cli("model=llama2_7b", "stage=adapt", *LEONARDO, f"run.output_root={tmp_path / 'runs'}",
                              cwd=tmp_path)))
    assert "--signal=B:USR1@120" in directives(small)  # a QLoRA adapter is small: the minimum
    explicit = run_dir_of(ok(cli("model=llama2_13b", "stage=sft", *LEONARDO, "hardware.nodes=2",
                                 "launcher.signal_lead_s=600", f"run.output_root={tmp_path / 'runs'}", cwd=tmp_path)))
    assert "--signal=B:USR1@600" in directives(explicit)
    proc = fails(cli("model=llama2_13b", "stage=sft", *LEONARDO, "hardware.nodes=2", "launcher.time=00:03:00",
                     f"run.output_root={tmp_path / 'other'}", cwd=tmp_path))
    assert "does not fit the time limit 00:03:00" in proc.stderr and not (tmp_path / "other").exists()


def test_a_big_run_is_refused_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = ("model=llama2_13b", "stage=sft", "hardware=leonardo_booster", "launcher=slurm", "hardware.nodes=2",
            "hardware.slurm.account=PRJ", f"run.output_root={tmp_path / 'runs'}")
    proc = fails(cli(*args, cwd=tmp_path))
    assert "under $HOME" in proc.stderr and "hardware.storage.home_limit_gb=20" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_cluster_storage_roots_expand_where_used(tmp_path, monkeypatch):
    monkeypatch.setenv("WORK", str(tmp_path / "work"))
    run = run_dir_of(ok(cli("hardware=leonardo_booster", "launcher=dry", cwd=tmp_path)))
    assert str(run).startswith(str(tmp_path / "work" / "llamantino" / "runs"))
    monkeypatch.delenv("WORK")
    proc = fails(cli("hardware=leonardo_booster", "launcher=dry", cwd=tmp_path))
    assert "run.output_root" in proc.stderr and "not set" in proc.stderr


def test_the_account_check_reads_what_sbatch_reads(tmp_path, monkeypatch):
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    monkeypatch.setenv("SLURM_ACCOUNT", "PRJ")  # srun's variable: sbatch would submit without an account
    proc = fails(cli("hardware=leonardo_booster", "launcher=slurm", f"run.output_root={tmp_path / 'runs'}",
                     cwd=tmp_path))
    assert "SBATCH_ACCOUNT" in proc.stderr and "sbatch does not read it" in proc.stderr
    monkeypatch.setenv("SBATCH_ACCOUNT", "PRJ")
    ok(cli("hardware=leonardo_booster", "launcher=slurm", "launcher.submit=false", f"run.output_root={tmp_path / 'runs'}",
           cwd=tmp_path))


def test_every_saved_checkpoint_is_marked_complete_last(tmp_path):
    run = run_dir_of(ok(cli("stage.max_steps=4", "stage.save_steps=2", "stage.saves_per_epoch=null", cwd=tmp_path)))
    checkpoints = sorted((run / "output").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    for checkpoint in checkpoints:
        marker = json.loads((checkpoint / "llamantino_complete.json").read_text())
        assert marker["step"] == int(checkpoint.name.split("-")[1])
        # written after everything else the trainer saved into the folder
        latest = max(p.stat().st_mtime_ns for p in checkpoint.iterdir() if p.name != "llamantino_complete.json")
        assert (checkpoint / "llamantino_complete.json").stat().st_mtime_ns >= latest


def test_a_container_runs_every_python_of_the_job(tmp_path):
    import subprocess

    image = "$WORK/images/llamantino x.sif"
    run = run_dir_of(ok(cli(*LEONARDO, f"run.output_root={tmp_path / 'runs'}",
                            f"+hardware.container={{image:'{image}',binds:['$WORK','$FAST'],runtime:singularity}}",
                            cwd=tmp_path)))
    script = (run / "job.sbatch").read_text()
    assert ('PY=(singularity exec --nv --bind "${WORK}" --bind "${FAST}" "${WORK}"\'/images/llamantino x.sif\' '
            '"$PYTHON")') in script
    assert 'srun --nodes="$SLURM_NNODES"' in script and '"${PY[@]}" -m torch.distributed.run' in script
    assert '"${PY[@]}" -m llamantino.job.envcheck .' in script and '"${PY[@]}" -m llamantino.job.finish .' in script
    assert subprocess.run(["bash", "-n", str(run / "job.sbatch")]).returncode == 0
    plain = run_dir_of(ok(cli("hardware=local_slurm", "launcher=slurm", "launcher.submit=false",
                              f"run.output_root={tmp_path / 'plain'}", cwd=tmp_path)))
    assert 'PY=("$PYTHON")' in (plain / "job.sbatch").read_text()
    # (Apptainer/Singularity do not install from this machine's package indexes: the script is what is tested.)


def test_the_job_environment_check_names_what_differs(tmp_path):
    run = run_dir_of(ok(cli("launcher=dry", cwd=tmp_path)))
    ok(cli(str(run), module="llamantino.job.envcheck", cwd=tmp_path))
    provenance = json.loads((run / "provenance.json").read_text())
    provenance["packages"]["axolotl"] = "0.0.1"
    provenance["python"] = "3.9.0"
    (run / "provenance.json").write_text(json.dumps(provenance))
    proc = fails(cli(str(run), module="llamantino.job.envcheck", cwd=tmp_path))
    assert "axolotl 0.19.0 (validated 0.0.1)" in proc.stderr and "Python 3.11 (validated 3.9)" in proc.stderr


def test_the_planner_prints_the_checkpoint_lead(tmp_path):
    from llamantino.config.method import signal_lead_s

    out = ok(cli("model=llama2_13b", "stage=sft", "hardware=leonardo_booster", "hardware.nodes=2",
                 "hardware.storage.write_gbps=2", verb="plan", cwd=tmp_path)).stdout
    assert f"USR1 {signal_lead_s(13, None, 64, 2.0)} s before the time limit (written at 2 GB/s" in out
