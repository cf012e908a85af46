"""Plans of what a command would submit: one stage, a pipeline's steps, a sweep's points; MFU calibration.

``python -m llamantino plan`` composes the same configs the main command would (a pipeline's steps
with :func:`~llamantino.orchestrate.pipeline.composed_steps`, a ``-m`` sweep's points with Hydra's
own sweeper), writes nothing, and plans each job with :mod:`llamantino.orchestrate.costs`. A sweep's
points run as one job array throttled to ``launcher.array_parallelism`` at once (and to what the
QoS's node limit holds), which gives the sweep's wall clock. ``--calibrate <run>`` measures the MFU
of a finished training run from its trainer's records, on its own hardware's peak.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path

from llamantino.config.compose import compose_config
from llamantino.config.schema import LlamantinoConfig
from llamantino.errors import ConfigError, LlamantinoError, RunDirError, one_line, user_error
from llamantino.orchestrate.costs import Mfu, flops_factor, given_mfu, plan_job, row_tokens, trained_tokens
from llamantino.stages import stage_for

SUMMED = ("gpu_hours", "node_hours", "budget_hours")


def _composed(overrides: list[str], where: str) -> LlamantinoConfig:
    """A config composed for planning; errors named by the step or point they come from."""
    try:
        return compose_config(overrides)
    except LlamantinoError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors, named; bugs re-raised
        message = user_error(exc)
        if message is None:
            raise
        raise ConfigError(f"{where}: {one_line(message)}") from None


def _named(error: LlamantinoError, where: str) -> LlamantinoError:
    return type(error)(f"{where}: {error}")


def _totals(jobs: list[dict]) -> dict:
    totals = {key: sum(job[key] for job in jobs) for key in SUMMED}
    totals["wall_clock_hours"] = sum(job["wall_clock_hours"] for job in jobs)  # one after the other
    units = sorted({job["budget_unit"] for job in jobs})
    totals["budget_by_unit"] = {unit: sum(job["budget_hours"] for job in jobs if job["budget_unit"] == unit)
                                for unit in units}
    return totals


def plan_command(overrides: list[str], *, multirun: bool = False, mfu: float | Mfu | None = None,
                 tokens_per_row: int | None = None) -> dict:
    """What the main command with these overrides would submit, planned: ``kind`` stage, pipeline or sweep."""
    mfu = given_mfu(mfu)
    if multirun:
        return plan_sweep(overrides, mfu, tokens_per_row)
    cfg = _composed(overrides, "plan")
    if cfg.pipeline is not None:
        return plan_pipeline(cfg, overrides, mfu, tokens_per_row)
    jobs = plan_job(cfg, mfu, tokens_per_row)
    for job in jobs:
        job["step"] = job["stage"]
    return {"kind": "stage", "mfu": mfu.as_dict(), "steps": jobs, "totals": _totals(jobs)}


def plan_pipeline(cfg: LlamantinoConfig, overrides: list[str], mfu: Mfu, tokens_per_row: int | None = None) -> dict:
    """Every step of a pipeline as its own job(s), in order, and their sum (the steps run one after the other)."""
    from llamantino.orchestrate.pipeline import composed_steps, step_overrides

    jobs, prepared = [], set()
    for step, base, own in composed_steps(cfg, overrides, step_overrides(cfg, overrides)):
        where = f"pipeline step {step.name}"
        step_cfg = _composed(base + own, where)
        try:
            planned = plan_job(step_cfg, mfu, tokens_per_row)
        except LlamantinoError as exc:
            raise _named(exc, where) from None
        for job in planned:
            if job["kind"] == "prepare":
                if job["entry"] in prepared:  # one shared cache entry: prepared once
                    continue
                prepared.add(job["entry"])
            job["step"] = f"{step.name}:prepare" if job["kind"] == "prepare" else step.name
            jobs.append(job)
    return {"kind": "pipeline", "pipeline": cfg.pipeline.name, "description": cfg.pipeline.description,
            "mfu": mfu.as_dict(), "steps": jobs, "totals": _totals(jobs)}


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The points of ``-m`` overrides, as Hydra's basic sweeper expands them (a,b,c: one point each)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        return BasicSweeper.split_arguments(parsed, None)[0]
    except Exception as exc:  # noqa: BLE001 - Hydra's parse and sweep errors, in one line
        message = user_error(exc)
        if message is None:
            raise
        raise ConfigError(f"-m {' '.join(overrides)}: {one_line(message)}") from None


def array_schedule(hours: list[float], slots: int) -> float:
    """The wall clock of a job array whose tasks start in index order on ``slots`` slots."""
    free = [0.0] * max(1, slots)
    end = 0.0
    for length in hours:
        start = heapq.heappop(free)
        end = max(end, start + length)
        heapq.heappush(free, start + length)
    return end


def plan_sweep(overrides: list[str], mfu: Mfu, tokens_per_row: int | None = None) -> dict:
    """Each point planned; the points run as one job array of ``launcher.array_parallelism`` at once."""
    points, prepare, seen = [], [], set()
    for index, point in enumerate(sweep_points(overrides)):
        where = f"sweep point {index} ({' '.join(point)})"
        cfg = _composed(point, where)
        if cfg.pipeline is not None:
            raise ConfigError("a sweep of pipelines is not supported (the main command refuses it too): sweep "
                              "single stages, or plan one pipeline per setting")
        try:
            jobs = plan_job(cfg, mfu, tokens_per_row)
        except LlamantinoError as exc:
            raise _named(exc, where) from None
        for job in jobs:
            job["step"] = f"{index:03d}" + (":prepare" if job["kind"] == "prepare" else "")
            if job["kind"] == "prepare" and job["entry"] not in seen:  # one shared entry, before the array
                seen.add(job["entry"])
                prepare.append(job)
        points.append({"index": index, "overrides": list(point), "cfg": cfg, "job": jobs[-1]})
    first = points[0]["cfg"]
    parallel = first.launcher.array_parallelism
    hw = first.hardware
    qos = hw.slurm.qos
    limit = hw.slurm.qos_limits.get(qos) if qos else None
    nodes = max(point["job"]["nodes"] for point in points)
    by_qos = limit.max_nodes // nodes if limit else None
    slots = max(1, min(parallel, by_qos) if by_qos is not None else parallel)
    # A point that needs requeues runs its jobs one after the other in its array slot.
    array_hours = array_schedule([point["job"]["wall_clock_hours"] for point in points], slots)
    prepare_hours = max((job["wall_clock_hours"] for job in prepare), default=0.0)
    jobs = prepare + [point["job"] for point in points]
    totals = _totals(jobs)
    totals["wall_clock_hours"] = prepare_hours + array_hours
    return {
        "kind": "sweep", "mfu": mfu.as_dict(), "points": len(points), "steps": jobs, "totals": totals,
        "overrides": [point["overrides"] for point in points],
        "array": {"parallel": slots, "array_parallelism": parallel, "qos": qos,
                  "qos_max_nodes": limit.max_nodes if limit else None, "nodes_per_point": nodes,
                  "wall_clock_hours": array_hours, "prepare_hours": prepare_hours,
                  "rule": (f"one job array, %{slots} at once: launcher.array_parallelism={parallel}"
                           + (f", QoS {qos}'s {limit.max_nodes} nodes / {nodes} per point = {by_qos}" if limit else "")
                           + (" (the QoS's max_nodes taken as what a user's jobs hold at once)" if limit else "")
                           + "; queue waits not counted")},
    }


# --- calibration -------------------------------------------------------------------------------


def _measured(value, what: str, path: Path, upper: float) -> float:
    """A number read back from a run's records: finite, positive and below ``upper``, else one line naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value < upper:
        raise RunDirError(f"{path}: {what}={value!r} is not a measurement (expected a positive number below "
                          f"{upper:g}); the run's records are damaged: calibrate with another finished run")
    return float(value)


def calibrate(path: str | Path) -> Mfu:
    """The MFU a finished training run achieved: its trainer's tokens/s x the planner's FLOPs per token
    / (its own hardware's peak x its GPUs). Everything read from the run is untrusted."""
    from llamantino.records.curves import run_metrics
    from llamantino.records.jobstate import JobState
    from llamantino.records.rundir import RunDir

    run = RunDir(Path(path).resolve())
    if not run.is_run():
        raise ConfigError(f"--calibrate {path}: not a llamantino run directory (no {RunDir.PROVENANCE}); give a "
                          "finished training run's directory")
    cfg = run.config()
    provenance = run.provenance()
    if not stage_for(cfg).costed:
        raise ConfigError(f"--calibrate {path}: a {cfg.stage.name} run does not train; give a finished training run")
    status = run.read_status()
    if status is None or status.state != JobState.COMPLETED:
        raise ConfigError(f"--calibrate {path}: the run has not completed ({status.state if status else 'no status.json'}); "
                          "calibrate with a finished run")
    hw = cfg.hardware
    if not hw.gpu or not hw.peak_tflops:
        raise ConfigError(f"--calibrate {path}: the run trained on hardware {hw.name}, which has no GPU peak "
                          f"(hardware.peak_tflops={hw.peak_tflops:g}), so its MFU cannot be measured; calibrate with "
                          "a run trained on GPU hardware")
    method = provenance.method
    kind = (method.adapter if method else None) or "full"
    nodes = method.nodes if method else hw.nodes
    gpus = nodes * hw.gpus_per_node
    per_row = row_tokens(cfg.stage)
    metrics = run_metrics(run)
    if metrics.get("train_samples_per_second"):
        rate = _measured(metrics["train_samples_per_second"][-1][1], "train_samples_per_second",
                         run.path / RunDir.OUTPUT / "runs (the trainer's TensorBoard records)", 1e9)
        tokens_per_s = rate * per_row
        detail = f"trainer's train_samples_per_second {rate:,.4g} x {per_row} tokens per row"
    else:
        elapsed = _measured(status.elapsed_s, "elapsed_s", run.path / RunDir.STATUS, 1e9)
        tokens = trained_tokens(cfg)
        tokens_per_s = tokens / elapsed
        detail = f"{tokens:,.0f} planned tokens / {elapsed:,.0f} s elapsed (status.json; start-up included)"
    factor, text = flops_factor(cfg, kind)
    value = factor * cfg.model.active_b * 1e9 * tokens_per_s / (hw.peak_tflops * 1e12 * gpus)
    if not 0 < value <= 1:
        raise RunDirError(f"--calibrate {path}: the records give an MFU of {value:.3g} ({tokens_per_s:,.4g} tokens/s of "
                          f"{cfg.model.name} on {gpus} x {hw.peak_tflops:g} TFLOP/s), outside (0, 1]: the run's records "
                          "do not describe this run; calibrate with another finished run")
    return Mfu(value, "calibrated", tokens_per_s=tokens_per_s, run=str(run.path),
               detail=(f"{tokens_per_s:,.4g} tokens/s measured: {detail}; {text} of {cfg.model.active_b:g}B{' active' if cfg.model.experts else ''} on "
                       f"{gpus} x {hw.peak_tflops:g} TFLOP/s of {hw.name}, method {kind}"))


# --- output --------------------------------------------------------------------------------------


def _shape(job: dict) -> str:
    if job["kind"] == "prepare":
        return f"{job['tasks']} task{'s' if job['tasks'] != 1 else ''} x {job['cpus_per_node']} cores"
    gpus = f"x{job['gpus_per_node']} GPU" if job["gpus_per_node"] else " node, no GPU"
    return f"{job['nodes']}{gpus}, {job['cpus_per_node']} CPUs"


def format_command_plan(result: dict) -> str:
    """A table of the jobs, then the totals, then how each line was computed and the notices."""
    from llamantino.orchestrate.costs import format_plan

    jobs = result["steps"]
    if result["kind"] == "stage" and jobs[-1]["trains"]:  # one train stage: in detail
        return "\n".join([format_plan(jobs[-1])] + [
            f"  prepare       {job['wall_clock_hours']:,.2f} h on {job['partition']}: {job['formula']}; billed "
            f"{_billing_text(job)}" for job in jobs[:-1]])
    title = {"stage": f"plan: {jobs[-1]['stage']} of {jobs[-1]['model']} on {jobs[-1]['hardware']}",
             "pipeline": f"plan: pipeline {result.get('pipeline')} ({result.get('description', '')})",
             "sweep": f"plan: sweep of {result.get('points')} points"}[result["kind"]]
    header = (f"  {'step':16} {'kind':8} {'job shape':24} {'partition':16} {'wall h':>9} {'GPU h':>10} "
              f"{'billed':>10} {'budget':>11}")
    lines = [title, header]
    for job in jobs:
        billed = "per core" if job["node_share"] is None else f"{job['node_share']:.0%} node"
        lines.append(f"  {job['step'][:16]:16} {job['kind']:8} {_shape(job)[:24]:24} {str(job['partition'] or '-')[:16]:16} "
                     f"{job['wall_clock_hours']:9,.2f} {job['gpu_hours']:10,.2f} {billed:>10} {job['budget_hours']:11,.0f}")
    totals = result["totals"]
    lines.append(f"  {'total':16} {'':8} {'':24} {'':16} {totals['wall_clock_hours']:9,.2f} {totals['gpu_hours']:10,.2f} "
                 f"{'':>10} {sum(totals['budget_by_unit'].values()):11,.0f}")
    lines += [f"  budget        {hours:,.0f} {unit}" for unit, hours in totals["budget_by_unit"].items()]
    if result["kind"] == "sweep":
        array = result["array"]
        lines.append(f"  sweep         {result['points']} points x their cost; wall clock {totals['wall_clock_hours']:,.1f} h "
                     f"= {array['prepare_hours']:,.1f} h preparing + {array['wall_clock_hours']:,.1f} h of the array "
                     f"({array['rule']})")
        lines += [f"  point {point:03d}     {' '.join(overrides)}" for point, overrides in enumerate(result["overrides"])]
    elif result["kind"] == "pipeline":
        lines.append("  wall clock    the steps one after the other (afterok), queue waits not counted")
    train = [job for job in jobs if job["trains"]]
    if train:
        lines += [f"  MFU           {job['step']}: {job['mfu']:.{0 if job['mfu'] >= 0.01 else 3}%} of "
                  f"{job['peak_tflops_per_gpu']:g} TFLOP/s per GPU, {job['mfu_source']}" for job in train]
    lines.append("how:")
    for job in jobs:
        if job["trains"]:
            lines.append(f"  {job['step']:16} {job['tokens']:.3e} tokens = {job['tokens_formula']}; {job['formula']}"
                         + ("" if job["jobs"] == 1 else f"; {job['jobs']} jobs of {job['time_limit']} (requeued)"))
        else:
            lines.append(f"  {job['step']:16} {job['formula']}")
        lines.append(f"  {'':16} billed {_billing_text(job)}")
    for job in jobs:
        lines += [f"  notice        {job['step']}: {notice}" for notice in job["notices"]]
    return "\n".join(lines)


def _billing_text(job: dict) -> str:
    if job["node_share"] is None:
        return f"{job['budget_hours']:,.1f} {job['budget_unit']} (cores x hours, no GPU)"
    share = "whole nodes" if job["node_share"] >= 1 else f"{job['node_share']:.0%} of a node"
    return (f"{share} by its {job['billed_by']}: {job['wall_clock_hours']:,.2f} h x {job['nodes']} node(s) x "
            f"{job['node_share']:.2g} = {job['budget_hours']:,.1f} {job['budget_unit']}")
