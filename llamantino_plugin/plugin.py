"""The Axolotl plugin class: ``plugins: [llamantino_plugin.plugin.LlamantinoPlugin]``."""

from __future__ import annotations

import os
import socket

from axolotl.integrations.base import BasePlugin

from llamantino_plugin.args import plugin_args
from llamantino_plugin.formats import loader_spec
from llamantino_plugin.templates import template_info, template_source


class LlamantinoPlugin(BasePlugin):
    """Italian data loaders, the LLaMAntino prompt templates, and data accounting for Axolotl.

    Hooks:
        register: turns ``llamantino_template`` (+ ``llamantino_system_prompt``) into Axolotl's
            ``chat_template: jinja`` / ``chat_template_jinja``, so the tokenizer saved with the
            model carries the exact training format.
        load_datasets: on CPU-only multi-process runs, maps every rank to the CPU (Axolotl maps
            rank N to device N, which does not exist); for DPO, counts the pairs Axolotl will drop
            for length and stops with a clear message when none would be left.
        pre_lora_load: seeds the adapter's initial weights with ``llamantino_lora_seed`` (for DPO the
            adapter is made inside TRL's trainer, with nothing drawing random numbers in between).
        add_callbacks_post_trainer: checkpoints marked complete, progress lines, tracking, a mixture
            of experts' router load-balancing loss logged as ``moe_aux_loss`` (llamantino_plugin/moe.py),
            and for a study's trial (``llamantino_trial``) its objective reported at each evaluation,
            pruned when the study's pruner says so.
        post_trainer_create: in script-exact DPO, puts each pair's exact ids (the TRL 0.8.5 ones the
            loader computed) in place of the ones TRL 1.9 made from its strings.
    """

    def get_input_args(self) -> str:
        return "llamantino_plugin.args.LlamantinoArgs"

    def register(self, cfg: dict) -> None:
        args = plugin_args(cfg)
        name = args.llamantino_template
        if not name:
            return
        info = template_info(name)
        if info.kind != "chat":
            return
        if cfg.get("chat_template_jinja") or cfg.get("chat_template") not in (None, "jinja"):
            raise ValueError(
                "llamantino_template sets the chat template; remove chat_template/chat_template_jinja from the recipe"
            )
        cfg["chat_template"] = "jinja"
        cfg["chat_template_jinja"] = template_source(name, args.llamantino_system_prompt)

    def pre_lora_load(self, cfg, model) -> None:
        seed = plugin_args(cfg).llamantino_lora_seed
        if seed is not None:
            from transformers import set_seed

            set_seed(seed)
            print(f"llamantino: adapter weights initialised from seed {seed} (training seed {cfg.seed})", flush=True)

    def post_trainer_create(self, cfg, trainer) -> None:
        if not (plugin_args(cfg).llamantino_script_exact and cfg.rl):
            return
        from llamantino_plugin.script_exact import IDS_COLUMNS

        if getattr(trainer.args, "precompute_ref_log_probs", False):
            raise ValueError("script-exact DPO replaces TRL's ids after it tokenised; precompute_ref_log_probs "
                             "would score the replaced ones: drop precompute_ref_log_probs")

        def exact(dataset):
            if dataset is None:
                return None
            missing = [column for column in IDS_COLUMNS.values() if column not in dataset.column_names]
            if missing:
                raise ValueError(f"script-exact DPO rows lack {missing}: they were prepared without "
                                 "llamantino_script_exact; prepare them again")
            dataset = dataset.remove_columns(list(IDS_COLUMNS))
            return dataset.rename_columns({column: key for key, column in IDS_COLUMNS.items()})

        trainer.train_dataset = exact(trainer.train_dataset)
        if isinstance(trainer.eval_dataset, dict):
            trainer.eval_dataset = {name: exact(dataset) for name, dataset in trainer.eval_dataset.items()}
        else:
            trainer.eval_dataset = exact(trainer.eval_dataset)
        print("llamantino: script-exact DPO: the pairs' TRL 0.8.5 ids replace TRL's own", flush=True)

    def add_callbacks_post_trainer(self, cfg, trainer):
        from llamantino_plugin.progress import progress_callback
        from llamantino_plugin.tracking import tracking_callbacks

        callbacks = [CheckpointComplete(), progress_callback(trainer),
                     *tracking_callbacks(cfg, plugin_args(cfg).llamantino_tracking_record)]
        from llamantino_plugin.moe import moe_aux_loss_callback

        moe = moe_aux_loss_callback(cfg, trainer)
        if moe is not None:
            callbacks.append(moe)
        trial = plugin_args(cfg).llamantino_trial
        if trial is not None:
            from llamantino_plugin.trial import TrialReport

            callbacks.append(TrialReport(trial, trainer))
        return callbacks

    def load_datasets(self, cfg, preprocess: bool = False):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
            print(f"llamantino: rank {os.environ.get('RANK', '0')}/{world} joined on node {node}", flush=True)
            import torch

            if not torch.cuda.is_available():
                cfg.device_map = {"": "cpu"}
        args = plugin_args(cfg)
        if args.llamantino_prepared:
            return _load_prepared(cfg, args)
        pairs = sorted({str(spec.format) for spec in map(_loader_spec, cfg.datasets or []) if spec and spec.pairs})
        if cfg.rl and pairs:
            return load_preferences(cfg, "/".join(pairs))
        return None


def _loader_spec(dataset):
    """The spec of the format a ``datasets`` entry's loader reads; None for a loader not the plugin's."""
    return loader_spec(str(dataset.get("type") or ""))


def _load_prepared(cfg, args=None):
    """A prepared corpus (``llamantino.job.prepare``) or prepared rows (``llamantino.job.prepare_rows``),
    memory-mapped: nothing is tokenised here.

    The entry must be complete (its manifest written) and hold the key the recipe names, so a
    recipe never trains on a corpus prepared for other settings. Each source's blocks are taken in
    sample order up to ``llamantino_prepared_blocks``; labels and the mask are derived per batch.
    """
    import json
    import math
    from pathlib import Path

    import pyarrow.compute as pc
    from datasets import Dataset, concatenate_datasets

    from llamantino_plugin import report
    from llamantino_plugin.prepared import derive_columns, select_units

    args = args or plugin_args(cfg)
    location = Path(os.path.expandvars(os.path.expanduser(args.llamantino_prepared)))
    manifest_path = location / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"llamantino_prepared: {location} is not a complete prepared corpus (no manifest.json); "
                         "its prepare jobs have not finished")
    manifest = json.loads(manifest_path.read_text())
    if not isinstance(manifest, dict):
        raise ValueError(f"llamantino_prepared: {manifest_path} is not a manifest (a JSON object)")
    if manifest.get("kind") == "rows":
        return _load_rows(cfg, location, manifest)
    if manifest.get("key") != location.name or manifest.get("sequence_len") != cfg.sequence_len:
        raise ValueError(f"llamantino_prepared: {location} holds key {manifest.get('key')} with sequence_len "
                         f"{manifest.get('sequence_len')}, not what this recipe asks for")
    wanted = dict(args.llamantino_prepared_blocks or {})
    taken = select_units(manifest["units"], wanted)
    parts = []
    for name, rows in taken:
        part = Dataset.from_file(str(location / "units" / f"{name}.arrow"))
        parts.append(part if rows == len(part) else part.select(range(rows)))
    # offsets only: the token ids stay on disk
    tokens = sum(int(pc.sum(pc.list_value_length(part.data.column("input_ids"))).as_py() or 0) for part in parts)
    dataset = concatenate_datasets(parts).with_transform(derive_columns)
    (location / "last_used").touch()  # the entry's last use, for `llamantino data cache`
    source_of = {unit["name"]: unit["source"] for unit in manifest["units"]}
    blocks_of: dict[str, int] = {}
    for name, rows in taken:
        blocks_of[source_of[name]] = blocks_of.get(source_of[name], 0) + rows
    for name, counts in manifest["sources"].items():
        shown = {key: value for key, value in counts.items() if isinstance(value, int) and not isinstance(value, bool)}
        shown["blocks"] = blocks_of.get(name, 0)
        report.record(cfg, name, "text (prepared)", shown)
    # Exact counts: Axolotl would otherwise read every label once to count them.
    cfg.total_num_tokens = cfg.total_supervised_tokens = tokens
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps * world
    steps = math.ceil(len(dataset) * float(cfg.num_epochs or 1) / per_step)
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    return _dataset_meta(dataset, steps)


def _load_rows(cfg, location, manifest: dict):
    """Prepared SFT/DPO rows: read memory-mapped, split for validation as Axolotl would, each
    source's counts (what its loader dropped and kept, what the mixture took) in the data report."""
    import math
    from pathlib import Path

    from datasets import load_from_disk

    from llamantino_plugin import report

    if manifest.get("key") != location.name or manifest.get("sequence_len") != cfg.sequence_len:
        raise ValueError(f"llamantino_prepared: {location} holds rows of key {manifest.get('key')} with sequence_len "
                         f"{manifest.get('sequence_len')}, not what this recipe asks for (sequence_len "
                         f"{cfg.sequence_len})")
    if bool(manifest.get("rl")) != bool(cfg.rl):
        raise ValueError(f"llamantino_prepared: {location} holds {'preference' if manifest.get('rl') else 'SFT'} "
                         "rows, not what this recipe trains on")
    dataset = load_from_disk(str(Path(location) / "rows"))
    print(f"llamantino: read {len(dataset):,} prepared rows from {location} (tokenised once, not here)", flush=True)
    (Path(location) / "last_used").touch()  # the entry's last use, for `llamantino data cache`
    sources = manifest.get("sources") if isinstance(manifest.get("sources"), dict) else {}
    for name, counts in sources.items():
        if isinstance(counts, dict):
            shown = {key: value for key, value in counts.items()
                     if isinstance(value, (int, float)) and not isinstance(value, bool)}
            report.record(cfg, str(name), f"{counts.get('format')} (prepared)", shown)
    eval_dataset = None
    if cfg.val_set_size:
        from axolotl.utils.data.shared import create_train_validation_split
        from datasets import disable_caching

        disable_caching()  # the split's index files go to a temporary folder, not into the shared entry

        size = int(cfg.val_set_size) if cfg.val_set_size > 1 else float(cfg.val_set_size)
        dataset, eval_dataset = create_train_validation_split(dataset, cfg, size)
    if cfg.rl:
        steps = int(math.ceil(len(dataset) * float(cfg.num_epochs or 1) / cfg.batch_size))
    else:
        from axolotl.utils.trainer import calculate_total_num_steps

        steps = calculate_total_num_steps(cfg, dataset)
        if cfg.max_steps:
            steps = min(steps, cfg.max_steps)
    return _dataset_meta(dataset, steps, eval_dataset)


def _dataset_meta(dataset, steps, eval_dataset=None):
    from axolotl.common.datasets import TrainDatasetMeta

    return TrainDatasetMeta(train_dataset=dataset, eval_dataset=eval_dataset, total_num_steps=steps)


def load_preferences(cfg, fmt: str):
    """Axolotl's own preference loading, plus the accounting Axolotl leaves out.

    Axolotl drops pairs longer than ``sequence_len`` with a log line and, when it drops them all,
    TRL later fails with a bare ``StopIteration``. Here the rows before and after are counted and,
    when none is left, each dataset is examined to say why before any model is loaded. ``fmt``
    names the pair format(s) in the data report.
    """
    from axolotl.common.datasets import load_preference_datasets
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.data.shared import datasets_with_name_generator, load_dataset_with_config

    from llamantino_plugin import report
    from llamantino_plugin.preferences import PreferenceError, account

    raw = []
    for ds_cfg in datasets_with_name_generator(cfg.datasets):
        dataset = load_dataset_with_config(ds_cfg, cfg.hf_use_auth_token, streaming=False)
        raw.append(dataset["train"] if hasattr(dataset, "keys") else dataset)
    meta = load_preference_datasets(cfg=cfg)
    kept = len(meta.train_dataset) + (len(meta.eval_dataset) if meta.eval_dataset is not None else 0)
    rows = sum(len(dataset) for dataset in raw)
    counts = {"rows": rows, "dropped_invalid_or_too_long": rows - kept, "kept": kept}
    report.record(cfg, ", ".join(str(d.get("path")) for d in cfg.datasets), fmt, counts)
    if kept == 0:
        tokenizer = load_tokenizer(cfg)
        reasons = []
        for index, dataset in enumerate(raw):
            detail = account(cfg, dataset, index, tokenizer)
            reasons.append(f"dataset {cfg.datasets[index].get('path')}: {report.describe(detail)}; prompt+answer needs "
                           f"at least {detail.get('shortest_pair_tokens', '?')} tokens")
        raise PreferenceError(
            "every preference pair would be dropped (" + "; ".join(reasons) + f") but sequence_len is "
            f"{cfg.sequence_len}; raise sequence_len, set max_prompt_len (over-long prompts keep their last tokens) "
            "or excess_length_strategy: truncate"
        )
    return meta


COMPLETE = "llamantino_complete.json"  # written into a checkpoint folder once every rank has saved it


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class CheckpointComplete(_callback_base()):
    """Marks each checkpoint complete, last: a job killed mid-save leaves a folder without the
    marker, which the job script moves aside before resuming (``auto_resume_from_checkpoints``
    takes the newest ``checkpoint-N``, complete or not)."""

    def on_save(self, args, state, control, **kwargs):
        import json
        import time
        from pathlib import Path

        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.barrier()  # every rank has written its shard
        # Global rank 0 only, asked of torch.distributed itself: on the two-node test cluster a rank
        # whose trainer state said "world process zero" wrote too, and two writers raced on one file
        # (the state is a dataclass defaulting to True and is restored from checkpoints).
        rank = dist.get_rank() if distributed else 0
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if rank == 0 and folder.is_dir():
            tmp = folder / f".{COMPLETE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"step": state.global_step, "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}))
            os.replace(tmp, folder / COMPLETE)
        return control
