"""Preference pairs for DPO: rows become ``prompt`` / ``chosen`` / ``rejected`` strings.

Axolotl resolves external DPO strategies only from a top-level name, so recipes say
``type: llamantino_plugin.dpo`` (a function of the package) and that function lives here.
The prompt is the chat template's rendering up to the assistant's generation prompt; chosen and
rejected are what the template adds for each answer (turn terminator included), so DPO sees the
same format as SFT. With the alpaca_it template the prompt is the Italian Alpaca prompt.
"""

from __future__ import annotations

from functools import partial

from llamantino_plugin.args import LlamantinoArgs, find_spec, plugin_args
from llamantino_plugin.formats import DataFormat, RowError, columns_for, read_preference
from llamantino_plugin.templates import default_template, render_chat, render_instruction, template_info

FORMAT = DataFormat.preferences  # the format this loader reads


class PreferenceError(ValueError):
    """A preference row or dataset that cannot be trained on."""


def spec_for(cfg, dataset_index: int, args: LlamantinoArgs | None = None) -> dict:
    """Columns of the ``dataset_index``-th dataset, from its llamantino_datasets entry."""
    dataset = (cfg.get("datasets") or [])[dataset_index]
    spec = find_spec(args or plugin_args(cfg), dataset)
    return {"columns": columns_for(FORMAT, spec.columns if spec else None), "path": dataset.get("path")}


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


def script_pair(pair: dict, tokenizer, max_length: int | None, max_prompt: int | None) -> dict:
    """One pair in script-exact mode (``script_exact.py``): strings for Axolotl's length filter and the
    previews, and the exact ids TRL 0.8.5 trained on. The strings are the script's with the BOS and EOS
    TRL added; a cut part is the text of its kept ids, re-cut if its text tokenises longer."""
    from llamantino_plugin.script_exact import IDS_COLUMNS, dpo_ids, dpo_strings

    strings = dpo_strings(pair["prompt"], {"role": "assistant", "content": pair["chosen"]},
                          {"role": "assistant", "content": pair["rejected"]}, tokenizer.bos_token or "")
    ids = dpo_ids(tokenizer, strings, max_length, max_prompt)
    out = {column: ids[key] for key, column in IDS_COLUMNS.items()}
    for key, part, last in (("prompt", "prompt_ids", True), ("chosen", "chosen_ids", False),
                            ("rejected", "rejected_ids", False)):
        text = tokenizer.decode(ids[part], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out[key] = _keep_tokens(tokenizer, text, len(ids[part]), last=last, keep_head=False)
    return out


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _keep_tokens(tokenizer, text: str, limit: int, last: bool, keep_head: bool = True) -> str:
    """``text`` cut to at most ``limit`` tokens, keeping its last (or first) ones; a leading special
    token (BOS) stays at the head of a prompt unless ``keep_head`` is false. Cuts fall on token
    boundaries of the whole text."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if len(ids) <= limit:
        return text
    head = text[:offsets[0][1]] if keep_head and last and ids[0] in tokenizer.all_special_ids else ""
    for keep in range(limit - bool(head), 0, -1):  # re-tokenised pieces may merge differently: shrink until it fits
        cut = head + text[offsets[len(ids) - keep][0]:] if last else text[:offsets[keep - 1][1]]
        if _count(tokenizer, cut) <= limit:
            return cut
    return head


def truncate_pair(strings: dict, tokenizer, max_length: int, max_prompt: int, lengths: tuple[int, int, int]) -> dict:
    """TRL's DPO truncation before 0.13 (ANITA trained with TRL 0.8.5; its default ``keep_end``): when
    prompt + the longer answer exceed ``max_length``, the prompt keeps its last ``max_prompt`` tokens;
    if that is still too long, each answer keeps its first ``max_length - max_prompt``. TRL 1.9 has no
    prompt limit (Axolotl 0.19 declares ``max_prompt_len`` and ignores it), so it happens here.
    ``lengths``: the token counts of prompt, chosen and rejected, measured by the caller."""
    prompt, chosen, rejected = strings["prompt"], strings["chosen"], strings["rejected"]
    prompt_tokens, longer = lengths[0], max(lengths[1:])
    if prompt_tokens + longer > max_length:
        prompt = _keep_tokens(tokenizer, prompt, max_prompt, last=True)
        if _count(tokenizer, prompt) + longer > max_length:
            budget = max(max_length - max_prompt, 1)
            chosen, rejected = (_keep_tokens(tokenizer, text, budget, last=False) for text in (chosen, rejected))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _truncate_batch(out: dict, tokenizer, max_length: int, max_prompt: int) -> dict:
    """Every pair of a batch measured in one tokenizer call per column; only over-long ones are cut."""
    counts = [[len(ids) for ids in tokenizer(out[key], add_special_tokens=False)["input_ids"]]
              for key in ("prompt", "chosen", "rejected")] if out["prompt"] else [[], [], []]
    for index, lengths in enumerate(zip(*counts)):
        if lengths[0] + max(lengths[1:]) > max_length:
            cut = truncate_pair({key: out[key][index] for key in out}, tokenizer, max_length, max_prompt, lengths)
            for key in out:
                out[key][index] = cut[key]
    return out


def transform(batch, *, columns: dict, template: str, system_prompt: str | None, policy: str,
              path: str, tokenizer=None, max_length: int | None = None, max_prompt: int | None = None,
              script_exact: bool = False) -> dict:
    """Batched map: bad rows fail (strict) or are dropped (skip); good rows become DPO strings, with
    over-long prompts truncated when ``max_prompt`` is set; in script-exact mode, also their exact ids."""
    from llamantino_plugin.script_exact import IDS_COLUMNS

    if script_exact and tokenizer is None:
        raise PreferenceError("script-exact DPO pairs need the tokenizer (their ids are built here)")
    out = {"prompt": [], "chosen": [], "rejected": [], **({column: [] for column in IDS_COLUMNS.values()}
                                                         if script_exact else {})}
    names = list(batch)
    bos = tokenizer.bos_token if tokenizer is not None and tokenizer.bos_token else ""
    for values in zip(*batch.values()):
        row = dict(zip(names, values))
        try:
            pair = read_preference(row, columns, as_script=script_exact)
            strings = (script_pair(pair, tokenizer, max_length, max_prompt) if script_exact
                       else pair_strings(pair, template, system_prompt, bos))
        except RowError as exc:
            if policy == "strict":
                raise PreferenceError(
                    f"dataset {path!r} [{exc.column}]: {exc.message} (set llamantino_bad_rows: skip to drop such rows)"
                ) from None
            continue
        for key in out:
            out[key].append(strings[key])
    if max_prompt and max_length and tokenizer is not None and not script_exact:
        out = _truncate_batch(out, tokenizer, max_length, max_prompt)
    return out


def load(cfg, dataset_idx: int = 0, **kwargs):
    """The DPO strategy: a batched transform that may drop rows, removing the original columns."""
    args = plugin_args(cfg)
    spec = spec_for(cfg, dataset_idx, args)
    fn = partial(transform, columns=spec["columns"], template=args.llamantino_template or default_template(FORMAT),
                 system_prompt=args.llamantino_system_prompt, policy=args.llamantino_bad_rows, path=spec["path"],
                 max_length=cfg.get("sequence_len"), max_prompt=cfg.get("max_prompt_len"),
                 script_exact=args.llamantino_script_exact)

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
