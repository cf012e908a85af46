"""``llamantino plan <overrides and dimensions> --trials N [--batch K]``: what a study would cost.

A trial's cost depends on the values it takes (epochs, sequence length, batch size), so every
corner of the space that can matter is planned: all lower bounds, all upper bounds, and each bound
and choice alone with the other values at the shared config's. The study is billed as ``--trials``
times the costliest of them (an upper bound: the sampler decides which values run). Its wall clock
is its batches one after the other, each one job array of ``launcher.array_parallelism`` at once,
plus the corpus or rows prepared once; the tell-and-ask job between batches (one CPU, seconds to a
minute) and queue waits are not counted.
"""

from __future__ import annotations

import math

from llamantino.errors import LlamantinoError
from llamantino.search.space import bounds, override_value


def corners(space) -> list[list[str]]:
    """The overrides of each corner planned: all low, all high, then each bound or choice alone."""
    def edge(dimension, high: bool) -> str:
        if dimension.kind == "categorical":
            return f"{dimension.key}={dimension.choices[-1 if high else 0]}"
        return override_value(dimension, dimension.high if high else dimension.low)

    found = [[edge(d, False) for d in space], [edge(d, True) for d in space]]
    found += [[bound] for d in space for bound in bounds(d)]
    unique = []
    for corner in found:
        if corner not in unique:
            unique.append(corner)
    return unique


def plan_study(arguments: list[str], trials: int, batch: int, mfu=None, tokens_per_row: int | None = None) -> dict:
    from llamantino.config.compose import compose_config
    from llamantino.orchestrate.costs import given_mfu, plan_job
    from llamantino.orchestrate.plans import _totals, array_schedule
    from llamantino.search.start import SearchRequest, check_request

    mfu = given_mfu(mfu)
    overrides, space, cfg, _ = check_request(SearchRequest(arguments=list(arguments), trials=trials, batch=batch))
    planned = []
    for corner in corners(space):
        try:
            jobs = plan_job(compose_config([*overrides, *corner]), mfu, tokens_per_row)
        except LlamantinoError as exc:
            raise type(exc)(f"the space's corner {' '.join(corner)}: {exc}") from None
        planned.append({"overrides": corner, "job": jobs[-1], "prepare": jobs[:-1]})
    costliest = max(planned, key=lambda item: (item["job"]["gpu_hours"], item["job"]["wall_clock_hours"]))
    job = costliest["job"]
    slots = max(1, cfg.launcher.array_parallelism)
    batches = math.ceil(trials / batch)
    sizes = [batch] * (trials // batch) + ([trials % batch] if trials % batch else [])
    array_hours = sum(array_schedule([job["wall_clock_hours"]] * size, slots) for size in sizes)
    prepare = max((item["prepare"] for item in planned), key=len)
    prepare_hours = max((step["wall_clock_hours"] for step in prepare), default=0.0)
    totals = _totals(prepare + [job] * trials)
    totals["wall_clock_hours"] = prepare_hours + array_hours
    return {"kind": "study", "mfu": mfu.as_dict(), "trials": trials, "batch": batch, "batches": batches,
            "array_parallelism": slots, "corners": [{"overrides": item["overrides"], "wall_clock_hours":
                                                     item["job"]["wall_clock_hours"], "gpu_hours": item["job"]["gpu_hours"],
                                                     "budget_hours": item["job"]["budget_hours"]} for item in planned],
            "costliest": costliest["overrides"], "trial": job, "prepare": prepare, "totals": totals,
            "space": [d.text for d in space]}


def format_study_plan(result: dict) -> str:
    from llamantino.orchestrate.costs import format_plan

    totals, job = result["totals"], result["trial"]
    lines = [f"plan: study of {result['trials']} trials in {result['batches']} batches of at most {result['batch']} "
             f"(one job array each, {result['array_parallelism']} at once) over {', '.join(result['space'])}",
             f"  {'corner':58} {'wall h':>9} {'GPU h':>10} {'budget':>11}"]
    for corner in result["corners"]:
        mark = " <- costliest" if corner["overrides"] == result["costliest"] else ""
        lines.append(f"  {' '.join(corner['overrides'])[:58]:58} {corner['wall_clock_hours']:9,.2f} "
                     f"{corner['gpu_hours']:10,.2f} {corner['budget_hours']:11,.0f}{mark}")
    units = ", ".join(f"{hours:,.0f} {unit}" for unit, hours in totals["budget_by_unit"].items())
    lines += [f"  study         {result['trials']} x the costliest trial: {totals['gpu_hours']:,.2f} GPU h, budget "
              f"{units} (an upper bound: the sampler picks the values)",
              f"  wall clock    {totals['wall_clock_hours']:,.2f} h: the batches one after the other"
              + (f", after {result['prepare'][0]['wall_clock_hours']:,.2f} h preparing" if result["prepare"] else "")
              + "; the tell-and-ask jobs between batches and queue waits not counted",
              "the costliest trial:", format_plan(job)]
    return "\n".join(lines)
