"""``python -m llamantino search``: an Optuna study over the same overrides as a sweep.

    llamantino search <overrides and dimensions> --trials N [--batch K] [--objective eval_loss]
                      [--direction minimize|maximize] [--sampler tpe|random|cmaes|gp] [--seed S]
                      [--pruner none|median] [--name NAME]
    llamantino search --resume <study dir>
    llamantino search --report <study dir>

A dimension is an override in Hydra's sweep syntax: ``'stage.learning_rate=tag(log,interval(1e-5,1e-3))'``
(a float on a log scale), ``stage.lora_r=choice(8,16,64)`` or ``stage.lora_r=8,16,64`` (a choice),
``'stage.num_epochs=range(1,4)'`` (1, 2, 3), ``'tag(int,interval(8,64))'`` (an integer). Every
other override is shared by all trials. The objective is the final value of a metric the trainer
logs: ``eval_loss`` (the default; needs ``stage.val_set_size``), ``loss``, and for DPO
``eval_rewards/accuracies`` or ``eval_rewards/margins`` (maximised).

Each batch of K trials is asked at once and run as one sweep: with ``launcher=slurm`` one job array,
and a small CPU job that waits on it (afterany) tells Optuna the results, asks the next batch and
submits it, so nothing is left running on the login node; with ``launcher=local`` the command runs
the whole study here. The study directory (``<run.output_root>/studies/<name>-<time>``) holds
study.json, Optuna's journal (a file: safe on a shared file system, no database server) and one sweep
directory per batch; ``status``, ``collect``, ``cancel`` and ``runs`` take it like a sweep.
``--resume`` continues a study after a cancel or a crash (interrupted trials resume from their last
checkpoint, finished ones are not run again); ``--report`` prints every trial and the best, and
writes Optuna's plots (PNG) and the best point as a shareable recipe into ``<study>/report/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llamantino.argparsing import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino search", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arguments", nargs="*", metavar="override",
                        help="shared overrides (key=value) and search dimensions (key=interval(...), choice(...), ...)")
    parser.add_argument("--trials", type=int, help="the budget: trials run in all (required for a new study)")
    parser.add_argument("--batch", type=int, default=4, help="trials asked and run together, one job array (default 4)")
    parser.add_argument("--objective", default="eval_loss", help="the metric whose final value is optimised "
                                                                 "(default eval_loss)")
    parser.add_argument("--direction", choices=("minimize", "maximize"),
                        help="default: minimize for losses, maximize for DPO's reward metrics")
    parser.add_argument("--sampler", default="tpe", help="tpe (default), random, cmaes or gp; seeded by --seed")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    parser.add_argument("--pruner", default="none", help="none (default) or median: stop a trial whose eval "
                                                         "objective is worse than the median of the trials before "
                                                         "it at the same step")
    parser.add_argument("--name", help="the study's name (default: the run name)")
    parser.add_argument("--resume", type=Path, metavar="STUDY", help="continue a study after a cancel or a crash")
    parser.add_argument("--report", type=Path, metavar="STUDY", help="the best trial, every trial, plots and the best "
                                                                     "point as a recipe")
    parser.add_argument("--step", type=Path, metavar="STUDY", help=argparse.SUPPRESS)  # the tell-and-ask job's command
    args = parser.parse_intermixed_args(argv)
    if args.step:
        from llamantino.search.start import step

        step(args.step, lambda line: print(line, flush=True))
        return 0  # overrides may come before or after the options
    existing = args.resume or args.report
    if args.resume and args.report:
        parser.error("--resume and --report take one study each; give one of them")
    if existing is not None:
        given = [name for name, value in (("overrides", args.arguments), ("--trials", args.trials),
                                          ("--name", args.name)) if value]
        if given:
            parser.error(f"{'--resume' if args.resume else '--report'} continues or reads a study as it was written; "
                         f"{given[0]} cannot change it (start a new study instead)")
    if args.report:
        from llamantino.records.rundir import StudyDir
        from llamantino.search.report import format_report, write_report

        print(format_report(write_report(StudyDir(args.report.resolve()))))
        return 0
    if args.resume:
        from llamantino.search.start import resume

        resume(args.resume)
        return 0
    if args.trials is None:
        parser.error("--trials N is required: the study's budget of trials")
    from llamantino.search.start import SearchRequest, new_study

    new_study(SearchRequest(arguments=list(args.arguments), trials=args.trials, batch=args.batch,
                            objective=args.objective, direction=args.direction, sampler=args.sampler,
                            seed=args.seed, pruner=args.pruner, name=args.name))
    return 0
