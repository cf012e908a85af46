"""``python -m llamantino.job.push <release run> --repo-id OWNER/NAME``: upload a release to the Hub.

The folder ``stage=release`` wrote (checked when it was written) goes up with
``HfApi.upload_large_folder``, which resumes an interrupted upload. The token comes from ``HF_TOKEN``
in the environment only and is never written anywhere. Everything that can be checked without
uploading is checked first: the run, the folder, the repository id and branch, the token, and
that the Hub answers; without network the command stops there with one line naming the cause.
``llamantino release <run> --push`` runs this in place, or, on a cluster whose nodes have no
network, as a job on the download partition that waits on the release job.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from llamantino.argparsing import ArgumentParser
from llamantino.errors import ConfigError, entry
from llamantino.records.provenance import OutputKind
from llamantino.records.rundir import RunDir

TOKEN_ENV = "HF_TOKEN"
CONNECT_TIMEOUT_S = 10
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Upload:
    """The one upload call, with every argument it gets (the token stays in the environment)."""

    folder: Path
    repo_id: str
    private: bool
    revision: str | None

    def describe(self) -> str:
        return (f"{self.folder} -> https://huggingface.co/{self.repo_id}"
                + (f" (branch {self.revision})" if self.revision else "") + (" (private)" if self.private else ""))


def plan_upload(run: RunDir, repo_id: str, private: bool = False, revision: str | None = None) -> Upload:
    """Check the release run and the options; the upload it would make."""
    from llamantino.config.schema import check_hub_target

    check_hub_target("--push", repo_id, "--revision", revision)
    if not run.is_run() or run.provenance().output.kind != OutputKind.release:
        raise ConfigError(f"{run.path} is not a release run (stage=release); release a run first: "
                          f"llamantino release <run>")
    status = run.read_status()
    if status is None or not status.state.done:
        raise ConfigError(f"{run.path} has not finished (state: {status.state if status else 'not started'}): "
                          "push it once its release job completed")
    folder = run.output_path()
    card = folder / RunDir.CARD if folder is not None else None
    if card is None or not card.is_file():
        raise ConfigError(f"{run.path} has no release folder with a model card; relaunch it (llamantino launch "
                          f"{run.path} --again)")
    return Upload(folder=folder, repo_id=repo_id, private=private, revision=revision)


def hub_token() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"{TOKEN_ENV} is not set: export {TOKEN_ENV}=<a write token from "
                          "https://huggingface.co/settings/tokens> (llamantino reads it from the environment only)")
    return token


def check_reachable() -> str:
    """The Hub's address, after checking it answers; one ConfigError naming the cause when it cannot."""
    # read now, not when huggingface_hub was imported: the environment of this command is what counts
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        raise ConfigError("HF_HUB_OFFLINE is set: this machine is meant to be offline; push from a machine with "
                          "network, or on a cluster with llamantino release <run> --push (a job on "
                          "hardware.prepare.download_partition)")
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    address = urlparse(endpoint)
    host, port = address.hostname or "", address.port or (443 if address.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Hub at {endpoint} ({exc.strerror or exc}): no network here; push from "
                          "a machine with network (the release folder is complete and can be copied there)") from None
    return endpoint


def upload(plan: Upload, token: str, endpoint: str, echo=print) -> str:
    """Create the repository (and branch) if needed and upload the folder; returns the repository URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        user = api.whoami()
    except HfHubHTTPError as exc:
        raise ConfigError(f"the Hub refused {TOKEN_ENV} ({exc.response.status_code if exc.response is not None else exc});"
                          " use a token with write access") from None
    echo(f"llamantino push: as {user.get('name', '?')}: {plan.describe()}")
    url = api.create_repo(plan.repo_id, repo_type="model", private=plan.private, exist_ok=True)
    if plan.revision:
        api.create_branch(plan.repo_id, branch=plan.revision, repo_type="model", exist_ok=True)
    api.upload_large_folder(repo_id=plan.repo_id, folder_path=plan.folder, repo_type="model", revision=plan.revision,
                            private=plan.private, print_report=False)
    return str(url)


def push_release(run: RunDir, repo_id: str, private: bool = False, revision: str | None = None, echo=print) -> str:
    plan = plan_upload(run, repo_id, private, revision)
    token = hub_token()
    url = upload(plan, token, check_reachable(), echo)
    echo(f"llamantino push: done: {url}" + (f" (branch {revision})" if revision else ""))
    return url


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.push", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None)
    args = parser.parse_args(argv)
    push_release(RunDir(args.run_dir.resolve()), args.repo_id, args.private, args.revision,
                 echo=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
