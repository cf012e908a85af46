"""``launcher=slurm``: submit with ``sbatch --parsable``; never wait for a job.

Checks that can fail (QoS node and time limits, the account, data an offline cluster cannot
download) run before anything is written or submitted. Job ids go to the run's job record.

A plan is started in two halves with one code path: :func:`write_plan_graph` writes every script its
submission makes (the runs', a sweep's job array, the shared cache entries' download and prepare
steps) and records the job graph (llamantino/records/jobgraph.py) in the run, pipeline or sweep
directory; :func:`submit_graph` submits a recorded graph. ``launcher.submit=false`` stops after the
first half, and ``python -m llamantino launch <dir>`` does the second.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from llamantino.errors import ConfigError, LaunchError
from llamantino.launchers.base import (
    Launcher,
    LaunchPlan,
    check_inputs,
    prepared_complete,
    prepared_of,
    refuse_completed,
)
from llamantino.records.files import write_text
from llamantino.records.jobgraph import (
    DOWNLOAD_STEP,
    ancestors,
    run_of,
    shared_dir,
    step_script,
    write_graph,
)
from llamantino.records.jobstate import JobRecord, JobState
from llamantino.records.lock import directory_lock
from llamantino.records.manifests import GraphEntry, GraphNode, JobGraph
from llamantino.records.provenance import SourceKind
from llamantino.render.sbatch import push_script, render_sbatch, script_context
from llamantino.records.rundir import DownloadDir, PreparedDir, RunDir, SharedEntry, SweepDir
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
    if hub and not can_download(run.cfg):
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


def sbatch(script: Path, *, dependency: str | None = None, array: str | None = None) -> str:
    """``sbatch --parsable`` from the script's folder; returns the job id. ``array`` (``1,3%4``)
    replaces the script's own ``--array``."""
    argv = ["sbatch", "--parsable"]
    if array:
        argv.append(f"--array={array}")
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
            if reads and not can_download(run.cfg):
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

    def obligations(self, run):
        if run.cfg.launcher.submit:  # only what is submitted must be able to run
            super().obligations(run)

    def sweep_files(self, sweep, runs):
        if len({job_resources(run) for run in runs}) != 1:
            raise ConfigError("the points of this sweep need different SLURM resources or commands (nodes, time, "
                              "stage); a job array is uniform: sweep those settings in separate runs")
        return {SweepDir.ARRAY_SCRIPT: array_script(sweep, runs)}

    def start_plan(self, plan, starting):
        """Write every script of the plan's submission and its job graph; then submit the graph
        (``launcher.submit=false``: print the one command that does)."""
        graph = write_plan_graph(plan, starting, self.echo)
        if plan.runs[0].cfg.launcher.submit:
            submit_graph(plan.home, graph, self.echo)
            return
        self.echo(f"not submitted (launcher.submit=false): {len(graph.nodes)} job script(s) written, what each "
                  f"waits on in {plan.home / JobGraph.FILE}; submit them all with: python -m llamantino launch "
                  + shlex.quote(str(plan.home)))

    def start_members(self, home, dry_run=False):
        raise ConfigError(f"{home} holds no job graph ({JobGraph.FILE}): it was not written with launcher=slurm. "
                          "Write it again with launcher=slurm launcher.submit=false and launch that, or launch its "
                          "runs one by one (python -m llamantino launch <run dir> --launcher slurm)")

    def start_graph(self, home, graph, only=None, dry_run=False):
        submit_graph(home, graph, self.echo, only=only, dry_run=dry_run)

    def start(self, run, cfg, provenance, stage):
        if run.existing(RunDir.SCRIPT) is None:
            raise ConfigError(f"{run.path} has no {RunDir.SCRIPT}: render it with launcher=slurm")
        check_queue(cfg, provenance.method.nodes if provenance.method is not None else cfg.hardware.nodes)
        check_account(cfg)
        check_hub_reads(run, cfg, provenance, stage)
        check_sbatch()
        submit_script(run, [], self.echo)

    def state(self, run: RunDir) -> JobState:
        return written_state(run)

    def push(self, run, repo_id, private=False, revision=None):
        """A release whose job is still queued or running, or on nodes without network: a push job
        that waits on it, on the partition with network; a finished one on a networked cluster: here."""
        cfg = run.config()
        state = self.state(run)
        if not state.active and not cfg.hardware.offline:
            return super().push(run, repo_id, private, revision)
        from llamantino.job.push import hub_token, plan_upload

        if not state.active:
            plan_upload(run, repo_id, private, revision)  # finished: checked now, not in a job later
        else:
            from llamantino.config.schema import check_hub_target

            check_hub_target("--push", repo_id, "--revision", revision)
        hub_token()  # the job gets it through sbatch's environment, never through a file
        if cfg.hardware.offline and not cfg.hardware.prepare.network and not cfg.hardware.prepare.download_partition:
            raise ConfigError(f"{cfg.hardware.name} nodes have no network and hardware.prepare.download_partition is "
                              "not set: push from a machine with network once the release completed (llamantino "
                              f"release {shlex.quote(str(run.path))} --push {repo_id})")
        script = run / RunDir.PUSH_SCRIPT
        write_text(script, push_script(cfg, run.path, repo_id, private, revision))
        after = [run.job_id()] if state.active and run.job_id() else []
        dependency = dependency_on(after)
        job_id = sbatch(script, dependency=dependency)
        self.echo(f"submitted push job {job_id}" + (f" ({dependency})" if dependency else "")
                  + f": it uploads {run.path.name}/{RunDir.RELEASE} to {repo_id}; its log: "
                  f"{run.path / RunDir.LOGS}/llamantino-push-{job_id}.out")


def written_state(run: RunDir) -> JobState:
    """COMPLETED / FAILED from status.json, else the SLURM state of its last job, else WRITTEN/NEW."""
    status = run.read_status()
    if status is not None:
        return status.state
    job_id = run.job_id()
    if job_id:
        return job_state(job_id)
    return JobState.WRITTEN if run.path.exists() else JobState.NEW


def can_download(cfg: LlamantinoConfig) -> bool:
    """Whether a job of this hardware can reach the hub (its nodes, or the download partition's)."""
    hw = cfg.hardware
    return not hw.offline or hw.prepare.network or bool(hw.prepare.download_partition)


def check_hub_reads(run: RunDir, cfg: LlamantinoConfig, provenance, stage) -> None:
    """A written run that reads the hub on an offline cluster needs its reads prepared first."""
    if cfg.hardware.offline and stage.reads_hub(cfg, provenance) and run.existing(RunDir.LOCK) is None:
        raise ConfigError(f"{run.path} reads from the hub but {cfg.hardware.name} is offline: run "
                          f"python -m llamantino data prepare {run.path} on a machine with network first")


def array_script(sweep: SweepDir, runs: list[PreparedRun]) -> str:
    """The job-array script of a sweep: task N runs the Nth point."""
    names = [run.run_dir.name for run in runs]
    parallelism = runs[0].cfg.launcher.array_parallelism
    return job_script(runs[0], run_dirs=names, array=f"0-{len(names) - 1}%{parallelism}")


def dependency_on(jobs: list[str]) -> str | None:
    """``afterok:1:2``: start once every job in ``jobs`` completed successfully."""
    return "afterok:" + ":".join(jobs) if jobs else None


# --- shared cache entries: a download, a prepared corpus -------------------------------------------


def entry_jobs(entry: SharedEntry, job_name: str) -> list[str] | None:
    """A shared cache entry: [] when complete, [job] while its ``job_name`` job is queued or running,
    None when it must be made (never made, or its jobs failed)."""
    if entry.complete():
        return []
    job = entry.jobs().get(job_name)
    if job and job_state(job).active:
        return [job]
    return None


def made_or_making(entry: SharedEntry, job_name: str, what: str, echo=print) -> list[str] | None:
    """:func:`entry_jobs`, said in one line when the entry is complete or being made."""
    made = entry_jobs(entry, job_name)
    if made == []:
        echo(f"{what}: already prepared in {entry.path}")
    elif made:
        echo(f"{what}: being prepared by job {made[0]}; waiting for it")
    return made


def download_request(runs: list[PreparedRun]) -> tuple[dict, str]:
    """What one download job fetches for the runs (every hub read, into the shared HF_HOME), and its key."""
    import hashlib
    import json

    reads = sorted({read for run in runs for read in run.stage.hub_reads(run.cfg, run.inputs)}, key=str)
    request = {"reads": [dataclasses.asdict(read) for read in reads], "hf_home": runs[0].cfg.hardware.storage.hf_home}
    return request, hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:32]


def entry_dir(cfg: LlamantinoConfig, entry: GraphEntry) -> SharedEntry:
    """The folder of a graph's entry on this machine (ConfigError when the cache names an unset variable)."""
    from llamantino.inputs.corpus import expand

    return shared_dir(Path(expand(cfg.hardware.storage.cache, "hardware.storage.cache")), entry.id)


def entry_name(entry: GraphEntry) -> str:
    kind, key = entry.id.split("/", 1)
    if kind != PreparedDir.ROOT:
        return f"downloads {key[:12]}"
    return f"{'rows' if entry.request.get('kind') == 'rows' else 'corpus'} {key[:12]}"


def write_entry_scripts(cfg: LlamantinoConfig, folder: SharedEntry, entry: GraphEntry, steps: list[str],
                        keep: bool = False) -> None:
    """An entry's request.json and the script of each step (``keep``: scripts already there are kept
    as written, so what ``launcher.submit=false`` wrote is what is submitted)."""
    folder.write(folder.REQUEST, entry.request)
    (folder.path / folder.LOGS).mkdir(exist_ok=True)
    from llamantino.render.sbatch import prepare_script

    key = entry.id.split("/", 1)[1]
    for step in steps:
        script = step_script(folder, step)
        if keep and script.is_file():
            continue
        if isinstance(folder, PreparedDir):
            text = prepare_script(cfg, step, str(folder.path), key, entry.tasks)
        else:
            text = prepare_script(cfg, "fetch", str(folder.path), key, module="llamantino.job.download")
        write_text(script, text)


def write_entry(cfg: LlamantinoConfig, entry: GraphEntry, steps: list[str], echo=print) -> None:
    """Write a shared entry's request and scripts, unless it is complete or another command's jobs are
    making it. Where its folder names a variable not set here (``launcher.submit=false`` rendering for
    another machine), ``launch`` writes them there."""
    try:
        folder = entry_dir(cfg, entry)
    except ConfigError:
        if cfg.launcher.submit:
            raise
        echo(f"notice: {entry_name(entry)}: its job scripts are written into {cfg.hardware.storage.cache}/{entry.id} "
             "when it is launched (the cache names a variable that is not set here)")
        return
    with directory_lock(folder.path, echo):
        if entry_jobs(folder, steps[-1]) is None:
            write_entry_scripts(cfg, folder, entry, steps)


def make_entry(cfg: LlamantinoConfig, entry: GraphEntry, nodes: list[GraphNode], echo=print,
               after: list[str] = ()) -> dict[str, str | None]:
    """Submit the steps making one shared entry, chained with afterok (the first after the jobs
    ``after``), unless it is complete or being made (then the job making it is waited on); the job of
    each node (None: nothing to wait on)."""
    folder = entry_dir(cfg, entry)
    steps = [node.step for node in nodes]
    # Two commands needing one entry at once (a pipeline and a sweep): the second finds it submitted.
    with directory_lock(folder.path, echo):
        made = made_or_making(folder, steps[-1], entry_name(entry), echo)
        if made is not None:
            return {node.name: (made[0] if made else None) for node in nodes}
        write_entry_scripts(cfg, folder, entry, steps, keep=True)
        jobs: dict[str, str] = {}
        previous: list[str] = list(after)
        for step in steps:
            jobs[step] = sbatch(step_script(folder, step), dependency=dependency_on(previous))
            previous = [jobs[step]]
        folder.write(folder.JOBS, jobs)
    if isinstance(folder, PreparedDir):
        echo(f"{entry_name(entry)}: submitted " + " -> ".join(
            f"{step} {job}" + (f" (array of {entry.tasks})" if step in PreparedDir.ARRAY_STEPS else "")
            for step, job in jobs.items()))
    else:
        echo(f"{entry_name(entry)}: submitted job {jobs[DOWNLOAD_STEP]} ({folder.path})")
    return {node.name: jobs[node.step] for node in nodes}


# --- the job graph: every script written and recorded, then submitted --------------------------------


def write_plan_graph(plan: LaunchPlan, starting: list[int], echo=print) -> JobGraph:
    """Write every script a plan's submission makes and record its job graph in ``plan.home``.

    The runs starting wait on the steps making the corpora they read and, on an offline cluster with a
    partition that reaches the hub, on one download job fetching their hub reads; each run waits on
    the runs the plan puts before it; a sweep's points start together as one job array."""
    from llamantino.launchers.base import DOWNLOADS, prepared_entries, waits_for

    home = Path(plan.home)
    runs = [plan.runs[index] for index in starting]

    def member(run: PreparedRun) -> str:
        return "." if run.run_dir.path == home else run.run_dir.name

    entries: list[GraphEntry] = []
    nodes: list[GraphNode] = []
    makers: dict[str, LlamantinoConfig] = {}
    last: dict[str, list[str]] = {}  # entry key (or DOWNLOADS) -> the node the runs reading it wait on
    reading = [run for run in runs if run.cfg.hardware.offline and run.stage.hub_reads(run.cfg, run.inputs)]
    if reading and can_download(reading[0].cfg):
        request, key = download_request(reading)
        entry = GraphEntry(id=f"{DownloadDir.ROOT}/{key}", config=member(reading[0]), request=request)
        nodes.append(GraphNode(name=f"download-{key[:12]}", entry=entry.id, step=DOWNLOAD_STEP))
        entries.append(entry)
        makers[entry.id], last[DOWNLOADS] = reading[0].cfg, [nodes[-1].name]
    # Rows tokenised with an earlier step's model: their node goes just before the run reading them,
    # after the steps that make that model.
    deferred: dict[int, GraphNode] = {}
    for key, prepared in prepared_entries(runs).items():
        reader = next(run for run in runs if run.inputs.prepared is not None and run.inputs.prepared.key == key)
        entry = GraphEntry(id=f"{PreparedDir.ROOT}/{key}", config=member(reader), request=prepared.as_request(),
                           tasks=prepared.tasks)
        echo(f"{prepared.describe()}; entry {prepared.entry}")
        previous: list[str] = list(last.get(DOWNLOADS, [])) if prepared.kind == "rows" and reader in reading else []
        for step in prepared.steps:
            if prepared.after_model:
                index = plan.runs.index(reader)
                earlier = [plan.runs[dep].run_dir.name for dep in plan.after.get(index, [])]
                node = GraphNode(name=f"prepare-{key[:12]}-{step}", after=[*previous, *earlier], entry=entry.id,
                                 step=step)
                deferred[index] = node
            else:
                node = GraphNode(name=f"prepare-{key[:12]}-{step}", after=previous, entry=entry.id, step=step)
                nodes.append(node)
            previous = [node.name]
        entries.append(entry)
        makers[entry.id], last[key] = reader.cfg, previous
    if plan.sweep is not None:
        nodes.append(GraphNode(name="array", after=sorted({name for run in runs for name in waits_for(run, last)}),
                               array=True))
    else:
        for index, run in enumerate(plan.runs):
            if index in deferred:
                nodes.append(deferred[index])
            earlier = [plan.runs[dep].run_dir.name for dep in plan.after.get(index, [])]
            after = waits_for(run, last, earlier) if index in starting else earlier
            nodes.append(GraphNode(name=run.run_dir.name, after=list(dict.fromkeys(after)), run=member(run)))
    for entry in entries:
        write_entry(makers[entry.id], entry, [node.step for node in nodes if node.entry == entry.id], echo)
    graph = JobGraph(nodes=nodes, entries=entries)
    write_graph(home, graph)
    return graph


def _points(home: Path) -> list[RunDir]:
    return [run_of(home, point.run_dir) for point in SweepDir(home).record().points]


def _standing(home: Path, node: GraphNode) -> tuple[bool, str | None, str]:
    """Whether a run (or the sweep's array) starts; if not, the job later jobs wait on, and why not.
    A COMPLETED run launched by itself is refused (launch --again); in a pipeline it is skipped."""
    if node.array:
        record = SweepDir(home).record()
        if record.job_id is None:
            return True, None, ""
        rerun = _points_to_rerun(home)
        if rerun:
            return True, None, ""
        state = job_state(record.job_id)
        return False, (record.job_id if state.active else None), (
            f"{home}: every point is COMPLETED, queued or running (job array {record.job_id}, {state}); "
            "nothing submitted again")
    run = run_of(home, node.run)
    if not run.is_run():
        raise ConfigError(f"{run.path} (a run of {home / JobGraph.FILE}) is missing or not a run directory: "
                          "write it again with the command that wrote it")
    state, job = written_state(run), run.job_id()
    if node.run == ".":
        refuse_completed(run, state, job)
    if state.failed or (state in (JobState.WRITTEN, JobState.NEW) and job is None):
        return True, None, ""
    if node.run == ".":
        what = f"already submitted as job {job}" if job else "already run"
        return False, (job if state.active else None), (f"{run.path} was {what} ({state}); not started again: "
                                                        f"python -m llamantino status {shlex.quote(str(run.path))}")
    if state.active:
        return False, job, f"{node.name}: already queued or running as job {job}; not submitted again"
    return False, None, f"{node.name}: {state}; skipped, its output reused"


def _points_to_rerun(home: Path) -> list[int]:
    """The points of a submitted sweep that failed or never ran (their task cancelled before it started)."""
    indexes = []
    for index, run in enumerate(_points(home)):
        state = written_state(run)
        if state.failed or state in (JobState.WRITTEN, JobState.NEW, JobState.UNKNOWN):
            indexes.append(index)
    return indexes


def _config(run: RunDir, configs: dict) -> LlamantinoConfig:
    """A run's config, read once per submission."""
    if run.path not in configs:
        configs[run.path] = run.config()
    return configs[run.path]


def _check_run(home: Path, graph: JobGraph, node: GraphNode, run: RunDir, configs: dict, making: set[str]) -> None:
    """A run about to be submitted from a recorded graph: what ``launch`` of a run checks, and its inputs
    made by the graph, already made, or (hub reads) prepared with ``data prepare``. ``making``: the
    nodes this submission starts or waits on (queued or running)."""
    from llamantino.stages import stage_for

    cfg, provenance = _config(run, configs), run.provenance()
    check_queue(cfg, provenance.method.nodes if provenance.method is not None else cfg.hardware.nodes)
    check_account(cfg)
    by_name = {other.name: other for other in graph.nodes}
    made = {by_name[name].entry for name in ancestors(graph, {node.name}) if by_name[name].entry}
    found = prepared_of(provenance)
    if found and f"{PreparedDir.ROOT}/{found[1]['key']}" not in made:
        prepared_complete(run, provenance)
    if not any(entry.startswith(f"{DownloadDir.ROOT}/") for entry in made):
        check_hub_reads(run, cfg, provenance, stage_for(run))
    earlier = {os.path.abspath(run_of(home, by_name[name].run).path): name
               for name in ancestors(graph, {node.name}) if by_name[name].run is not None and name != node.name}
    check_inputs(run, provenance, {path: name for path, name in earlier.items() if name in making})


def _check_entry(home: Path, entry: GraphEntry, steps: list[str], cfg: LlamantinoConfig) -> None:
    """An entry about to be made: its account, and a node that can download when a step downloads."""
    folder = entry_dir(cfg, entry)
    if entry_jobs(folder, steps[-1]) is not None:
        return
    check_account(cfg)
    if ("fetch" in steps or DOWNLOAD_STEP in steps) and not can_download(cfg):
        reader = run_of(home, entry.config).path
        raise ConfigError(f"{entry_name(entry)} downloads from the hub, but {cfg.hardware.name}'s nodes have no "
                          "network and hardware.prepare.download_partition is not set: prepare it where there is "
                          f"network (python -m llamantino data prepare {shlex.quote(str(reader))}), then launch again")


def submit_graph(home: Path, graph: JobGraph, echo=print, only: set[str] | None = None, dry_run: bool = False,
                 points: set[str] | None = None) -> None:
    """Submit a recorded job graph in its order, each job after the jobs it waits on (afterok).

    A run completed, queued or running is not submitted again (the runs after it wait on its job, if
    it has one); a sweep's array is submitted again for its points that failed or never ran; an entry
    complete, or being made by another command's jobs, is not made again. Only what the runs to
    submit wait on is made. ``only``: those nodes and what they wait on. Everything is checked
    before the first job is submitted; ``dry_run`` stops there and says what would be submitted.
    ``points``: a sweep's points to submit again (by folder name), in place of all that failed or never ran."""
    home = Path(home)
    scope = ancestors(graph, only) if only is not None else {node.name for node in graph.nodes}
    jobs: dict[str, str | None] = {}
    starting: list[GraphNode] = []
    for node in graph.nodes:
        if node.entry is not None or node.name not in scope:
            continue
        starts, job, why = _standing(home, node)
        if starts:
            starting.append(node)
        else:
            jobs[node.name] = job
            echo(why)
    needed = ancestors(graph, {node.name for node in starting})
    making = {node.name for node in starting} | {name for name, job in jobs.items() if job}
    configs: dict[Path, LlamantinoConfig] = {}
    tiny: dict[str, None] = {}  # the builders of the built models the jobs read, in order
    for node in starting:
        runs = _points(home) if node.array else [run_of(home, node.run)]
        if node.array and not (home / SweepDir.ARRAY_SCRIPT).is_file():
            raise ConfigError(f"{home} has no {SweepDir.ARRAY_SCRIPT}: write the sweep again with launcher=slurm")
        for run in runs:
            if not node.array and run.existing(RunDir.SCRIPT) is None:
                raise ConfigError(f"{run.path} has no {RunDir.SCRIPT}: render it with launcher=slurm")
            _check_run(home, graph, node, run, configs, making)
            model = run.provenance().model
            if model.kind == SourceKind.built:
                tiny[model.builder] = None
    entries = {entry.id: entry for entry in graph.entries}
    for entry_id in dict.fromkeys(node.entry for node in graph.nodes if node.entry is not None and node.name in needed):
        entry = entries[entry_id]
        _check_entry(home, entry, [node.step for node in graph.nodes if node.entry == entry_id],
                     _config(run_of(home, entry.config), configs))
    if dry_run:
        for node in graph.nodes:
            if node.entry is not None and node.name in needed:  # an entry made (or being made) is not made again
                entry = entries[node.entry]
                folder = entry_dir(_config(run_of(home, entry.config), configs), entry)
                made = entry_jobs(folder, [n.step for n in graph.nodes if n.entry == node.entry][-1])
                if made is not None:
                    jobs[node.name] = made[0] if made else None
                    echo(f"{node.name}: {'already prepared' if not made else f'being prepared by job {made[0]}'}")
                    continue
            if node.name in needed and node.name not in jobs:
                waits = [f"{name} (job {jobs[name]})" if jobs.get(name) else name for name in node.after]
                what = f"job array over points {_array_indexes(home)}" if node.array else node.name
                echo(f"would submit {what}" + (f" after {', '.join(waits)}" if waits else ""))
        if not starting:
            echo("nothing would be submitted")
        return
    if not starting:
        return
    check_sbatch()
    if tiny:
        from llamantino.inputs.tiny import ensure_tiny_model

        for builder in tiny:
            echo(f"llamantino: tiny model at {ensure_tiny_model(builder)}")
    for node in graph.nodes:
        if node.name not in needed or node.name in jobs:
            continue
        after = [jobs[name] for name in node.after if jobs.get(name)]
        if node.entry is not None:
            entry = entries[node.entry]
            cfg = _config(run_of(home, entry.config), configs)
            jobs.update(make_entry(cfg, entry, [other for other in graph.nodes if other.entry == entry.id], echo,
                                   after=after))
            continue
        try:
            if node.array:
                jobs[node.name] = submit_array_job(SweepDir(home), after, echo, points)
            else:
                label = "" if node.run == "." else f"{node.name}: "
                jobs[node.name] = submit_script(run_of(home, node.run), after, echo, label)
        except LaunchError as exc:
            rest = [other.name for other in starting if other.name not in jobs and other is not node]
            if not rest:
                raise
            raise LaunchError(f"{node.name} failed; the runs after it were not submitted ({', '.join(rest)}); "
                              f"submit them with python -m llamantino launch {shlex.quote(str(home))}. {exc}") from None


def _array_indexes(home: Path) -> list[int]:
    """The points a sweep's array runs: all of them before its first submission, then those to rerun."""
    record = SweepDir(home).record()
    return list(range(len(record.points))) if record.job_id is None else _points_to_rerun(home)


def submit_array_job(sweep: SweepDir, after: list[str], echo=print, only: set[str] | None = None) -> str:
    """Submit a sweep's job array (again: only its points that failed or never ran, or the points
    named in ``only``, by index); record its job in the sweep record and each point's job record."""
    record = sweep.record()
    points = _points(sweep.path)
    indexes = _array_indexes(sweep.path)
    if only is not None:
        indexes = [index for index, run in enumerate(points) if run.name in only]
    parallelism = points[0].config().launcher.array_parallelism
    array = None if len(indexes) == len(points) else f"{','.join(map(str, indexes))}%{parallelism}"
    for index in indexes:
        points[index].keep_outcome()
    job_id = sbatch(sweep.path / SweepDir.ARRAY_SCRIPT, dependency=dependency_on(after), array=array)
    sweep.write_record(dataclasses.replace(record, job_id=job_id))
    for index in indexes:
        points[index].record_job(f"{job_id}_{index}", array=job_id)
    which = f"{len(points)} points" if array is None else f"points {', '.join(map(str, indexes))} of {len(points)}"
    echo(f"submitted job array {job_id} ({which}, at most {parallelism} at once): "
         f"python -m llamantino status {shlex.quote(str(sweep.path))}")
    return job_id


def submit_script(run: RunDir, after: list[str], echo=print, label: str = "") -> str:
    """Submit a run's job.sbatch; a run submitted again (it failed) keeps its last outcome under logs/
    and its job resumes from the last complete checkpoint."""
    dependency = dependency_on(after)
    run.keep_outcome()
    job_id = sbatch(run / RunDir.SCRIPT, dependency=dependency)
    run.record_job(job_id, dependency=dependency)
    echo(f"{label}submitted job {job_id}" + (f" ({dependency})" if dependency else "")
         + f": squeue -j {job_id}; python -m llamantino status {shlex.quote(str(run.path))}")
    return job_id
