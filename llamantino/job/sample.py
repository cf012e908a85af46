"""A few greedy tokens from a freshly trained model, from a prompt taken from its own training data.

The local launcher prints one after a small model trains (``model.params_b`` up to SAMPLE_MAX_B),
so the first run shows what the model learned, not only a loss; it is also written to
``<run>/sample.txt``.
"""

from __future__ import annotations

from pathlib import Path

from llamantino.records.provenance import OutputKind
from llamantino.records.rundir import RunDir
from llamantino.config.schema import LlamantinoConfig

SAMPLE_MAX_B = 1.0  # larger models are not loaded a second time just for a sample
MAX_NEW_TOKENS = 48  # an answer of the sample data fits; generation ends earlier at the template's turn end


def first_prompt(cfg: LlamantinoConfig, data_file: Path) -> tuple[str, bool]:
    """(prompt text, whether the tokenizer adds BOS) from the first good row of the training data."""
    from llamantino_plugin.encode import encoding_of
    from llamantino_plugin.formats import Encoding, columns_for, format_spec, iter_jsonl
    from llamantino_plugin.templates import render_chat, render_instruction

    fmt, template = str(cfg.data.format), cfg.template
    spec, columns = format_spec(fmt), columns_for(fmt, cfg.data.columns)
    for _, row in iter_jsonl(data_file):
        try:
            value = spec.reader(row, columns)
        except ValueError:
            continue
        if spec.corpus:  # the first words of a document
            return " ".join(value.split()[:8]), True
        if encoding_of(fmt, template) is Encoding.prompt_response:
            fields = spec.to_row(value, False)
            return render_instruction(template, fields["instruction"], fields["input"]), True
        return render_chat(template, spec.prompt(value), cfg.prompt.system_prompt, add_generation_prompt=True), False
    return "", True


def generate_sample(run: RunDir, cfg: LlamantinoConfig) -> tuple[str, str] | None:
    """(prompt, greedy continuation) of a trained run, or None when there is nothing to sample."""
    provenance = run.provenance()
    output, data = provenance.output, provenance.data
    if not output.trained or data is None or not data.local or cfg.model.params_b > SAMPLE_MAX_B:
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    prompt, add_bos = first_prompt(cfg, Path(data.local))
    if not prompt:
        return None
    out_dir = run / output.path
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    if output.kind == OutputKind.adapter:
        from peft import PeftModel

        base = output.base_model.local or output.base_model.ref
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(out_dir))
    model.eval()
    from llamantino.job.generation import stop_token_ids

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_bos)
    stops = stop_token_ids(tokenizer, output.template)
    with torch.no_grad():
        generated = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=stops,
                                   pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0])
    completion = tokenizer.decode(generated[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    (run / RunDir.SAMPLE).write_text(f"prompt:\n{prompt}\n\ngreedy continuation (at most {MAX_NEW_TOKENS} tokens):\n{completion}\n",
                                     encoding="utf-8")
    return prompt, completion
