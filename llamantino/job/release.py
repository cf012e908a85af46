"""``python -m llamantino.job.release <release run dir>``: write a trained model as a Hub model repository.

The job of ``stage=release`` (llamantino/stages/release.py writes its plan, ``release.json``). It
writes ``release/``: the model as sharded safetensors (an adapter merged into its base, in the base's
dtype) or the adapter alone (``release.what=adapter``); the tokenizer, chat template and
``generation_config.json`` of the released run's output, as they are; a model card (``README.md``)
whose ``model-index`` holds the eval runs' scores, with the lineage, the licences of the base model
and of every dataset (a non-commercial one in bold, and as a ``notice:`` line of the job), how to
use the model and how to make it again; and ``LICENSE`` when the base's licence is no Hub licence id.

Nothing in the folder names this machine: machine paths in the copied JSON files are replaced or
removed, and every text file is scanned for absolute paths, the home folder, the run directories and
the user name. The folder is built beside ``release/`` and renamed into place only after
huggingface_hub's own parser reads the card back with the same scores and the configs and the
tokenizer load; a failure leaves nothing behind (an earlier ``release/`` stays until replaced).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from llamantino.argparsing import ArgumentParser
from llamantino.config.schema import ReleaseWhat
from llamantino.errors import RunDirError, entry
from llamantino.job.generation import CHAT_TEMPLATE, GENERATION_CONFIG, TOKENIZER_CONFIG
from llamantino.job.machine_paths import REMOVE, TOKENIZER_JSON, check_no_machine_paths, machine_places, scrub_files
from llamantino.job.release_card import LICENSE_FILE, Scored, card_data, eval_results, licence_lines, model_licence, \
    render_card, stop_tokens
from llamantino.job.release_runs import Step, adapter_base_name, completed, root_hub_id
from llamantino.records.files import MAX_STATE_BYTES, leftover_suffix, load_json, remove_leftovers, \
    removed_unless_finished, write_text
from llamantino.records.manifests import ReleasePlan
from llamantino.records.provenance import OutputKind
from llamantino.records.rundir import RunDir

TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, CHAT_TEMPLATE, "special_tokens_map.json", "tokenizer.model")
MODEL_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors")
SHARD_INDEX = "model.safetensors.index.json"
TEXT_SUFFIXES = (".json", ".md", ".jinja", ".txt", ".yaml", ".yml")


def say(text: str) -> None:
    print(f"llamantino release: {text}", flush=True)


# --- the plan ----------------------------------------------------------------------------------------


def read_plan(run: RunDir) -> ReleasePlan:
    plan = run.release_plan()
    where = run / RunDir.RELEASE_PLAN
    if plan.what not in set(ReleaseWhat):
        raise RunDirError(f"{where}: what={plan.what!r} must be one of {', '.join(ReleaseWhat)}")
    if plan.output_kind not in (OutputKind.adapter, OutputKind.model):
        raise RunDirError(f"{where}: output_kind={plan.output_kind!r} must be adapter or model")
    if plan.what == ReleaseWhat.adapter and plan.output_kind != OutputKind.adapter:
        raise RunDirError(f"{where}: what=adapter, but the released run's output is a {plan.output_kind}")
    if not plan.lineage or plan.lineage[-1] != plan.model_run:
        raise RunDirError(f"{where}: lineage must end at model_run ({plan.model_run})")
    try:
        from huggingface_hub.serialization._base import parse_size_to_int

        parse_size_to_int(plan.max_shard_size)
    except ValueError as exc:
        raise RunDirError(f"{where}: max_shard_size={plan.max_shard_size!r}: {exc}") from None
    return plan


def base_of(run: RunDir, model_run: Step) -> tuple[str, str | None]:
    """(where to load the adapter's base from, its revision): the run's ``inputs/base_model`` link,
    else what the adapter's record names (a hub id, or the base's folder)."""
    link = run / RunDir.MODEL_LINK
    if os.path.lexists(link):
        return str(link), None
    base = model_run.provenance.output.base_model
    if base is None:
        raise RunDirError(f"{model_run.run / RunDir.PROVENANCE}: output.base_model is not recorded; "
                          "the adapter's base is unknown")
    return (base.local, None) if base.local else (base.ref, base.revision)


# --- files -------------------------------------------------------------------------------------------


def copy_regular(source: Path, target: Path) -> None:
    """Copy a regular file (a link or anything else at ``source`` is refused)."""
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        raise RunDirError(f"{source} not found; the released run's output is incomplete") from None
    if not stat.S_ISREG(info.st_mode):
        raise RunDirError(f"{source} is not a regular file; a release copies only the files the run wrote")
    shutil.copyfile(source, target, follow_symlinks=False)


def write_weights(plan: ReleasePlan, run: RunDir, model_run: Step, source: Path, staging: Path) -> None:
    """The adapter's files (what=adapter), else the model as safetensors shards of max_shard_size."""
    adapter = run / RunDir.ADAPTER_LINK if os.path.lexists(run / RunDir.ADAPTER_LINK) else source
    if plan.what == ReleaseWhat.adapter:
        say(f"copying the adapter of {model_run.name}")
        for name in ADAPTER_FILES:
            copy_regular(adapter / name, staging / name)
        return
    from transformers import AutoModelForCausalLM

    if plan.output_kind == OutputKind.adapter:
        base, revision = base_of(run, model_run)
        say(f"loading the base model {adapter_base_name(model_run)[0]} in its own dtype")
        model = AutoModelForCausalLM.from_pretrained(base, revision=revision, dtype="auto")
        from peft import PeftModel

        say(f"merging the adapter of {model_run.name}")
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    else:
        folder = run / RunDir.MODEL_LINK if os.path.lexists(run / RunDir.MODEL_LINK) else source
        say(f"loading the model of {model_run.name}")
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto")
    say(f"writing safetensors shards of at most {plan.max_shard_size}")
    model.save_pretrained(str(staging), max_shard_size=plan.max_shard_size)


def copy_tokenizer(source: Path, staging: Path) -> None:
    """The tokenizer files and generation settings of the released output, as they are (a finished
    run's output carries its chat template and stop tokens: llamantino/job/generation.py)."""
    copied = []
    for name in (*TOKENIZER_FILES, GENERATION_CONFIG):
        if os.path.lexists(source / name):
            copy_regular(source / name, staging / name)
            copied.append(name)
    if TOKENIZER_CONFIG not in copied:
        raise RunDirError(f"{source} has no {TOKENIZER_CONFIG}: the released run's output has no tokenizer to ship")
    say(f"copied {', '.join(copied)}")


# --- what the machine-path scrub and check see -------------------------------------------------------


def json_settings(model_run: Step) -> dict[str, dict]:
    """The top-level keys of the copied JSON files that say how this machine loaded them, not what they
    are: dropped (the adapter's base: named as its users load it)."""
    base_name, base_revision, _ = adapter_base_name(model_run)
    return {MODEL_CONFIG: {"_name_or_path": REMOVE},
            TOKENIZER_CONFIG: {"name_or_path": REMOVE, "is_local": REMOVE, "local_files_only": REMOVE},
            ADAPTER_CONFIG: {"base_model_name_or_path": base_name, "revision": base_revision}}


def text_files(staging: Path) -> list[Path]:
    """The files of the folder a reader sees as text (the weights and tokenizer.model are binary)."""
    return [path for path in sorted(staging.iterdir()) if path.suffix in TEXT_SUFFIXES or path.name == LICENSE_FILE]


# --- checks and the build ----------------------------------------------------------------------------


def check_folder(plan: ReleasePlan, staging: Path, data, scored: list[Scored], tokenizer) -> None:
    """Read the folder back with the parsers its users have: the card (huggingface_hub), the configs,
    the tokenizer (with a chat template when the model answers in one); the weights are safetensors only."""
    from huggingface_hub import ModelCard

    if plan.template and not tokenizer.chat_template:
        raise RunDirError(f"the released tokenizer has no chat template, but the model answers in the {plan.template} "
                          "format (no run of the lineage saved one); nothing was released")

    card = ModelCard.load(staging / RunDir.CARD)
    if card.data.to_dict() != data.to_dict():
        raise RunDirError("the release's model card does not read back as written (its metadata changed); "
                          "nothing was released")
    expected = {(task, item.plan.metrics[task], item.results.scores[task]) for item in scored for task in item.plan.metrics}
    found = {(result.dataset_name, result.metric_type, result.metric_value) for result in card.data.eval_results or []}
    if found != expected:
        raise RunDirError(f"the release's model-index reads back as {sorted(found)}, not the eval runs' scores "
                          f"{sorted(expected)}; nothing was released")
    if plan.what == ReleaseWhat.adapter:
        from peft import PeftConfig

        PeftConfig.from_pretrained(str(staging))
    else:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(staging))
        unsafe = [path.name for path in staging.iterdir() if path.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if unsafe or not any(staging.glob("*.safetensors")):
            raise RunDirError(f"the release holds {unsafe or 'no safetensors weights'}; nothing was released")
        if (staging / SHARD_INDEX).is_file():
            index = load_json(staging / SHARD_INDEX, MAX_STATE_BYTES)
            weights = index.get("weight_map") if isinstance(index, dict) else None
            shards = set(weights.values()) if isinstance(weights, dict) else set()
            missing = sorted(shard for shard in shards if not (staging / shard).is_file())
            if missing:
                raise RunDirError(f"{SHARD_INDEX} names missing shards {missing}; nothing was released")


def put_in_place(staging: Path, target: Path) -> None:
    """Rename the finished folder to ``target``; an earlier one is moved aside first, then removed."""
    aside = None
    if os.path.lexists(target):
        aside = target.with_name(f".{target.name}.old{leftover_suffix('partial')}")
        os.rename(target, aside)
    try:
        os.rename(staging, target)
    except OSError:
        if aside is not None:
            os.rename(aside, target)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def build_release(run: RunDir) -> Path:
    """Write ``release/`` in the release run directory ``run``; return its path."""
    run = RunDir(run.path.resolve())
    plan = read_plan(run)
    steps = [completed(path, f"lineage run {index}") for index, path in enumerate(plan.lineage, 1)]
    scored = []
    for path in plan.eval_runs:
        step = completed(path, "eval run")
        scored.append(Scored(step, step.run.eval_plan(), step.run.results()))
    model_run, root = steps[-1], steps[0]
    source = model_run.run.output_path(model_run.provenance)
    if source is None or not source.is_dir():
        raise RunDirError(f"lineage run {model_run.name} has no output folder to release")
    results = eval_results(scored)
    licence = model_licence(root)
    notices: list[str] = []
    licence_lines(licence, root, steps, notices)  # the notices, printed whether or not the build succeeds
    for notice in notices:
        print(f"notice: {notice}", flush=True)
    target = run / RunDir.RELEASE
    remove_leftovers(run.path)
    staging = Path(tempfile.mkdtemp(prefix=f".{RunDir.RELEASE}.", suffix=leftover_suffix("partial"), dir=run.path))
    with removed_unless_finished(staging):
        write_weights(plan, run, model_run, source, staging)
        copy_tokenizer(source, staging)
        scrub_files(staging, json_settings(model_run))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(staging))
        data = card_data(plan, licence, root_hub_id(root), steps, results)
        write_text(staging / RunDir.CARD, render_card(plan, run, steps, scored, data, licence,
                                                      stop_tokens(staging, tokenizer), notices))
        if licence.text is not None:
            write_text(staging / LICENSE_FILE, f"{licence.text}\n")
        links = [run / link for link in (RunDir.MODEL_LINK, RunDir.ADAPTER_LINK) if os.path.lexists(run / link)]
        places = machine_places([run.path, *plan.lineage, *plan.eval_runs, source, *links])  # links: their targets
        check_no_machine_paths(text_files(staging), places)
        check_folder(plan, staging, data, scored, tokenizer)
        os.chmod(staging, 0o755)
        put_in_place(staging, target)
    say(f"{plan.what} {plan.name} written to {target}")
    return target


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m llamantino.job.release", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a release run directory (written by stage=release)")
    args = parser.parse_args(argv)
    build_release(RunDir(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
