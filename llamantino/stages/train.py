"""The train stage (adapt, sft, dpo): an Axolotl recipe, trained with torchrun across the job's nodes."""

from __future__ import annotations

import dataclasses

from llamantino.errors import ConfigError
from llamantino.inputs.resolve import MODEL_LINK, Inputs, base_model, with_data
from llamantino.config.method import Method, choose_method, signal_lead_s
from llamantino.records.rundir import RunDir
from llamantino.config.schema import LlamantinoConfig, StageConfig, Tracker, from_plain, time_seconds, to_plain
from llamantino.records.provenance import BaseModelRef, OutputKind, RunOutput
from llamantino.render.sbatch import JobShape
from llamantino.stages.base import HubRead, Stage


class TrainStage(Stage):
    task = "train"
    command = ("-m", "axolotl.cli.train", RunDir.RECIPE)
    checkpoints = True
    costed = True

    def name_parts(self, cfg: LlamantinoConfig) -> list[str]:
        return [cfg.model.name, cfg.data.name]

    def method(self, cfg: LlamantinoConfig, overrides: list[str]) -> tuple[LlamantinoConfig, Method]:
        from llamantino.render.axolotl import TIED_EMBEDDINGS, unused_stage_keys

        explicit = {o.split("=", 1)[0].lstrip("+~").removeprefix("stage.") for o in overrides
                    if o.lstrip("+~").startswith("stage.")}
        tuned = {key: value for key, value in cfg.model.tuning.items() if key not in explicit}
        if "learning_rate" in explicit:
            # An explicit learning rate wins over the fallback's adapter_learning_rate.
            tuned["adapter_learning_rate"] = None
        dropped = []
        if cfg.stage.rl and cfg.model.tied_embeddings and tuned.get("lora_modules_to_save"):
            # A preference run cannot save tied embeddings trained beside its adapter (render refuses it
            # when asked for): the model's own tuning leaves them frozen there, and says so.
            dropped = [m for m in tuned["lora_modules_to_save"] if m in TIED_EMBEDDINGS]
            tuned["lora_modules_to_save"] = [m for m in tuned["lora_modules_to_save"] if m not in TIED_EMBEDDINGS] or None
        if tuned:
            stage = from_plain(StageConfig, {**to_plain(cfg.stage), **tuned}, "stage")
            cfg = dataclasses.replace(cfg, stage=stage)
        method = choose_method(cfg.stage, cfg.model, cfg.hardware)
        # Said only of what this run's recipe reads (a fallback's learning rate, say, only after a fallback).
        unused = unused_stage_keys(cfg.stage, method, cfg.hardware)
        shown = {key: value for key, value in tuned.items()
                 if key in cfg.model.tuning and value == cfg.model.tuning[key] and key not in unused}
        if shown:
            method.notices.insert(0, f"model {cfg.model.name} sets " + ", ".join(f"stage.{k}={v}" for k, v in shown.items())
                                  + " (model.tuning; the command line wins)")
        if dropped:
            method.notices.insert(0, f"model {cfg.model.name} ties its embeddings, which a {cfg.stage.rl} run cannot save "
                                     f"trained beside its adapter: its tuning's stage.lora_modules_to_save leaves out "
                                     f"{', '.join(dropped)} here")
        return cfg, method

    def inputs(self, cfg: LlamantinoConfig, method: Method | None, tiny_dir, known_runs: dict) -> Inputs:
        from llamantino.render.axolotl import rows_recipe_keys

        return with_data(base_model(cfg, tiny_dir, known_runs), cfg, method.world_size if method else 1,
                         rows_recipe_keys(cfg))

    def render(self, cfg, method, inputs, notices):
        from llamantino.render.axolotl import render_train_recipe
        from llamantino_plugin.templates import template_info

        try:
            template_info(cfg.template)
        except ValueError as exc:
            raise ConfigError(f"prompt.template: {exc}") from None
        notices += warmup_notice(cfg.stage)
        recipe = render_train_recipe(cfg, method, inputs)
        if recipe["optimizer"] != cfg.stage.optimizer:
            notices.append(f"optimizer {cfg.stage.optimizer} needs CUDA; on hardware {cfg.hardware.name} the stage "
                           f"uses {recipe['optimizer']}")
        return recipe, {}

    def validate(self, cfg, recipe, files):
        """Axolotl's validation, and a tracker that can work where the job starts: its package installed,
        W&B online with a key (else the training would stop at its first step)."""
        super().validate(cfg, recipe, files)
        if cfg.tracking.name != Tracker.none:
            from llamantino.config.tracking import check_tracker_ready
            from llamantino.render.axolotl import tracker_mode

            check_tracker_ready(str(cfg.tracking.name), online=tracker_mode(cfg) == "online")

    def output(self, cfg, method, inputs, recipe):
        answers = answer_format(cfg, inputs)
        if method.adapter:
            base = BaseModelRef(ref=inputs.base_model, revision=inputs.base_model_revision,
                                local=inputs.links[MODEL_LINK] if inputs.base_model == MODEL_LINK else None)
            return RunOutput(kind=OutputKind.adapter, adapter=method.adapter, path=RunDir.OUTPUT, base_model=base,
                             datasets={key: recipe[key] for key in ("datasets", "llamantino_datasets") if key in recipe},
                             data_links={name: target for name, target in inputs.links.items() if name != MODEL_LINK},
                             **answers)
        return RunOutput(kind=OutputKind.model, path=RunDir.OUTPUT, precision=precision(cfg), **answers)

    def shape(self, cfg, method) -> JobShape:
        hw = cfg.hardware
        lead = cfg.launcher.signal_lead_s or signal_lead_s(cfg.model.params_b, method.adapter, cfg.stage.lora_r,
                                                             hw.storage.write_gbps)
        if cfg.launcher.requeue and lead >= time_seconds(cfg.time_limit):
            raise ConfigError(f"the checkpoint lead of {lead} s (launcher.signal_lead_s, or the time to write this "
                              f"model's checkpoint) does not fit the time limit {cfg.time_limit}: raise launcher.time")
        return JobShape(nodes=method.nodes, processes_per_node=max(method.processes_per_node, 1),
                        gpus_per_node=hw.gpus_per_node if hw.gpu else 0, cpus_per_node=hw.cpus_per_node,
                        mem=hw.slurm.mem, distributed=True, requeue=cfg.launcher.requeue, signal_lead_s=lead)

    def prepare_command(self, run):
        """Prepared data (a corpus, rows) is made into its cache entry (orchestrate/offline.py):
        nothing for Axolotl's preprocess to do."""
        provenance = run.provenance()
        if provenance.data is not None and provenance.data.prepared() is not None:
            return None, {}
        return super().prepare_command(run)

    def hub_reads(self, cfg, inputs) -> list[str]:
        reads = super().hub_reads(cfg, inputs)
        if inputs.reads_hub_data:
            data = inputs.data
            reads.append(HubRead("dataset", data["hub_id"], data.get("revision"), data.get("subset"), data.get("split")))
        if inputs.rows is not None:  # read by the job preparing the rows
            reads += [HubRead("dataset", s.hub_id, s.revision, s.subset, s.split) for s in inputs.rows.sources
                      if s.hub_id]
        return reads


def warmup_notice(stage) -> list[str]:
    """The notice of a warm-up shortened to fit the run (render/axolotl.py warmup_steps_for); with
    ``stage.on_unsupported=error`` a ConfigError instead."""
    from llamantino.render.axolotl import warmup_steps_for

    steps = warmup_steps_for(stage)
    if steps == stage.warmup_steps:
        return []
    problem = (f"stage.warmup_steps={stage.warmup_steps} is not shorter than the run (stage.max_steps="
               f"{stage.max_steps}), so the learning rate would never leave warm-up")
    if stage.on_unsupported == "error":
        fixes = [f"stage.warmup_steps=<below {stage.max_steps}>"] if stage.max_steps > 1 else []
        fixes.append("stage.warmup_steps=null (Axolotl's default: 3% of the run)")
        raise ConfigError(f"{problem}; refusing because stage.on_unsupported=error: pass {' or '.join(fixes)}")
    instead = f"{steps} warm-up steps" if steps else "no warm-up"
    return [f"{problem}: {instead} instead (a tenth of the run, rounded down; set stage.warmup_steps below "
            f"{stage.max_steps}, or null, to choose)"]


def answer_format(cfg: LlamantinoConfig, inputs: Inputs) -> dict:
    """The template (and system prompt) the trained model answers in: the one its data was rendered
    with; raw text (language adaptation) keeps the input model's, if it had one."""
    from llamantino_plugin.formats import format_spec

    if inputs.data is not None and not format_spec(inputs.data["format"]).corpus:
        return {"template": cfg.template, "system_prompt": cfg.prompt.system_prompt}
    upstream = inputs.model_source.output
    return {"template": upstream.template, "system_prompt": upstream.system_prompt} if upstream else {}


def precision(cfg: LlamantinoConfig) -> str:
    """The precision a stage's model output is saved in."""
    hw = cfg.hardware
    return "fp32" if not hw.gpu else ("bf16" if hw.bf16 else "fp16")
