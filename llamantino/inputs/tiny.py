"""Build the tiny, random-init models that every CPU test and the embedded default job train.

Each builder makes a "tiny twin" of a model family: the family's architecture (transformers'
model class) at toy size, and a byte-level BPE tokenizer trained on the Italian samples in
``datasets_ita/samples`` with the family's special tokens and its bos/eos/pad roles, so chat
templates, label masks and stop tokens work on it as on the real model. Nothing comes from the
Hugging Face Hub. Each model is cached under ``$LLAMANTINO_HOME/models/<builder>-<key>``, keyed by a
hash of the builder's settings and of the sample files, so the same inputs always give the same
directory and the same weights.

``tiny_llama`` is the model of the embedded default job and of most tests (their seeded losses are
pinned): its key, weights and tokenizer never change. The other twins (``tiny_mixtral``,
``tiny_phi3``, ``tiny_qwen2``, ``tiny_gemma2``) let the model families of ``conf/model`` train end to
end on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llamantino.errors import ConfigError
from llamantino.paths import SAMPLES_DIR, cache_home

#: Special tokens of both LLaMAntino chat formats, so the tiny Llama's tokenizer can render each exactly.
SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<pad>",
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]

#: Architecture of the tiny Llama: big enough to learn something, small enough for 2 CPU cores.
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
MARKER = "llamantino_tiny.json"  # written last into a built folder: it is complete


@dataclass(frozen=True)
class TinyBuilder:
    """One tiny twin: its transformers classes, its toy-size config and its tokenizer's special tokens.

    The BPE trainer numbers ``special_tokens`` first, in this order, so their ids follow the real
    tokenizer's order; ``bos``/``eos``/``unk``/``pad`` name their roles (None: the real tokenizer has
    no such token), ``add_bos``: whether encoding puts ``bos`` first, as the real tokenizer does."""

    name: str
    architecture: str  # transformers' model_type
    config_class: str
    model_class: str
    config: dict[str, Any]
    special_tokens: tuple[str, ...]
    eos: str
    bos: Optional[str] = None
    unk: Optional[str] = None
    pad: Optional[str] = None
    add_bos: bool = False
    version: int = 1
    source: str = ""  # the real tokenizer the roles copy

    def key(self) -> str:
        """The cache key: a hash of the builder's settings and the sample files' bytes."""
        if self.name == "tiny_llama":  # its key is pinned: the formula of the one builder before the others
            digest = hashlib.sha256(json.dumps([_BUILDER_VERSION, TINY_CONFIG, SPECIAL_TOKENS, _SEED]).encode())
        else:
            digest = hashlib.sha256(json.dumps(
                [self.name, self.version, self.architecture, self.config_class, self.model_class, self.config,
                 list(self.special_tokens), [self.bos, self.eos, self.unk, self.pad, self.add_bos], _SEED]).encode())
        for path in _sample_files():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    @property
    def additional_special_tokens(self) -> list[str]:
        roles = {self.bos, self.eos, self.unk, self.pad}
        return [token for token in self.special_tokens if token not in roles]


# The twins share the tiny Llama's size (2 layers, hidden 64, 4 heads, vocabulary 1024) and differ where
# their families do: experts and a router, fused projections, attention biases, soft-capping, tied embeddings.
_SIZE = {key: value for key, value in TINY_CONFIG.items() if key != "tie_word_embeddings"}

BUILDERS: dict[str, TinyBuilder] = {builder.name: builder for builder in (
    TinyBuilder(
        name="tiny_llama", architecture="llama", config_class="LlamaConfig", model_class="LlamaForCausalLM",
        config=TINY_CONFIG, special_tokens=tuple(SPECIAL_TOKENS), bos="<s>", eos="</s>", unk="<unk>", pad="<pad>",
        add_bos=True, version=_BUILDER_VERSION, source="Llama-2's tokenizer, with Llama-3's chat tokens added"),
    # Mixtral-8x7B: 8 experts, 2 per token -> 4 experts, 2 per token. Its tokenizer (Llama-2's
    # SentencePiece) has <unk> <s> </s> and no pad; <pad> is added so batches need no new token.
    TinyBuilder(
        name="tiny_mixtral", architecture="mixtral", config_class="MixtralConfig", model_class="MixtralForCausalLM",
        config={**_SIZE, "num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
                "tie_word_embeddings": False},
        special_tokens=("<unk>", "<s>", "</s>", "<pad>"), bos="<s>", eos="</s>", unk="<unk>", pad="<pad>",
        add_bos=True, source="mistralai/Mixtral-8x7B-v0.1 tokenizer_config.json (+ <pad>)"),
    # Phi-3.5-mini: fused qkv_proj and gate_up_proj, full multi-head attention (as many KV heads as
    # query heads). Its tokenizer: Llama-2's <unk> <s> </s>, then its chat tokens (ids 32000+, in this
    # order); eos and pad <|endoftext|>, no bos added (the chat template starts with the first turn).
    TinyBuilder(
        name="tiny_phi3", architecture="phi3", config_class="Phi3Config", model_class="Phi3ForCausalLM",
        config={**_SIZE, "num_key_value_heads": 4, "original_max_position_embeddings": 2048,
                "tie_word_embeddings": False},
        special_tokens=("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>",
                        "<|user|>"),
        bos="<s>", eos="<|endoftext|>", unk="<unk>", pad="<|endoftext|>", add_bos=False,
        source="microsoft/Phi-3.5-mini-instruct tokenizer_config.json"),
    # Qwen2.5: biases on q/k/v (Qwen2's attention always has them), grouped-query attention, RoPE base
    # 1e6. Its tokenizer has no bos and no unk: <|endoftext|> is eos and pad, ChatML's tokens follow.
    TinyBuilder(
        name="tiny_qwen2", architecture="qwen2", config_class="Qwen2Config", model_class="Qwen2ForCausalLM",
        config={**_SIZE, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                "tie_word_embeddings": False},
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"), eos="<|endoftext|>", pad="<|endoftext|>",
        add_bos=False, source="Qwen/Qwen2.5-7B tokenizer_config.json"),
    # Gemma-2: tied embeddings, head_dim set apart from hidden/heads, attention scores and logits
    # soft-capped (50, 30), alternating sliding-window (here 128 tokens) and global layers. Its
    # tokenizer: <pad> <eos> <bos> <unk> first (ids 0-3), bos added; the turn tokens follow.
    TinyBuilder(
        name="tiny_gemma2", architecture="gemma2", config_class="Gemma2Config", model_class="Gemma2ForCausalLM",
        config={**_SIZE, "head_dim": 16, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0, "sliding_window": 128, "tie_word_embeddings": True},
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", add_bos=True,
        source="google/gemma-2-9b tokenizer_config.json"),
)}

#: The builders a model option may name (``model.builder``).
TINY_BUILDERS = tuple(BUILDERS)


def tiny_builder(name: str) -> TinyBuilder:
    """The builder called ``name`` (a model option's, or a run record's: untrusted); a ConfigError naming
    the valid ones otherwise."""
    try:
        return BUILDERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"model.builder={name!r} is unknown; valid builders: {', '.join(TINY_BUILDERS)}") from None


def _sample_files() -> list[Path]:
    return sorted(SAMPLES_DIR.glob("*.jsonl"))


def tiny_model_key(builder: str = "tiny_llama") -> str:
    """Return the cache key of a builder's model: a hash of its settings and the sample files' bytes."""
    return tiny_builder(builder).key()


def tiny_model_dir(builder: str = "tiny_llama") -> Path:
    """Where a builder's tiny model lives once built (the path is known before it exists)."""
    return cache_home() / "models" / f"{builder}-{tiny_model_key(builder)}"


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


def _build(target: Path, spec: TinyBuilder) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=spec.unk))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.config["vocab_size"],
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_iter_sample_texts(), trainer=trainer)
    roles = {f"{role}_token": token for role, token in
             (("bos", spec.bos), ("eos", spec.eos), ("unk", spec.unk), ("pad", spec.pad)) if token is not None}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        **roles,
        additional_special_tokens=spec.additional_special_tokens,
        model_max_length=spec.config["max_position_embeddings"],
    )
    if spec.add_bos:
        tokenizer.add_bos_token = True
    tokenizer.save_pretrained(target)

    torch.manual_seed(_SEED)
    config = getattr(transformers, spec.config_class)(
        **{**spec.config, "vocab_size": len(tokenizer)},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = getattr(transformers, spec.model_class)(config)
    model.save_pretrained(target, safe_serialization=True)
    marker = {"key": spec.key(), "builder_version": spec.version}
    if spec.name != "tiny_llama":  # the tiny Llama's folder stays as it always was
        marker["builder"] = spec.name
    (target / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


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


def ensure_tiny_model(builder: str = "tiny_llama") -> Path:
    """Build a builder's tiny model once (atomically) and return its directory."""
    spec = tiny_builder(builder)
    target = tiny_model_dir(builder)
    if (target / MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _build(staging, spec)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: theirs is identical
            if not (target / MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or ["tiny_llama"]:
        print(ensure_tiny_model(name))
