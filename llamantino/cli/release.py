"""``llamantino release <run or pipeline> [--push OWNER/NAME]``: a model as a Hub repository.

Given a release run (``stage=release``, or a pipeline whose last step is one) it shows the release
folder, or with ``--push`` uploads it (``HF_TOKEN`` from the environment; on a SLURM cluster whose
nodes have no network, or while the release job still runs, a push job that waits on it). Given an
eval run or a trained or merged run, it first writes and runs ``stage=release`` on it here (Hydra
overrides after the run apply to that release: ``release.what=adapter``), then pushes if asked.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.argparsing import ArgumentParser
from llamantino.errors import ConfigError

RECORDED = "<release.repo_id>"  # --push given alone: the repository the release recorded


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino release", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="a release run, a pipeline with a release step, or an eval, "
                                                  "trained or merged run to release")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of a new release (release.what=adapter, ...)")
    parser.add_argument("--push", metavar="REPO_ID", nargs="?", const=RECORDED, default=None,
                        help="upload to this Hub repository (owner/name); alone: the release's release.repo_id")
    parser.add_argument("--private", action="store_true", help="with --push: create the repository private")
    parser.add_argument("--revision", metavar="BRANCH", default=None, help="with --push: a branch instead of main")
    args = parser.parse_args(argv)
    if (args.private or args.revision) and not args.push:
        raise ConfigError("--private and --revision go with --push REPO_ID")
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        raise ConfigError(f"{bad[0]!r} is not an override (key=value); e.g. release.what=adapter")
    if args.push:
        from llamantino.config.schema import check_hub_target
        from llamantino.job.push import hub_token

        check_hub_target("--push", None if args.push is RECORDED else args.push, "--revision", args.revision)
        hub_token()  # refused before anything is written or run
    from llamantino.orchestrate.release import release_run

    run = release_run(args.target, args.overrides)
    from llamantino.records.rundir import RunDir

    folder = run / RunDir.RELEASE
    if not args.push:
        print(f"release: {folder}\npush it: llamantino release {run.path} --push <owner>/<name>")
        return 0
    from llamantino.launchers import launcher_for
    from llamantino.orchestrate.release import push_target

    target = push_target(run, None if args.push is RECORDED else args.push, args.private, args.revision)
    launcher_for(run.config()).push(run, *target)
    return 0
