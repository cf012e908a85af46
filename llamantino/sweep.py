"""Hydra multirun: one run directory per point; with ``launcher=slurm``, ONE job array per sweep.

Each point is composed, rendered, validated and written by the normal single-run path, which
hands it here instead of submitting it. When the whole sweep is ready, ``on_multirun_end`` writes
``sweep.json`` and submits a single job array (``--array=0-N%K``, K = launcher.array_parallelism)
whose task i runs point i, and returns without waiting. If any point fails its checks, nothing is
submitted and the points already written are removed (dry and slurm sweeps), so a failed sweep
leaves nothing half-done.
"""

from __future__ import annotations

import atexit
import json
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

_POINTS: list[dict] = []


def register_point(prepared) -> None:
    """Called by the single-run path for each written multirun point."""
    from hydra.core.hydra_config import HydraConfig

    _POINTS.append({"index": HydraConfig.get().job.num, "prepared": prepared})


class SweepCallback(Callback):
    """Hydra callback named in conf/config.yaml (the only `_target_` llamantino instantiates)."""

    def __init__(self) -> None:
        self._finished = True
        self._sweep_dir: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _POINTS.clear()
        self._finished = False
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        atexit.register(self._remove_unfinished)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        points = sorted(_POINTS, key=lambda point: point["index"])
        if not points:
            self._finished = True
            return
        sweep_dir = self._sweep_dir
        first = points[0]["prepared"]
        record = {
            "launcher": first.cfg["launcher"]["name"],
            "points": [{"index": p["index"], "run_dir": p["prepared"].run_dir.name,
                        "overrides": p["prepared"].provenance["overrides"]} for p in points],
        }
        launcher = first.cfg["launcher"]
        if launcher["name"] == "slurm" and launcher["submit"]:
            record["job_id"] = submit_array(sweep_dir, [p["prepared"] for p in points], launcher["array_parallelism"])
            print(f"submitted job array {record['job_id']} ({len(points)} points, at most "
                  f"{launcher['array_parallelism']} at once): python -m llamantino.status {sweep_dir}")
        (sweep_dir / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
        self._finished = True
        print(f"run_dir: {sweep_dir}")

    def _remove_unfinished(self) -> None:
        """atexit: a sweep that stopped before submitting removes the points it wrote."""
        if self._finished or not _POINTS:
            return
        if _POINTS[0]["prepared"].cfg["launcher"]["name"] == "local":
            return  # trained points are real work: keep them
        for point in _POINTS:
            shutil.rmtree(point["prepared"].run_dir, ignore_errors=True)
        if self._sweep_dir and self._sweep_dir.is_dir():
            leftovers = {p.name for p in self._sweep_dir.iterdir()}
            if leftovers <= {"multirun.yaml", "logs"}:
                shutil.rmtree(self._sweep_dir, ignore_errors=True)


def submit_array(sweep_dir: Path, prepared: list, parallelism: int) -> str:
    """Render one job array over the points and submit it; returns the array's job id."""
    from llamantino.errors import LaunchError
    from llamantino.launch.slurm import job_resources, job_script, record_job, sbatch

    if len({job_resources(p) for p in prepared}) != 1:
        raise LaunchError("the points of this sweep need different SLURM resources or commands (nodes, time, "
                          "stage); a job array is uniform: sweep those settings in separate runs")
    names = [p.run_dir.name for p in prepared]
    script = sweep_dir / "job-array.sbatch"
    (sweep_dir / "logs").mkdir(exist_ok=True)
    script.write_text(job_script(prepared[0], run_dirs=names, array=f"0-{len(names) - 1}%{max(int(parallelism), 1)}"))
    job_id = sbatch(script)
    for index, p in enumerate(prepared):
        record_job(p.run_dir, f"{job_id}_{index}", array=job_id)
    return job_id
