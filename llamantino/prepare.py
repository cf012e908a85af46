"""From a composed config to everything a run directory holds, checked, before anything is written.

    compose (Hydra) -> prepare: method, inputs, recipe (render), validate (Axolotl), scripts
                    -> write (rundir.py) -> launch (launch/)

``prepare_run`` reads the file system (data files, earlier runs) and calls Axolotl's validation,
but writes nothing: every check that can fail runs before the run directory exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from llamantino.errors import ConfigError
from llamantino.inputs import MODEL_LINK, Inputs, resolve_inputs
from llamantino.method import Method, choose_method
from llamantino.provenance import build_provenance, package_versions
from llamantino.render.axolotl import dump_yaml, prompt_template, render_axolotl
from llamantino.tiny import tiny_model_dir

STAGE_COMMANDS = {
    "train": ["-m", "axolotl.cli.train", "axolotl.yaml"],
    "merge": ["-m", "axolotl.cli.merge_lora", "axolotl.yaml"],
    "eval": ["-m", "llamantino.evaluate", "."],
}


@dataclass
class PreparedRun:
    """A rendered, validated run, ready to be written to ``run_dir``."""

    cfg: dict
    run_dir: Path
    method: Method | None
    inputs: Inputs
    recipe: dict | None
    provenance: dict
    files: dict[str, str | bytes] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def links(self) -> dict[str, str]:
        return self.inputs.links

    @property
    def stage_args(self) -> list[str]:
        """The stage command after the Python executable, run from inside the run directory."""
        return list(STAGE_COMMANDS[self.cfg["stage"]["task"]])

    @property
    def output(self) -> dict | None:
        return self.provenance["output"]


LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay", "one_cycle",
                 "rex")
_CHOICES = {"adapter": (None, "lora", "qlora"), "rl": (None, "dpo"), "bad_rows": ("strict", "skip"),
            "on_unsupported": ("fallback", "error"), "lr_scheduler": LR_SCHEDULERS, "cpu_adapter": ("lora", "qlora")}
_POSITIVE = ("micro_batch_size", "gradient_accumulation_steps", "sequence_len", "lora_r", "lora_alpha", "logging_steps")


def check_stage(stage: dict) -> None:
    """What Axolotl would accept but fail on hours later: enums, counts and rates out of range."""
    for key, valid in _CHOICES.items():
        if stage[key] not in valid:
            raise ConfigError(f"stage.{key}={stage[key]!r} is not valid; use one of: "
                              + ", ".join("null" if v is None else v for v in valid))
    for key in _POSITIVE:
        if stage[key] < 1:
            raise ConfigError(f"stage.{key}={stage[key]} must be at least 1")
    if not stage["learning_rate"] > 0:
        raise ConfigError(f"stage.learning_rate={stage['learning_rate']} must be positive")
    if not 0 <= stage["lora_dropout"] < 1:
        raise ConfigError(f"stage.lora_dropout={stage['lora_dropout']} must be in [0, 1)")
    if stage["max_steps"] is not None and stage["max_steps"] < 1:
        raise ConfigError(f"stage.max_steps={stage['max_steps']} must be at least 1 (or null: train num_epochs)")
    if stage["rl"] and not (stage["rl_beta"] or 0) > 0:
        raise ConfigError(f"stage.rl_beta={stage['rl_beta']} must be positive for rl={stage['rl']}")


def job_env(cfg: dict, inputs: Inputs) -> dict[str, str]:
    """Environment of the training process: no telemetry; offline when nothing needs the network."""
    env = {"AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    local_only = inputs.model_source.get("kind") != "hub" and (inputs.data is None or "local" in inputs.data)
    if cfg["hardware"]["offline"] or local_only:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def output_record(cfg: dict, method: Method | None, inputs: Inputs, recipe: dict | None) -> dict | None:
    """What the run produces, for the next stage's lineage checks."""
    task, hw = cfg["stage"]["task"], cfg["hardware"]
    precision = "fp32" if hw["accelerator"] == "cpu" else ("bf16" if hw["bf16"] else "fp16")
    if task == "merge":
        return {"kind": "model", "path": "output/merged", "precision": precision}
    if task != "train":
        return None
    if method.adapter:
        base = {"ref": inputs.base_model, "revision": inputs.base_model_revision}
        if inputs.base_model == MODEL_LINK:
            base["local"] = inputs.links[MODEL_LINK]
        return {"kind": "adapter", "adapter": method.adapter, "path": "output", "base_model": base,
                "datasets": {key: recipe[key] for key in ("datasets", "llamantino_datasets") if key in recipe},
                "data_links": {name: target for name, target in inputs.links.items() if name != MODEL_LINK}}
    return {"kind": "model", "path": "output", "precision": precision}


def recipe_header(cfg: dict, overrides: list[str], notices: list[str]) -> list[str]:
    """The comment block at the top of axolotl.yaml: what it is and how to re-create it.

    Built from the config and the overrides only, so an imported recipe renders byte-identical.
    """
    picked = " ".join(f"{group}={cfg[group]['name']}" for group in ("model", "data", "stage", "hardware"))
    lines = [
        f"llamantino {package_versions()['llamantino']} recipe for Axolotl {package_versions()['axolotl']}: "
        "re-render it rather than editing it",
        f"preset: {cfg.get('experiment') or '-'}   {picked}",
        "re-create: python -m llamantino " + " ".join(overrides),
        "run it: from this directory, `axolotl train axolotl.yaml` (llamantino_plugin installed)",
    ]
    lines += [f"notice: {notice}" for notice in notices]
    return lines


def prepare_run(cfg: dict, run_dir: Path, *, overrides: list[str], choices: dict, validate: bool = True,
                known_runs: dict | None = None) -> PreparedRun:
    """Render and check one stage; raises LlamantinoError subclasses naming what is wrong."""
    stage, hw = cfg["stage"], cfg["hardware"]
    task = stage["task"]
    if task not in STAGE_COMMANDS:
        raise ConfigError(f"stage.task={task!r} is not valid; use one of {', '.join(STAGE_COMMANDS)}")
    method = None
    if task == "train":
        check_stage(stage)
        if any(o.split("=", 1)[0].lstrip("+~") == "stage.learning_rate" for o in overrides):
            # An explicit learning rate wins over the fallback's adapter_learning_rate.
            cfg = {**cfg, "stage": {**stage, "adapter_learning_rate": None}}
            stage = cfg["stage"]
        method = choose_method(stage, cfg["model"], hw)
    elif task == "merge":
        method = Method(adapter="lora", distributed="none", nodes=1, processes_per_node=1)
    notices = list(method.notices) if method else []
    inputs = resolve_inputs(cfg, tiny_model_dir, known_runs or {})
    recipe = None
    files: dict[str, str | bytes] = dict(inputs.files)
    if task in ("train", "merge"):
        from llamantino_plugin.templates import template_info

        try:
            template_info(prompt_template(cfg))
        except ValueError as exc:
            raise ConfigError(f"prompt.template: {exc}") from None
        recipe = render_axolotl(cfg, method, inputs)
        if task == "train" and recipe["optimizer"] != stage["optimizer"]:
            notices.append(f"optimizer {stage['optimizer']} needs CUDA; on hardware {hw['name']} the stage uses "
                           f"{recipe['optimizer']}")
        if validate:
            from llamantino.validate import validate_recipe

            validate_recipe(recipe, hw)
        files["axolotl.yaml"] = dump_yaml(recipe, recipe_header(cfg, overrides, notices))
    else:
        from llamantino.evaluate import check_tasks, eval_plan, materialise_tasks

        if validate:
            check_tasks(cfg)
        files.update(materialise_tasks(cfg, inputs))
        files["eval.json"] = json.dumps(eval_plan(cfg, inputs), indent=2) + "\n"
    provenance = build_provenance(cfg, overrides, choices, method, inputs, output_record(cfg, method, inputs, recipe), notices)
    provenance["env"] = job_env(cfg, inputs)
    files["config.yaml"] = OmegaConf.to_yaml(OmegaConf.create(cfg))
    files["provenance.json"] = json.dumps(provenance, indent=2, ensure_ascii=False) + "\n"
    return PreparedRun(cfg=cfg, run_dir=Path(run_dir), method=method, inputs=inputs, recipe=recipe,
                       provenance=provenance, files=files, notices=notices)
