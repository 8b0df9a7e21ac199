"""Tiny randomly initialised models and a byte-level tokenizer, built in code, for tests and smoke runs.

They are named `tiny-*` so nobody mistakes them for real models: their numbers mean nothing.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

HIDDEN = 64
LAYERS = 2
_ALPHABET = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes


def byte_tokenizer(specials: list[str], **named: str) -> PreTrainedTokenizerFast:
    """A merge-free byte-level BPE: every UTF-8 byte is a token, so any text encodes offline."""
    vocab = {tok: i for i, tok in enumerate(specials + sorted(_ALPHABET))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if "cls_token" in named:
        cls, sep = named["cls_token"], named["sep_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])]
        )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **named)
    tok.padding_side = "right"
    return tok


def tiny_llama(num_labels: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A 2-layer, 64-wide Llama classifier (decoder: pools the last non-pad token)."""
    tok = byte_tokenizer(["<pad>", "<s>", "</s>"], pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, num_labels=num_labels, tie_word_embeddings=False,
    )
    return LlamaForSequenceClassification(config), tok


def tiny_bert(num_labels: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A 2-layer, 64-wide BERT classifier (encoder: reads the first token)."""
    tok = byte_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pad_token="[PAD]", unk_token="[UNK]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=4, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # deterministic, like tiny-llama
    )
    return BertForSequenceClassification(config), tok


TINY_BUILDERS = {"tiny-llama": tiny_llama, "tiny-bert": tiny_bert}


def build_tiny(name: str, num_labels: int, dtype: torch.dtype = torch.float32):
    """Build a tiny model and its tokenizer by name."""
    model, tok = TINY_BUILDERS[name](num_labels)
    return model.to(dtype), tok
