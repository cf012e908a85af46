"""What a download job runs where there is network: every hub read of the jobs that wait on it.

    python -m llamantino.job.download <cache>/downloads/<key>

Models are fetched whole (``snapshot_download``); datasets are loaded once with ``load_dataset``
so both the hub cache and the datasets cache under HF_HOME hold them for the offline jobs; eval
tasks are resolved by lm-eval's TaskManager, which downloads their datasets. ``done.json`` is
written last.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from llamantino.argparsing import ArgumentParser
from llamantino.errors import DataError, entry
from llamantino.records.rundir import DownloadDir


def fetch_read(read: dict) -> str:
    """Download one hub read; returns what was fetched, for the log and done.json."""
    kind = read["kind"]
    if kind == "model":
        from huggingface_hub import snapshot_download

        return snapshot_download(read["repo"], revision=read.get("revision"))
    if kind == "dataset":
        from datasets import load_dataset

        data = load_dataset(read["repo"], read.get("subset"), split=read.get("split") or "train",
                            revision=read.get("revision"))
        return f"{read['repo']}: {len(data)} rows"
    if kind == "eval_tasks":
        from lm_eval.tasks import TaskManager, get_task_dict

        get_task_dict(list(read["tasks"]), TaskManager())
        return f"eval tasks {', '.join(read['tasks'])}"
    raise DataError(f"unknown hub read kind {kind!r}")


def fetch_all(entry_dir: DownloadDir, echo=print) -> dict:
    fetched = []
    for read in entry_dir.request()["reads"]:
        echo(f"llamantino: downloading {read['kind']} {read.get('repo') or ', '.join(read.get('tasks', []))}")
        try:
            fetched.append({**read, "fetched": fetch_read(read)})
        except Exception as exc:  # noqa: BLE001 - any hub or network failure gets one line naming the read
            what = read.get("repo") or ", ".join(read.get("tasks", []))
            raise DataError(f"could not download {read['kind']} {what} ({exc.__class__.__name__}: {exc}); "
                            "is this partition's network up, and the id and revision right?") from None
    done = {"fetched": fetched, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entry_dir.write(DownloadDir.DONE, done)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.download", description=__doc__.splitlines()[0])
    parser.add_argument("entry", type=Path, help="the download entry (<cache>/downloads/<key>)")
    args = parser.parse_args(argv)
    fetch_all(DownloadDir(args.entry), echo=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
