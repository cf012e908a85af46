"""``launcher=slurm``: submit with ``sbatch --parsable``; never wait for a job.

Checks that can fail (QoS node and time limits, the account, data an offline cluster cannot
download) run before anything is written or submitted. Job ids go to the run's job record.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from llamantino.errors import ConfigError, LaunchError
from llamantino.launchers.base import Launcher
from llamantino.records.jobstate import JobRecord, JobState
from llamantino.records.lock import directory_lock
from llamantino.render.sbatch import render_sbatch, script_context
from llamantino.records.rundir import RunDir, SweepDir
from llamantino.config.schema import LauncherName, LlamantinoConfig, time_seconds
from llamantino.stages import PreparedRun

def check_queue(cfg: LlamantinoConfig, nodes: int) -> None:
    """QoS node and time limits of the hardware option (what sbatch would refuse)."""
    hw, slurm = cfg.hardware, cfg.hardware.slurm
    if not slurm.qos:
        return
    from llamantino.launchers.cluster import qos_limits

    live = qos_limits() if cfg.launcher.submit else None  # sacctmgr's limits, where it answers, win over the YAML's
    limits = (live or {}).get(slurm.qos) or slurm.qos_limits.get(slurm.qos)
    if not limits:
        return
    if not limits.min_nodes <= nodes <= limits.max_nodes:
        raise ConfigError(
            f"hardware.nodes={nodes} but QoS {slurm.qos} of {hw.name} allows "
            f"{limits.min_nodes}-{limits.max_nodes} nodes; change hardware.nodes or hardware.slurm.qos"
        )
    if time_seconds(cfg.time_limit) > time_seconds(limits.max_time):
        raise ConfigError(
            f"time limit {cfg.time_limit} exceeds QoS {slurm.qos}'s {limits.max_time} on {hw.name}; "
            "set launcher.time (the run resumes across requeues) or another hardware.slurm.qos"
        )


def check_account(cfg: LlamantinoConfig) -> None:
    slurm = cfg.hardware.slurm
    # sbatch takes the account from --account or $SBATCH_ACCOUNT; $SLURM_ACCOUNT is srun's and salloc's only.
    if slurm.account_required and not slurm.account and not os.environ.get("SBATCH_ACCOUNT"):
        hint = " ($SLURM_ACCOUNT is set, but sbatch does not read it)" if os.environ.get("SLURM_ACCOUNT") else ""
        raise ConfigError(f"{cfg.hardware.name} bills every job to a project: set hardware.slurm.account=<PROJECT> "
                          f"or export SBATCH_ACCOUNT{hint} (`saldo -b` lists yours)")


def check_corpus_download(run: PreparedRun) -> None:
    """A corpus sampled from the hub needs a node with network for its fetch job."""
    plan, hw = run.inputs.corpus, run.cfg.hardware
    hub = [s.hub_id for s in plan.sources if s.origin == "hub"] if plan is not None else []
    if hub and hw.offline and not hw.prepare.network and not hw.prepare.download_partition:
        raise ConfigError(f"data {run.cfg.data.name} samples {', '.join(hub)} from the hub, but {hw.name}'s nodes have "
                          "no network: set hardware.prepare.download_partition=<a partition with network> (or "
                          "hardware.prepare.network=true), or hardware.storage.hub_mirror=<a local mirror folder>")
    if plan is not None:
        plan.entry_dir()  # the cache root's variables are set here (ConfigError naming hardware.storage.cache)


def check_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch is not on PATH: this machine is not a SLURM submission host "
                          "(use launcher.submit=false to write job.sbatch without submitting)")


def job_script(run: PreparedRun, run_dirs: list[str] | None = None, array: str | None = None) -> str:
    """The sbatch text of a prepared run (or, with run_dirs, of a job array over several)."""
    return render_sbatch(run.cfg.launcher.template, _context(run, run_dirs, array))


def _context(run: PreparedRun, run_dirs, array) -> dict:
    cfg, shape = run.cfg, run.shape
    header = [f"llamantino job: stage={cfg.stage.name} model={cfg.model.name} "
              f"hardware={cfg.hardware.name} nodes={shape.nodes}"]
    if cfg.experiment:
        header.append(f"preset: {cfg.experiment}")
    return script_context(cfg, run.command, shape, job_env=run.provenance.env, run_dirs=run_dirs, array=array,
                          header=header)


def job_resources(run: PreparedRun) -> tuple:
    """What a job array must share across its tasks: directives (but the name), command, environment."""
    context = _context(run, None, None)
    directives = tuple(d for d in context["directives"] if not d.startswith("--job-name="))
    return (directives, tuple(context["stage_args"]), context["nproc_per_node"], tuple(context["env"]),
            tuple(context["modules"]))


def sbatch(script: Path, *, dependency: str | None = None) -> str:
    """``sbatch --parsable`` from the script's folder; returns the job id."""
    argv = ["sbatch", "--parsable"]
    if dependency:
        argv += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    argv.append(script.name)
    env = {**os.environ, "LLAMANTINO_PYTHON": sys.executable}
    try:
        proc = subprocess.run(argv, cwd=script.parent, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"sbatch did not answer in 60 s for {script}: the SLURM controller is busy or down; the job "
                          "may be queued all the same: check `squeue --me` before submitting again") from None
    if proc.returncode != 0:
        raise LaunchError(f"sbatch refused {script}: {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job_id):
        raise LaunchError(f"sbatch answered {proc.stdout.strip()!r}, not a job id")
    return job_id


def slurm_job(job_id: str) -> JobRecord | None:
    """SLURM's record of a job: ``scontrol show job`` while it knows the job (reason, restarts, run
    time), then the accounting database's (``sacct``), which keeps the final state after scontrol
    forgets it (MinJobAge, 300 s by default). None when neither knows it."""
    record = _scontrol_job(job_id)
    if record:
        return JobRecord(job_id=record.get("JobId", str(job_id)), state=JobState.parse(record.get("JobState")),
                         reason=record.get("Reason", ""), restarts=record.get("Restarts", "0"),
                         elapsed=record.get("RunTime", "-"), exit_code=record.get("ExitCode"),
                         end=record.get("EndTime"), nodes=record.get("NumNodes"),
                         array_job_id=record.get("ArrayJobId"), dependency=record.get("Dependency"),
                         source="scontrol")
    from llamantino.launchers.accounting import job_states

    rows = job_states(str(job_id))
    row = next((r for r in rows if r["JobID"] == str(job_id)), rows[0] if len(rows) == 1 else None)
    if row is None:
        return None
    return JobRecord(job_id=row["JobID"], state=row["State"], exit_code=row["ExitCode"], elapsed=row["Elapsed"],
                     nodes=row["NNodes"], end=row["End"], max_rss=row["MaxRSS"], source="sacct")


def job_state(job_id: str) -> JobState:
    record = slurm_job(job_id)
    return record.state if record is not None else JobState.UNKNOWN


def _scontrol_job(job_id: str) -> dict:
    if shutil.which("scontrol") is None:
        return {}
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}  # no answer: the accounting database's record, or unknown
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    record = {}
    for line in proc.stdout.strip().splitlines()[:1]:  # job arrays: the first task line
        for item in line.split():
            key, _, value = item.partition("=")
            record[key] = value
    return record


class SlurmLauncher(Launcher):
    name = LauncherName.slurm

    def check(self, runs):
        for run in runs:
            check_queue(run.cfg, run.shape.nodes)
        submitting = [run for run in runs if run.cfg.launcher.submit]
        for run in submitting:
            check_account(run.cfg)
            reads = run.stage.hub_reads(run.cfg, run.inputs) if run.cfg.hardware.offline else []
            prepare = run.cfg.hardware.prepare
            if reads and not (prepare.network or prepare.download_partition):
                raise ConfigError(
                    f"{run.cfg.hardware.name} compute nodes have no internet and this run reads "
                    f"{' and '.join(map(str, reads))} from the hub: set hardware.prepare.download_partition=<a "
                    "partition with network> (a download job then runs first), or render it with "
                    "launcher.submit=false, prepare it where there is network (python -m llamantino data prepare "
                    "<run dir>) and submit it (python -m llamantino launch <run dir>)"
                )
        for run in submitting:
            check_corpus_download(run)
        if submitting:
            check_sbatch()

    def prepare(self, run):
        run.files[RunDir.SCRIPT] = job_script(run)

    def prepare_inputs(self, runs):
        """Submit fetch (hub sources) -> tokenise array -> finish for each corpus not in the cache.

        A corpus that another command is already preparing is not prepared twice: its finish job is
        waited for instead.
        """
        from llamantino.launchers.base import DOWNLOADS, corpora

        plans = corpora(runs)
        ready: dict[str, list[str]] = {}
        if plans and not runs[0].cfg.launcher.submit:
            for plan in plans.values():
                self.echo(f"{plan.describe()}: not prepared (launcher.submit=false)")
            return ready
        if plans:
            self.ensure_model(runs)
        for key, plan in plans.items():
            cfg = next(run.cfg for run in runs if run.inputs.corpus is not None and run.inputs.corpus.key == key)
            ready[key] = submit_prepare(cfg, plan, self.echo)
        reading = [run for run in runs if run.cfg.hardware.offline and run.stage.hub_reads(run.cfg, run.inputs)]
        if reading and reading[0].cfg.launcher.submit:
            ready[DOWNLOADS] = submit_download(reading, self.echo)
        return ready

    def obligations(self, run):
        if run.cfg.launcher.submit:  # only what is submitted must be able to run
            super().obligations(run)

    def submit(self, run, after=()):
        if not run.cfg.launcher.submit:
            self.echo("not submitted (launcher.submit=false): python -m llamantino launch "
                      + shlex.quote(str(run.run_dir.path)))
            return None
        self.ensure_model([run])
        return submit_script(run.run_dir, list(after), self.echo)

    def sweep_files(self, sweep, runs):
        if len({job_resources(run) for run in runs}) != 1:
            raise ConfigError("the points of this sweep need different SLURM resources or commands (nodes, time, "
                              "stage); a job array is uniform: sweep those settings in separate runs")
        return {SweepDir.ARRAY_SCRIPT: array_script(sweep, runs)}

    def submit_array(self, sweep: SweepDir, runs, after=()):
        if not runs[0].cfg.launcher.submit:
            self.echo(f"not submitted (launcher.submit=false): sbatch {shlex.quote(str(sweep.path / SweepDir.ARRAY_SCRIPT))}")
            return None
        self.ensure_model(runs)
        job_id = sbatch(sweep.path / SweepDir.ARRAY_SCRIPT, dependency=dependency_on(list(after)))
        for index, run in enumerate(runs):
            run.run_dir.record_job(f"{job_id}_{index}", array=job_id)
        parallelism = runs[0].cfg.launcher.array_parallelism
        self.echo(f"submitted job array {job_id} ({len(runs)} points, at most {parallelism} at once): "
                  f"python -m llamantino status {shlex.quote(str(sweep.path))}")
        return job_id

    def start(self, run, cfg, provenance, stage):
        if run.existing(RunDir.SCRIPT) is None:
            raise ConfigError(f"{run.path} has no {RunDir.SCRIPT}: render it with launcher=slurm")
        check_queue(cfg, provenance.method.nodes if provenance.method is not None else cfg.hardware.nodes)
        check_account(cfg)
        if cfg.hardware.offline and stage.reads_hub(cfg, provenance) and run.existing(RunDir.LOCK) is None:
            raise ConfigError(f"{run.path} reads from the hub but {cfg.hardware.name} is offline: run "
                              f"python -m llamantino data prepare {run.path} on a machine with network first")
        check_sbatch()
        submit_script(run, [], self.echo)

    def state(self, run: RunDir) -> JobState:
        """COMPLETED / FAILED from status.json, else the SLURM state of its last job, else WRITTEN/NEW."""
        status = run.read_status()
        if status is not None:
            return status.state
        job_id = run.job_id()
        if job_id:
            return job_state(job_id)
        return JobState.WRITTEN if run.path.exists() else JobState.NEW


def array_script(sweep: SweepDir, runs: list[PreparedRun]) -> str:
    """The job-array script of a sweep: task N runs the Nth point."""
    names = [run.run_dir.name for run in runs]
    parallelism = runs[0].cfg.launcher.array_parallelism
    return job_script(runs[0], run_dirs=names, array=f"0-{len(names) - 1}%{parallelism}")


def dependency_on(jobs: list[str]) -> str | None:
    """``afterok:1:2``: start once every job in ``jobs`` completed successfully."""
    return "afterok:" + ":".join(jobs) if jobs else None


def made_or_making(entry, job_name: str, what: str, echo=print) -> list[str] | None:
    """A shared cache entry: [] when complete, [job] while its ``job_name`` job is queued or running,
    None when it must be made (never made, or its jobs failed)."""
    if entry.complete():
        echo(f"{what}: already prepared in {entry.path}")
        return []
    job = entry.jobs().get(job_name)
    if job and job_state(job).active:
        echo(f"{what}: being prepared by job {job}; waiting for it")
        return [job]
    return None


def submit_prepare(cfg: LlamantinoConfig, plan, echo=print) -> list[str]:
    """The jobs that make one prepared corpus (none when it is complete); returns the job to wait for."""
    entry = plan.entry_dir()
    # Two commands needing one corpus at once (a pipeline and a sweep): the second finds it submitted.
    with directory_lock(entry.path, echo):
        made = made_or_making(entry, "finish", plan.describe(), echo)
        if made is not None:
            return made
        return _submit_prepare(cfg, plan, entry, echo)


def _submit_prepare(cfg: LlamantinoConfig, plan, entry, echo) -> list[str]:
    from llamantino.render.sbatch import prepare_script
    from llamantino.records.rundir import PreparedDir

    entry.write(PreparedDir.REQUEST, plan.as_request())
    (entry.path / PreparedDir.LOGS).mkdir(exist_ok=True)
    hub = any(source.origin == "hub" for source in plan.sources)
    jobs: dict[str, str] = {}
    steps = (["fetch"] if hub else []) + ["task", "finish"]
    previous: list[str] = []
    for step in steps:
        script = entry.script(step)
        script.write_text(prepare_script(cfg, step, str(entry.path), plan.key, plan.tasks))
        jobs[step] = sbatch(script, dependency=dependency_on(previous))
        previous = [jobs[step]]
    entry.write(PreparedDir.JOBS, jobs)
    echo(f"{plan.describe()}: submitted " + " -> ".join(
        f"{step} {job}" + (f" (array of {plan.tasks})" if step == "task" else "") for step, job in jobs.items()))
    return [jobs["finish"]]


def submit_download(runs: list[PreparedRun], echo=print) -> list[str]:
    """One job, where there is network, fetching every hub read of the runs into the shared HF_HOME."""
    import dataclasses
    import hashlib
    import json

    from llamantino.inputs.corpus import expand
    from llamantino.render.sbatch import prepare_script
    from llamantino.records.rundir import DownloadDir

    cfg = runs[0].cfg
    reads = sorted({read for run in runs for read in run.stage.hub_reads(run.cfg, run.inputs)}, key=str)
    request = {"reads": [dataclasses.asdict(read) for read in reads], "hf_home": cfg.hardware.storage.hf_home}
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:32]
    entry = DownloadDir(Path(expand(cfg.hardware.storage.cache, "hardware.storage.cache")) / DownloadDir.ROOT / key)
    with directory_lock(entry.path, echo):
        made = made_or_making(entry, "download", f"downloads ({', '.join(map(str, reads))})", echo)
        if made is not None:
            return made
        entry.write(DownloadDir.REQUEST, request)
        (entry.path / DownloadDir.LOGS).mkdir(exist_ok=True)
        script = entry.path / entry.SCRIPT
        script.write_text(prepare_script(cfg, "fetch", str(entry.path), key, module="llamantino.job.download"))
        job = sbatch(script)
        entry.write(DownloadDir.JOBS, {"download": job})
    echo(f"downloads ({', '.join(map(str, reads))}): submitted job {job} ({entry.path})")
    return [job]


def submit_script(run: RunDir, after: list[str], echo=print) -> str:
    dependency = dependency_on(after)
    job_id = sbatch(run / RunDir.SCRIPT, dependency=dependency)
    run.record_job(job_id, dependency=dependency)
    echo(f"submitted job {job_id}" + (f" ({dependency})" if dependency else "")
         + f": squeue -j {job_id}; python -m llamantino status {shlex.quote(str(run.path))}")
    return job_id
