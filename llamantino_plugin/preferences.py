"""Preference pairs for DPO: rows become ``prompt`` / ``chosen`` / ``rejected`` strings.

Axolotl resolves external DPO strategies only from a top-level name, so recipes say
``type: llamantino_plugin.dpo`` (a function of the package) and that function lives here.
The prompt is the chat template's rendering up to the assistant's generation prompt; chosen and
rejected are what the template adds for each answer (turn terminator included), so DPO sees the
same format as SFT. With the alpaca_it template the prompt is the Italian Alpaca prompt.
"""

from __future__ import annotations

from functools import partial

from llamantino_plugin.formats import RowError, columns_for, read_preference
from llamantino_plugin.args import find_spec
from llamantino_plugin.templates import default_template, render_chat, render_instruction, template_info


class PreferenceError(ValueError):
    """A preference row or dataset that cannot be trained on."""


def spec_for(cfg, dataset_index: int) -> dict:
    """Columns of the ``dataset_index``-th dataset, from its llamantino_datasets entry."""
    dataset = (cfg.get("datasets") or [])[dataset_index]
    spec = find_spec(cfg, dataset) or {}
    return {"columns": columns_for("preferences", spec.get("columns")), "path": dataset.get("path")}


def pair_strings(pair: dict, template: str, system_prompt: str | None, bos: str = "") -> dict:
    """Render one canonical pair (``formats.read_preference``) to the three DPO strings."""
    if template_info(template).kind == "instruction":
        user = "\n\n".join(m["content"] for m in pair["prompt"] if m["role"] == "user")
        return {"prompt": bos + render_instruction(template, user), "chosen": pair["chosen"], "rejected": pair["rejected"]}
    prompt = render_chat(template, pair["prompt"], system_prompt, add_generation_prompt=True)
    out = {"prompt": prompt}
    for key in ("chosen", "rejected"):
        full = render_chat(template, pair["prompt"] + [{"role": "assistant", "content": pair[key]}], system_prompt)
        if not full.startswith(prompt):
            raise PreferenceError(f"template {template!r} does not extend the prompt with the answer")
        out[key] = full[len(prompt):]
    return out


def transform(batch, *, columns: dict, template: str, system_prompt: str | None, policy: str,
              path: str, tokenizer=None) -> dict:
    """Batched map: bad rows fail (strict) or are dropped (skip); good rows become DPO strings."""
    out = {"prompt": [], "chosen": [], "rejected": []}
    names = list(batch)
    bos = tokenizer.bos_token if tokenizer is not None and tokenizer.bos_token else ""
    for values in zip(*batch.values()):
        row = dict(zip(names, values))
        try:
            strings = pair_strings(read_preference(row, columns), template, system_prompt, bos)
        except RowError as exc:
            if policy == "strict":
                raise PreferenceError(
                    f"dataset {path!r} [{exc.column}]: {exc.message} (set llamantino_bad_rows: skip to drop such rows)"
                ) from None
            continue
        for key in out:
            out[key].append(strings[key])
    return out


def load(cfg, dataset_idx: int = 0, **kwargs):
    """The DPO strategy: a batched transform that may drop rows, removing the original columns."""
    spec = spec_for(cfg, dataset_idx)
    template = cfg.get("llamantino_template") or default_template("preferences")
    fn = partial(transform, columns=spec["columns"], template=template,
                 system_prompt=cfg.get("llamantino_system_prompt"),
                 policy=cfg.get("llamantino_bad_rows") or "strict", path=spec["path"])

    def transform_fn(batch, tokenizer=None):
        return fn(batch, tokenizer=tokenizer)

    return transform_fn, {"batched": True, "remove_columns": "__all__"}


def account(cfg, dataset, dataset_index: int, tokenizer) -> dict:
    """Length accounting of one raw preference dataset, with Axolotl's own drop rule.

    Axolotl drops a pair when prompt+chosen or prompt+rejected is longer than ``sequence_len``
    and, when every pair is dropped, TRL then fails with a bare ``StopIteration``. This counts the
    pairs first so the run can say how many go and why, and stop clearly when none is left.
    """
    transform_fn, _ = load(cfg, dataset_index)
    pairs = transform_fn(dataset[:], tokenizer=tokenizer)
    counts = {"rows": len(dataset), "invalid": len(dataset) - len(pairs["prompt"])}
    limit = cfg.sequence_len

    def lengths(texts):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    prompt, chosen, rejected = (lengths(pairs[key]) for key in ("prompt", "chosen", "rejected"))
    needed = [p + max(c, r) for p, c, r in zip(prompt, chosen, rejected)]
    counts["too_long"] = sum(n > limit for n in needed)
    if needed:
        counts["shortest_pair_tokens"] = min(needed)
        counts["longest_pair_tokens"] = max(needed)
    counts["kept"] = len(needed) - counts["too_long"]
    return counts
