"""``launcher=local``: run the stage here, in a subprocess, its progress streamed.

The full output goes to ``<run>/logs/train.log``; the console shows the data report, each step's
progress (step/total, s/step, tokens/s, ETA; a live bar on a terminal) and errors. A failing run
raises LaunchError naming the log; a relaunch appends to the log and resumes from the last
complete checkpoint.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time

from llamantino.config.schema import LauncherName
from llamantino.errors import ConfigError, LaunchError
from llamantino.inputs.rows import recorded_request
from llamantino.job.finish import finish_run
from llamantino.launchers.base import InOrderLauncher, prepared_entries, prepared_entry, prepared_of
from llamantino.launchers.console import ConsoleProgress
from llamantino.records.jobstate import JobState, LocalProcess, RunStatus
from llamantino.records.provenance import now_iso
from llamantino.records.lock import directory_lock
from llamantino.records.progress import parse_progress
from llamantino.records.rundir import RunDir

_SHOW = re.compile(r"^llamantino (data|eval):|^\|.*\|$|Error|Traceback|Killed")


def progress_line(line: str) -> str | None:
    """The console's view of one log line: the plugin's progress lines (for ConsoleProgress), data
    reports, evaluation progress and errors as they are."""
    if parse_progress(line.strip()) is not None:
        return line.strip()
    if _SHOW.search(line) and "Warning" not in line:
        return "  " + line.strip()[:300]
    return None


class LocalLauncher(InOrderLauncher):
    name = LauncherName.local

    def check(self, runs):
        """The hardware option must describe this machine's GPUs."""
        for run in runs:
            check_fits_here(run.cfg, run.shape.nodes)

    def prepare_inputs(self, runs):
        """Prepare every entry (corpus, rows) not yet in the cache here, now; rows tokenised with an
        earlier step's model are prepared when that step is done (``submit``)."""
        plans = prepared_entries(runs)
        if plans:
            self.ensure_model(runs)
        for plan in plans.values():
            if not plan.after_model:
                self._prepare(plan.entry_dir(), plan.describe(), plan.as_request())
                continue
            entry = plan.entry_dir()  # its request now: a step launched by itself later prepares from it
            with directory_lock(entry.path, self.echo):
                if not entry.complete():
                    entry.write(entry.REQUEST, plan.as_request())
        return {}

    def _prepare(self, entry, what: str, request: dict | None) -> None:
        """One entry made here unless complete (``request``: written first, when given)."""
        from llamantino.job.prepare import prepare_here

        with directory_lock(entry.path, self.echo):  # two commands needing one entry: made once
            if entry.complete():
                self.echo(f"{what}: already prepared in {entry.path}")
                return
            prepare_here(entry, what, request, echo=self.echo)

    def data_prepared(self, run, provenance, dry_run=False):
        """A written run's rows are prepared here first, from the request its provenance records (a
        pipeline step launched by itself later, a run written with launcher=dry)."""
        found = prepared_of(provenance)
        if found is None or found[0] != "rows":
            return super().data_prepared(run, provenance, dry_run)
        record = found[1]
        entry = prepared_entry(record)
        if not (re.fullmatch(r"[0-9a-f]{32}", str(record.get("key"))) and entry.path.name == record["key"]
                and entry.path.parent.name == entry.ROOT):
            raise ConfigError(f"{run.path}: data.rows in its provenance names {record.get('entry')!r}, which is "
                              f"not an entry <cache>/{entry.ROOT}/<key> of its key: write the run again")
        if entry.complete():
            return None
        if dry_run:
            self.echo(f"would prepare rows {entry.path.name[:12]} in {entry.path}")
            return None
        # The request as its run recorded it (checked again when read: the record is a file read back).
        self._prepare(entry, f"rows {entry.path.name[:12]}", recorded_request(record))
        return None

    def submit(self, run, after=()):
        self.ensure_model([run])
        plan = run.inputs.rows
        if plan is not None and plan.after_model:  # the earlier step that makes its tokenizer is done
            self._prepare(plan.entry_dir(), plan.describe(), plan.as_request())
        status = run_here(run.run_dir, run.command, run.shape.processes_per_node, echo=self.echo)
        output = run.output
        self.echo(f"done: {output.kind} in {status.output or run.run_dir.path}")
        losses = status.losses
        if losses:
            self.echo(f"loss: first {losses['first']:.4f}, last {losses['last']:.4f} ({losses['count']} logged steps); "
                      f"curve: {run.run_dir / RunDir.LOSS_PNG}")
        if output.trained:
            from llamantino.job.sample import generate_sample

            sample = generate_sample(run.run_dir, run.cfg)
            if sample:
                prompt, completion = sample
                shown = " ".join(re.sub(r"<\|[^|]*\|>|</?s>|\[/?INST\]|<</?SYS>>", " ", prompt).split()[-12:])
                self.echo(f"sample (greedy, prompt from the training data): ...{shown!r} -> {completion!r}")
        return None

    def submit_array(self, sweep, runs, after=()):
        """Each point in turn. Points are independent, as in a SLURM array: one failing does not stop
        the others (the command fails at the end, naming it); a cancel stops the sweep."""
        failed = []
        for run in runs:
            if run.run_dir.read_status() is not None and run.run_dir.read_status().state == JobState.CANCELLED:
                self.echo(f"point {run.run_dir.name}: cancelled before it started; not run")
                failed.append(run.run_dir.name)
                continue
            try:
                self.submit(run)
            except LaunchError as exc:
                if self.state(run.run_dir) == JobState.CANCELLED:
                    raise
                self.echo(f"point {run.run_dir.name} failed: {str(exc).splitlines()[0]}")
                failed.append(run.run_dir.name)
        if failed:
            raise LaunchError(f"points {', '.join(failed)} of {sweep.path} did not complete; the others ran: "
                              f"python -m llamantino status {shlex.quote(str(sweep.path))}")
        return None

    def start(self, run, cfg, provenance, stage):
        method = provenance.method
        nodes = method.nodes if method is not None else 1
        if nodes > 1:
            raise ConfigError(f"{run.path} is a {nodes}-node run: start it with --launcher slurm")
        status = run_here(run, list(stage.command), (method.processes_per_node if method else 1) or 1, echo=self.echo)
        self.echo(f"done: {status.state}")


def check_fits_here(cfg, nodes: int) -> None:
    """One node, and the hardware option's GPUs present on this machine."""
    hw = cfg.hardware
    if nodes > 1:
        raise ConfigError(f"hardware={hw.name} asks for {nodes} nodes: a multi-node run cannot start with "
                          "launcher=local; use launcher=slurm")
    if not hw.gpu:
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < hw.gpus_per_node:
        raise ConfigError(
            f"hardware={hw.name} needs {hw.nodes} node(s) x {hw.gpus_per_node} GPUs but this machine has "
            f"{found} CUDA GPU(s): use hardware=cpu here, launcher=slurm for a cluster, or launcher=dry to "
            "render only")


def run_here(run: RunDir, command: list[str], processes: int = 1, echo=print) -> RunStatus:
    """Run a written run's stage command in its directory; returns its status or raises LaunchError.

    The stage runs in its own process group, recorded in process.json (``cancel`` ends that group;
    ``status`` and ``runs`` see it running). A relaunch appends to the log and resumes from the last
    complete checkpoint (RunDir.begin_attempt)."""
    argv = [sys.executable, *command]
    if processes > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                *command]
    env = {**os.environ, **run.provenance().env, "PYTHONUNBUFFERED": "1"}
    log_path = run / RunDir.TRAIN_LOG
    log_path.parent.mkdir(exist_ok=True)
    attempt, resumed = run.begin_attempt()
    echo(f"llamantino: running {' '.join(argv[1:])} in {run.path} (log: {log_path})")
    if resumed:
        echo(f"llamantino: attempt {attempt}: resuming from {resumed}")
    started = time.time()
    with open(log_path, "a", encoding="utf-8") as log, subprocess.Popen(
        argv, cwd=run.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        bufsize=1, start_new_session=True,
    ) as proc:
        run.record_process(LocalProcess(pid=proc.pid, pgid=proc.pid, host=socket.gethostname(), started=now_iso(),
                                        attempt=attempt))
        if attempt > 1:
            log.write(f"llamantino: attempt {attempt}" + (f": resuming from {resumed}" if resumed else "") + "\n")
        console = ConsoleProgress(echo)  # a live bar on a terminal, lines elsewhere
        for line in proc.stdout:
            log.write(line)
            for part in line.replace("\r", "\n").splitlines():
                shown = progress_line(part)
                if shown:
                    console.feed(shown)
        console.close()
        rc = proc.wait()
    status = finish_run(run, rc, started=started)
    if status.state == JobState.CANCELLED:
        raise LaunchError(f"{run.path} was cancelled (python -m llamantino cancel); relaunch it with "
                          f"python -m llamantino launch {shlex.quote(str(run.path))}")
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise LaunchError(
            f"{command[-2] if len(command) > 1 else command[0]} failed with exit code {rc}; full log: {log_path}\n"
            + "\n".join("  | " + line for line in tail)
        )
    return status
