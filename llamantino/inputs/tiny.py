"""Build the tiny, random-init Llama that every CPU test and the embedded default job train.

The model and its byte-level BPE tokenizer are built locally from the Italian samples in
``datasets_ita/samples`` (nothing comes from the Hugging Face Hub), cached under
``$LLAMANTINO_HOME/models`` and keyed by a hash of the builder settings and of the sample files,
so the same inputs always give the same directory and the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from llamantino.paths import SAMPLES_DIR, cache_home

#: Special tokens of both LLaMAntino chat formats, so the tiny tokenizer can render each exactly.
SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<pad>",
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]

#: Architecture of the tiny model: big enough to learn something, small enough for 2 CPU cores.
TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 1024,
    "tie_word_embeddings": False,
}
_BUILDER_VERSION = 1
_SEED = 1234


def _sample_files() -> list[Path]:
    return sorted(SAMPLES_DIR.glob("*.jsonl"))


def tiny_model_key() -> str:
    """Return the cache key: a hash of the builder settings and the sample files' bytes."""
    digest = hashlib.sha256(json.dumps([_BUILDER_VERSION, TINY_CONFIG, SPECIAL_TOKENS, _SEED]).encode())
    for path in _sample_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tiny_model_dir() -> Path:
    """Where the tiny model lives once built (the path is known before it exists)."""
    return cache_home() / "models" / f"tiny_llama-{tiny_model_key()}"


def _iter_sample_texts():
    """Every string in the sample files: the corpus the tokenizer is trained on."""

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    for path in _sample_files():
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield from strings(json.loads(line))


def _build(target: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_iter_sample_texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )
    tokenizer.add_bos_token = True
    tokenizer.save_pretrained(target)

    torch.manual_seed(_SEED)
    config = LlamaConfig(
        **{**TINY_CONFIG, "vocab_size": len(tokenizer)},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    (target / "llamantino_tiny.json").write_text(
        json.dumps({"key": tiny_model_key(), "builder_version": _BUILDER_VERSION}, indent=2) + "\n"
    )


def build_sentencepiece_tokenizer(target: Path, vocab_size: int = 1000) -> Path:
    """A Llama-2-style tokenizer trained on the Italian samples: a real SentencePiece BPE model with
    byte fallback and a dummy prefix (every encoded string starts with "▁"), saved as the fast
    tokenizer Llama-2 ships (``tokenizer.model`` beside ``tokenizer.json``). Tests use it to check that
    prompts and responses tokenise as the whole rendered text does; the tiny model keeps its
    byte-level BPE, which has no dummy prefix.
    """
    import io

    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = [text for text in _iter_sample_texts() if text.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2,
        num_threads=1)
    target.mkdir(parents=True, exist_ok=True)
    (target / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(target / "tokenizer.model"))
    # The fast form, as transformers converts Llama-2's: BPE merges recovered from the pieces' ranks.
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for piece, index in sorted(vocab.items(), key=lambda item: -sp.get_score(item[1])):
        pairs = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges += [(left, right, sp.get_score(index)) for left, right in sorted(pairs, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))]
    merges = [(left, right) for left, right, _ in sorted(merges, key=lambda merge: merge[2], reverse=True)]
    fast = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    fast.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    fast.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    fast.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=fast, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        model_max_length=4096)
    tokenizer.save_pretrained(target)
    return target


def ensure_tiny_model() -> Path:
    """Build the tiny model once (atomically) and return its directory."""
    target = tiny_model_dir()
    if (target / "llamantino_tiny.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _build(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: theirs is identical
            if not (target / "llamantino_tiny.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


if __name__ == "__main__":
    print(ensure_tiny_model())
