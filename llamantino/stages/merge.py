"""The merge stage: a LoRA/QLoRA adapter merged into its 16-bit base (``axolotl merge-lora``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llamantino.errors import ConfigError
from llamantino.inputs.resolve import Inputs, from_adapter_output, read_run
from llamantino.config.method import BF16_BYTES, Method, io_hours, model_gpus, model_ram_gb
from llamantino.records.rundir import RunDir
from llamantino.config.schema import LlamantinoConfig
from llamantino.records.provenance import ModelSource, OutputKind, RunOutput, SourceKind
from llamantino.stages.base import Stage, Work
from llamantino.stages.train import precision


class MergeStage(Stage):
    task = "merge"
    command = ("-m", "axolotl.cli.merge_lora", RunDir.RECIPE)
    input_key = "input_adapter"

    def method(self, cfg, overrides):
        return cfg, Method(adapter="lora", distributed="none", nodes=1, processes_per_node=1)

    def inputs(self, cfg: LlamantinoConfig, method: Method | None, tiny_dir, known_runs: dict) -> Inputs:
        if not cfg.run.input_adapter:
            raise ConfigError("stage=merge needs run.input_adapter=<run directory of a LoRA/QLoRA stage>")
        adapter_run = Path(cfg.run.input_adapter).expanduser()
        output = read_run(adapter_run, known_runs).output
        if output.kind != OutputKind.adapter:
            raise ConfigError(f"run.input_adapter={adapter_run} produced no adapter to merge (output: {output.kind})")
        source = ModelSource(kind=SourceKind.merge, adapter_run=str(adapter_run.resolve()), base=output.base_model)
        inputs = from_adapter_output(output, source, str((adapter_run / output.path).resolve()))
        inputs.model_source = dataclasses.replace(source, output=output)  # the template the merged model answers in
        inputs.adapter_datasets = dict(output.datasets)
        inputs.links.update(output.data_links)
        return inputs

    def render(self, cfg, method, inputs, notices):
        from llamantino.render.axolotl import render_merge_recipe

        recipe = render_merge_recipe(cfg, inputs, inputs.model_source.output)
        if on_host(cfg):
            recipe["lora_on_cpu"] = True
            notices.append(f"{cfg.model.name} in bf16 does not fit one {cfg.hardware.gpu_memory_gb:g} GB GPU: the "
                           f"merge runs in host memory ({model_ram_gb(cfg.model.params_b)} GB, no GPU)")
        return recipe, {}

    def output(self, cfg, method, inputs, recipe):
        adapter = inputs.model_source.output
        return RunOutput(kind=OutputKind.model, path=f"{RunDir.OUTPUT}/merged", precision=precision(cfg),
                         template=adapter.template, system_prompt=adapter.system_prompt)

    def prepare_command(self, run):
        return None, {}  # reads an adapter and its base: nothing to pre-process

    def work(self, cfg, shape):
        model_gb = cfg.model.params_b * BF16_BYTES
        hours, how = io_hours(cfg.hardware, 2 * model_gb)
        return Work(hours, f"load the bf16 base ({model_gb:,.1f} GB) and write the merged model ({model_gb:,.1f} GB), "
                           f"the LoRA products negligible: {how}")

    def shape(self, cfg, method):
        """One GPU when the bf16 model fits it, else host memory only (``lora_on_cpu``): never the whole node."""
        hw = cfg.hardware
        on_cpu = on_host(cfg)
        return self.sized_shape(cfg, 0 if on_cpu else 1, model_ram_gb(cfg.model.params_b)) if hw.gpu else \
            super().shape(cfg, method)


def on_host(cfg: LlamantinoConfig) -> bool:
    """A merge in host memory: the bf16 model does not fit one GPU of the hardware (70B on 64 GB A100s)."""
    hw = cfg.hardware
    return hw.gpu and model_gpus(cfg.model.params_b, hw.gpu_memory_gb) > 1
