"""The model card (README.md, Hugging Face conventions) written into a finished run's output.

It embeds the exact resolved recipe (the Hydra overrides, the composed config and the Axolotl YAML
that trained), the provenance (code and package versions, input revisions and hashes) and the
datasets, so the model can be reproduced from its card alone. Evaluation results are merged in by
``python -m llamantino.job.evaluate``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import yaml

from llamantino.config.provenance import provenance_rows
from llamantino.job.machine_paths import PATH_PLACEHOLDER, reproduce_command
from llamantino.records.jobstate import RunStatus
from llamantino.records.provenance import Provenance
from llamantino.records.rundir import RunDir, read_bytes, write_text

EVAL_BEGIN = "<!-- llamantino:eval -->"
EVAL_END = "<!-- /llamantino:eval -->"


def _front_matter(provenance: Provenance, config) -> dict:
    model, data, method = provenance.model, provenance.data, provenance.method
    meta: dict = {"language": ["it"], "library_name": "peft" if method is not None and method.adapter else "transformers",
                  "tags": ["llamantino", "axolotl", "italian", config.stage.name]}
    if model.hub_id:
        meta["base_model"] = model.hub_id
    if data is not None and data.hub_id:
        meta["datasets"] = [data.hub_id]
    license_ = config.model.license
    if license_:
        meta["license"] = "other" if " " in license_ else license_
    meta["pipeline_tag"] = "text-generation"
    return meta


def _fence(text: str, lang: str) -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


def table_cell(value) -> str:
    """Free text as one Markdown table cell that shows as itself: one line, no markup, HTML or ``|``."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|~#])", r"\\\1", text)


STATUS_MEANING = ("verified: read in the named source; unpublished: the authors published nothing, this is a "
                  "documented choice; conflict: the sources disagree, the preset follows one and the override "
                  "named follows the other")


PROVENANCE_HEADING = "Provenance of this preset's values"


def provenance_section(config, overrides: list[str], heading: str | None = "##") -> list[str]:
    """The table of where each value of the run's preset comes from: empty for a run that came from no
    preset (``experiment`` unset). ``overrides``: the run's command line, whose changes are marked;
    ``heading``: the Markdown heading level of its title (None: no title)."""
    if not config.experiment:
        return []
    name = table_cell(config.experiment)
    lines = [f"{heading} {PROVENANCE_HEADING}", ""] if heading else []
    rows = provenance_rows(config, list(overrides))
    if not rows:
        return lines + [f"The preset {name} records no provenance table.", ""]
    lines += [f"This run came from the preset {name} (conf/experiment/{name}.yaml). Status {STATUS_MEANING}.", "",
              "| setting | value | source | status |", "|---|---|---|---|"]
    for row in rows:
        value = table_cell(row.value)
        if row.changed_by and row.override and row.override in row.changed_by.split(", "):
            value += f" (the command line's {table_cell(row.override)}: this run follows the other source)"
        elif row.changed_by:
            value += (f" (changed on the command line: {table_cell(row.changed_by)}; source and status are the "
                      "preset's value's)")
        status = table_cell(row.status) + (f" (other source: {table_cell(row.override)})" if row.override else "")
        # the setting is a dotted key of lower-case letters, digits and _ (the schema checks it): a code span
        lines.append(f"| `{row.setting}` | {value} | {table_cell(row.source) or '-'} | {status} |")
    return lines + [""]


def render_card(run: RunDir, provenance: Provenance, status: RunStatus) -> str:
    """The card's Markdown text (pure, given the run directory's files)."""
    config = run.config()
    recipe = run.read_text(RunDir.RECIPE)
    data = provenance.data
    losses = status.losses or {}
    lines = ["---", yaml.safe_dump(_front_matter(provenance, config), sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [
        f"# {config.run.name or run.name}",
        "",
        f"Trained with llamantino {provenance.llamantino} "
        f"(stage `{config.stage.name}`, model `{config.model.name}`, data `{config.data.name}`, "
        f"hardware `{config.hardware.name}`).",
        "",
        "## Reproduce",
        "",
        _fence(reproduce_command(provenance.overrides), "bash"),
        "",
        f"Paths of this machine are shown as `{PATH_PLACEHOLDER}`. Code: git commit `{provenance.git.get('commit')}`" + (" (with uncommitted changes)" if provenance.git.get("dirty") else ""),
        "",
        "## Data",
        "",
    ]
    if data is not None:
        lines.append(f"- `{data.name}` ({data.format}): "
                     + (f"hub `{data.hub_id}` revision `{data.revision or 'not pinned'}`" if data.hub_id
                        else f"local file, sha256 `{data.sha256}`"))
    report = provenance.data_report
    if report:
        for name, counts in report.items():
            shown = ", ".join(f"{k} {v}" for k, v in counts.items()) if isinstance(counts, dict) else str(counts)
            lines.append(f"- loader report for `{name}`: {shown}")
    lines += ["", "## Training", ""]
    if losses:
        lines.append(f"Loss: first {losses['first']:.4f}, last {losses['last']:.4f}, best {losses['best']:.4f} "
                     f"over {losses['count']} logged steps.")
    for notice in provenance.notices:
        lines.append(f"- notice: {notice}")
    lines += [""] + provenance_section(config, provenance.overrides)
    lines += [EVAL_BEGIN, EVAL_END, ""]
    if recipe is not None:
        lines += ["## Axolotl recipe (as trained)", "", _fence(recipe, "yaml"), ""]
    lines += ["## Composed llamantino config", "", _fence(run.read_text(RunDir.CONFIG) or "", "yaml"), "",
              "## Provenance", "", _fence(provenance.to_json(), "json"), ""]
    return "\n".join(lines)


def write_model_card(run: RunDir, output_dir: Path, provenance: Provenance, status: RunStatus) -> Path:
    """Write README.md into ``output_dir`` (replacing Axolotl's shorter card)."""
    path = Path(output_dir) / RunDir.CARD
    write_text(path, render_card(run, provenance, status))
    return path


def merge_eval_section(card: Path, markdown: str) -> None:
    """Put evaluation results into an existing card, between the llamantino eval markers."""
    text = read_bytes(card).decode("utf-8", errors="replace")
    section = f"{EVAL_BEGIN}\n## Evaluation\n\n{markdown.rstrip()}\n{EVAL_END}"
    if EVAL_BEGIN in text and EVAL_END in text:
        start, end = text.index(EVAL_BEGIN), text.index(EVAL_END) + len(EVAL_END)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    write_text(card, text)
