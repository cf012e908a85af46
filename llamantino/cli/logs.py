"""``python -m llamantino logs <run dir> [-f]``: the logs of a run's current job.

A SLURM run: its latest job's batch output (``logs/<job name>-<job id>.out``), then
``logs/train.log`` where the stage writes; a local run: ``logs/train.log``. At most the last MiB of
each is printed. ``-f`` keeps printing what they grow by until the job ends (SLURM: no longer
queued or running; local: its process is gone), then exits 0.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino logs", description=__doc__)
    parser.add_argument("run", type=Path, help="a run directory (a step of a pipeline, a point of a sweep)")
    parser.add_argument("-f", "--follow", action="store_true", help="follow the logs until the run's job ends")
    args = parser.parse_args(argv)
    from llamantino.reports.logs import show_logs

    if not show_logs(args.run, follow=args.follow):
        print(f"{args.run} has no log yet")
    return 0
