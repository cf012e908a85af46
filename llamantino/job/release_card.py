"""The model card (``README.md``) of a release: its metadata (licence, datasets, the eval runs' scores
as a ``model-index``) and its text (how to use the model, the lineage with its hyperparameters, the
licences, how to make it again). Free text from the records is escaped so it shows as itself."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

from llamantino.config.schema import ReleaseWhat, non_commercial
from llamantino.errors import RunDirError
from llamantino.job.card import PROVENANCE_HEADING, provenance_section
from llamantino.job.evaluate import HUB_ID, finite_number, results_table
from llamantino.job.generation import GENERATION_CONFIG
from llamantino.job.machine_paths import PATH_PLACEHOLDER, reproduce_command
from llamantino.job.release_runs import Step, adapter_base_name, root_hub_id
from llamantino.records.files import load_json, load_yaml
from llamantino.records.jobstate import RunStatus
from llamantino.records.manifests import EvalPlan, EvalResults, ReleasePlan
from llamantino.records.provenance import SourceKind
from llamantino.records.rundir import RunDir

LICENSE_FILE = "LICENSE"
TASK_TYPE = "text-generation"
# https://huggingface.co/docs/hub/repositories-licenses: the ids a card's ``license`` may take.
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())
_LINK = re.compile(r"https://[^\s<>\"'`]{1,500}")


# --- Markdown -------------------------------------------------------------------------------------


def single_line(text) -> str:
    return " ".join(str(text).split())


def md_text(value) -> str:
    """Free text as one line of Markdown that shows as itself: no line break, markup or HTML."""
    text = html.escape(single_line(value), quote=False)
    return re.sub(r"([\\`*_\[\]|~#])", r"\\\1", text)


def fenced(text: str, lang: str) -> str:
    """A code block that no run of backticks in ``text`` can close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def code(text: str) -> str:
    """An inline code span for one line of text."""
    text = single_line(text)
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks} {text} {ticks}" if "`" in text else f"{ticks}{text}{ticks}"


def comment(text: str) -> str:
    """A name in a shell comment: plain characters only (the command lines are quoted on their own)."""
    return re.sub(r"[^\w.+:=-]+", "-", str(text)).strip("-") or "-"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")[:64].strip("-.") or "custom"


# --- metadata -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Licence:
    """The card's licence fields, and LICENSE's text when the base's licence is no Hub id."""

    license: str
    license_name: str | None = None
    license_link: str | None = None
    text: str | None = None  # written as LICENSE


def model_licence(root: Step) -> Licence:
    """The base model's licence (the model option of the lineage's first run)."""
    model = root.config.model
    given = " ".join(model.license.split())
    if not given:
        return Licence("unknown")
    if given.lower() in HUB_LICENSES:
        return Licence(given.lower())
    link = model.license_link if model.license_link and _LINK.fullmatch(model.license_link) else None
    return Licence("other", slug(given), link or LICENSE_FILE, None if link else given)


def data_licence(step: Step) -> str | None:
    """The licence of the data a run trained on (its record's, else its data option's)."""
    data = step.provenance.data
    if data is None:
        return None
    return data.license if data.license is not None else (step.config.data.license or None)


def hub_datasets(steps: list[Step]) -> list[str]:
    """The hub ids of the data every run trained on (a prepared corpus: its hub sources)."""
    found: list[str] = []
    for step in steps:
        data = step.provenance.data
        if data is None:
            continue
        candidates = [data.hub_id] + [source.get("hub_id") for source in (data.corpus or {}).get("sources") or []
                                      if isinstance(source, dict)]
        found += [hub for hub in candidates if isinstance(hub, str) and HUB_ID.fullmatch(hub) and hub not in found]
    return found


@dataclass(frozen=True)
class Scored:
    """An eval run and what its card entries come from."""

    step: Step
    plan: EvalPlan
    results: EvalResults


def eval_results(scored: list[Scored]):
    """One huggingface_hub EvalResult per task of every eval run."""
    from huggingface_hub import EvalResult

    found = []
    for item in scored:
        results, harness = item.results, item.results.harness or {}
        for task, metric in item.plan.metrics.items():
            value = results.scores.get(task)
            if value is None or not math.isfinite(value):
                raise RunDirError(f"{item.step.run / RunDir.RESULTS_JSON}: no finite score for {task}")
            shots = (results.num_fewshot or {}).get(task)
            stderr = (results.stderr or {}).get(task)
            found.append(EvalResult(
                task_type=TASK_TYPE, task_name=f"{task} (lm-eval)",
                dataset_type=(results.datasets or {}).get(task) or task, dataset_name=task,
                dataset_config=(results.dataset_configs or {}).get(task),
                dataset_args={"num_few_shot": shots} if shots is not None else None,
                metric_type=metric, metric_value=value,
                metric_name=f"{metric}" + (f" ({shots}-shot)" if shots is not None else ""),
                metric_config=f"lm-eval {harness.get('lm_eval', 'unknown')}, eval.mode={results.mode}",
                metric_args={"stderr": stderr} if stderr is not None and math.isfinite(stderr) else None))
    clashes: dict[tuple, object] = {}
    for result in found:  # the model-index shares dataset fields among results of one task and dataset
        shared = (result.task_name, result.dataset_name, result.dataset_args)
        if clashes.setdefault(result.unique_identifier, shared) != shared:
            raise RunDirError(f"two eval results on dataset {result.dataset_type} differ in task or few-shot count "
                              f"({clashes[result.unique_identifier]} and {shared}); a model-index entry holds one: "
                              "release with one of those eval runs")
    return found


# --- sections -------------------------------------------------------------------------------------


def gpu_cell(status: RunStatus) -> str:
    if status.gpu_hours is None:
        return "-"
    return f"{status.gpu_hours:.2f}"


def time_cell(status: RunStatus) -> str:
    if status.elapsed_s is None:
        return "-"
    seconds = int(status.elapsed_s)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def hyperparameters(step: Step) -> list[str]:
    """learning rate, epochs or steps, adapter (and LoRA r), sequence length, batch: as the recipe trained."""
    if step.provenance.data is None or step.run.existing(RunDir.RECIPE) is None:
        return ["-"] * 5
    try:
        recipe = load_yaml(step.run / RunDir.RECIPE)
    except RunDirError:
        return ["-"] * 5
    recipe = recipe if isinstance(recipe, dict) else {}
    numbers = {key: finite_number(recipe.get(key)) for key in ("learning_rate", "num_epochs", "max_steps", "lora_r",
                                                         "sequence_len", "micro_batch_size",
                                                         "gradient_accumulation_steps")}
    method = step.provenance.method
    processes = method.nodes * method.processes_per_node if method is not None else 1
    length = f"{numbers['max_steps']:g} steps" if numbers["max_steps"] else \
        f"{numbers['num_epochs']:g} epochs" if numbers["num_epochs"] else "-"
    adapter = method.adapter if method is not None and method.adapter else "full"
    if numbers["lora_r"] and method is not None and method.adapter:
        adapter += f" r={numbers['lora_r']:g}"
    micro, accumulation = numbers["micro_batch_size"], numbers["gradient_accumulation_steps"] or 1
    batch = f"{micro * accumulation * processes:g} ({micro:g} x {accumulation:g} x {processes})" if micro else "-"
    rate = f"{numbers['learning_rate']:g}" if numbers["learning_rate"] else "-"
    sequence = f"{numbers['sequence_len']:g}" if numbers["sequence_len"] else "-"
    return [rate, length, md_text(adapter), sequence, batch]


def stop_tokens(staging: Path, tokenizer) -> list[str]:
    """The tokens generation stops at: generation_config.json's eos_token_id, else the tokenizer's EOS."""
    path = staging / GENERATION_CONFIG
    settings = load_json(path) if path.is_file() else {}
    ids = settings.get("eos_token_id") if isinstance(settings, dict) else None
    ids = [ids] if isinstance(ids, int) else ids if isinstance(ids, list) else [tokenizer.eos_token_id]
    tokens = [tokenizer.convert_ids_to_tokens(index) for index in ids if isinstance(index, int)]
    return [token for token in tokens if isinstance(token, str)]


def usage(plan: ReleasePlan, model_run: Step, root_id: str | None, stops: list[str]) -> list[str]:
    """How to load and prompt the released folder (a transformers snippet)."""
    repo = plan.push.repo_id or plan.name
    lines = ["## How to use", ""]
    if plan.what == ReleaseWhat.adapter:
        base_name, _, on_hub = adapter_base_name(model_run)
        snippet = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                   f"tokenizer = AutoTokenizer.from_pretrained({repo!r})",
                   f"base = AutoModelForCausalLM.from_pretrained({base_name!r}, dtype=\"auto\")"
                   + ("" if on_hub else "  # the base model's folder: it is not on the Hub"),
                   f"model = PeftModel.from_pretrained(base, {repo!r})"]
    else:
        snippet = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                   f"tokenizer = AutoTokenizer.from_pretrained({repo!r})",
                   f"model = AutoModelForCausalLM.from_pretrained({repo!r}, dtype=\"auto\")"]
    if plan.template:
        messages = [{"role": "system", "content": plan.system_prompt}] if plan.system_prompt else []
        messages.append({"role": "user", "content": "Qual è la capitale d'Italia?"})
        snippet += [f"messages = {messages!r}",
                    "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
                    "return_tensors=\"pt\", return_dict=True)"]
    else:
        snippet += ["inputs = tokenizer(\"La capitale d'Italia è\", return_tensors=\"pt\")"]
    snippet += ["output = model.generate(**inputs, max_new_tokens=256)",
                "print(tokenizer.decode(output[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"]
    lines += [fenced("\n".join(snippet), "python"), ""]
    if plan.template:
        prompt = ("the template's default system prompt" if plan.system_prompt is None
                  else "no system prompt" if not plan.system_prompt else "the system prompt above")
        lines.append(f"The model answers in the {code(plan.template)} chat format (the tokenizer's chat template), "
                     f"trained with {prompt}.")
    if stops:
        lines.append("Generation stops at " + ", ".join(code(token) for token in stops)
                     + f" (``eos_token_id`` in {code(GENERATION_CONFIG)}; ``generate`` reads it).")
    if plan.what == ReleaseWhat.adapter and not root_id:
        lines.append("The adapter applies to a base model that is not on the Hugging Face Hub; "
                     "release it merged (release.what=model) to publish a model anyone can load.")
    return lines + [""]


def lineage_table(steps: list[Step]) -> list[str]:
    header = ["step", "stage", "data", "learning rate", "length", "adapter", "sequence length", "batch",
              "time", "GPU hours"]
    lines = ["## Training lineage", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, step in enumerate(steps, 1):
        data = md_text(step.config.data.name) if step.provenance.data is not None else "-"
        cells = [f"{index}. {md_text(step.name)}", md_text(step.config.stage.name), data,
                 *hyperparameters(step), time_cell(step.status), gpu_cell(step.status)]
        lines.append("| " + " | ".join(cells) + " |")
    hours = [step.status.gpu_hours for step in steps]
    if all(value is not None for value in hours):
        lines += ["", f"GPU hours in all: {sum(hours):.2f}."]
    return lines + ["", "Batch: sequences per optimiser step (micro batch x gradient accumulation x processes)."]


def preset_provenance_lines(steps: list[Step]) -> list[str]:
    """Where the values of each step's preset come from (steps that came from a preset only)."""
    lines = []
    for index, step in enumerate(steps, 1):
        section = provenance_section(step.config, step.provenance.overrides, heading=None)
        if section:
            lines += [f"Step {index}. {md_text(step.name)}:", "", *section]
    return [f"## {PROVENANCE_HEADING}", "", *lines] if lines else []


def licence_lines(licence: Licence, root: Step, steps: list[Step], notices: list[str]) -> list[str]:
    """The licences of the base model and of every dataset; a non-commercial one in bold (and noticed)."""
    lines = ["## Licence", ""]
    given = root.config.model.license
    base = md_text(root.config.model.name)
    shown = f"**{md_text(given)}**" if non_commercial(given) else md_text(given or "not recorded")
    where = f", see {md_text(licence.license_link)}" if licence.license == "other" and licence.license_link else ""
    lines.append(f"- Base model {base}: {shown}{where}.")
    if non_commercial(given):
        notices.append(f"the base model {root.config.model.name} is licensed {single_line(given)}: "
                       "the released model may not be used commercially")
    for step in steps:
        text = data_licence(step)
        if step.provenance.data is None:
            continue
        name = md_text(step.provenance.data.name)
        if non_commercial(text):
            lines.append(f"- Data {name} (stage {md_text(step.config.stage.name)}): **{md_text(text)} "
                         f"(non-commercial: the released model may not be used commercially)**.")
            notices.append(f"data {step.provenance.data.name} is licensed {single_line(text)}: "
                           "the released model may not be used commercially")
        else:
            lines.append(f"- Data {name} (stage {md_text(step.config.stage.name)}): "
                         f"{md_text(text or 'not recorded')}.")
    return lines + [""]


def evaluation_lines(name: str, scored: list[Scored]) -> list[str]:
    if not scored:
        return ["## Evaluation", "", f"Not evaluated: release an eval run ({code('run.input_model=<eval run>')}) to "
                "publish scores with the model.", ""]
    lines = ["## Evaluation", ""]
    for item in scored:
        lines += [f"{code(item.plan.eval)} (run {md_text(item.step.name)}, mode {code(item.results.mode)}):", "",
                  results_table(md_text(name), item.results.scores, item.plan, item.results.harness), ""]
    return lines


def common_prefix(lists: list[list[str]]) -> list[str]:
    prefix = list(lists[0]) if lists else []
    for items in lists[1:]:
        while prefix and items[:len(prefix)] != prefix:
            prefix.pop()
    return prefix


def reproduce_lines(run: RunDir, steps: list[Step], scored: list[Scored]) -> list[str]:
    """The commands that make the model again: one pipeline command when every run is a step of the
    same pipeline (each step records the command line, then its own overrides), else one per run."""
    records = [step.provenance.overrides for step in steps] + [item.step.provenance.overrides for item in scored]
    if run.is_run():
        records.append(run.provenance().overrides)
    pipelines = {next((o.split("=", 1)[1] for o in overrides if o.startswith("pipeline=")), None)
                 for overrides in records}
    if len(pipelines) == 1 and None not in pipelines:
        command = [f"# the whole pipeline {comment(pipelines.pop())}: every step above, in order (overrides given "
                   "to one step only, +pipeline.<step>=[...], are in that step's record)",
                   reproduce_command(common_prefix(records))]
        return ["## Reproduce", "", fenced("\n".join(command), "bash"), ""]
    commands = []
    for index, step in enumerate(steps, 1):
        commands += [f"# {index}. {comment(step.config.stage.name)}: {comment(step.name)}",
                     reproduce_command(step.provenance.overrides)]
    for item in scored:
        commands += [f"# eval: {comment(item.step.name)}", reproduce_command(item.step.provenance.overrides)]
    if run.is_run():
        commands += ["# release", reproduce_command(run.provenance().overrides)]
    return ["## Reproduce", "", fenced("\n".join(commands), "bash"), "",
            f"{code(PATH_PLACEHOLDER)} stands for a folder of the machine that made the runs "
            "(run.input_model: the run directory of the step before).", ""]


# --- the card -------------------------------------------------------------------------------------


def card_data(plan: ReleasePlan, licence: Licence, root_id: str | None, steps: list[Step], results):
    from huggingface_hub import ModelCardData

    adapter = plan.what == ReleaseWhat.adapter
    tags = ["llamantino", "axolotl", "italian"] + [slug(step.config.stage.name) for step in steps]
    return ModelCardData(
        model_name=plan.name if results else None, eval_results=results or None, base_model=root_id,
        base_model_relation="adapter" if adapter else "finetune", datasets=hub_datasets(steps) or None,
        language=["it"], library_name="peft" if adapter else "transformers", pipeline_tag=TASK_TYPE,
        tags=list(dict.fromkeys(tags + (["lora", "peft"] if adapter else []))), license=licence.license,
        license_name=licence.license_name, license_link=licence.license_link)


def render_card(plan: ReleasePlan, run: RunDir, steps: list[Step], scored: list[Scored], data, licence: Licence,
                stops: list[str], notices: list[str]) -> str:
    root, model_run = steps[0], steps[-1]
    root_id = root_hub_id(root)
    kind = "LoRA adapter" if plan.what == ReleaseWhat.adapter else "model"
    chain = " → ".join(md_text(step.config.stage.name) for step in steps)
    if root_id:
        origin = f"[{md_text(root_id)}](https://huggingface.co/{root_id})"
    elif root.provenance.model.kind == SourceKind.built:
        origin = (f"{md_text(root.config.model.name)}, a model built locally by llamantino (not on the Hugging Face "
                  "Hub, so the card names no ``base_model``)")
    else:
        origin = (f"{md_text(root.config.model.name)}, a local model folder (not on the Hugging Face Hub, so the "
                  "card names no ``base_model``)")
    body = [f"# {md_text(plan.name)}", "",
            f"An Italian {kind} trained with llamantino ({chain}) from {origin}.", ""]
    body += [f"**Notice: {md_text(notice)}.**" for notice in notices] + ([""] if notices else [])
    body += usage(plan, model_run, root_id, stops)
    body += lineage_table(steps) + [""]
    body += preset_provenance_lines(steps)
    body += evaluation_lines(plan.name, scored)
    body += licence_lines(licence, root, steps, [])
    body += reproduce_lines(run, steps, scored)
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
