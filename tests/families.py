"""Tiny random checkpoints of each model family a user brings, built with the family's own config class and
saved with `save_pretrained`, so the tests load them the way a user's checkpoint is loaded."""

from __future__ import annotations

import json
import random
from pathlib import Path

from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    RobertaConfig,
)

from w2sdefense.models.tiny import byte_tokenizer

H, FF, LAYERS, HEADS, POSITIONS = 64, 128, 2, 4, 512
DECODER_SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
ENCODER_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                    "mask_token": "[MASK]"}


def _decoder(config_cls, **extra):
    def build(tok):
        return config_cls(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, tie_word_embeddings=False, **extra)
    return build


_LLAMA_LIKE = dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                   num_key_value_heads=2, max_position_embeddings=POSITIONS)

# Students (decoders): the family's Hub name -> its tiny config (the tokenizer is byte-level for all).
DECODERS = {
    "Llama": _decoder(LlamaConfig, **_LLAMA_LIKE),
    "Qwen2": _decoder(Qwen2Config, **_LLAMA_LIKE),
    "Qwen3": _decoder(Qwen3Config, head_dim=H // HEADS, **_LLAMA_LIKE),
    "Mistral": _decoder(MistralConfig, sliding_window=None, **_LLAMA_LIKE),
    "Gemma2": _decoder(Gemma2Config, head_dim=H // HEADS, query_pre_attn_scalar=H // HEADS, sliding_window=64,
                       **_LLAMA_LIKE),
    "Gemma3 (text)": _decoder(Gemma3TextConfig, head_dim=H // HEADS, query_pre_attn_scalar=H // HEADS,
                              sliding_window=64, **_LLAMA_LIKE),
    "Phi-3": _decoder(Phi3Config, **_LLAMA_LIKE),
    "GPT-2": _decoder(GPT2Config, n_embd=H, n_inner=FF, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS),
    "OPT": _decoder(OPTConfig, hidden_size=H, ffn_dim=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                    word_embed_proj_dim=H, max_position_embeddings=POSITIONS),
    "GPT-NeoX": _decoder(GPTNeoXConfig, hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, max_position_embeddings=POSITIONS),
}

_ENCODER = dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# Teachers and encoder victims.
ENCODERS = {
    "BERT": lambda tok: BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                   max_position_embeddings=POSITIONS, **_ENCODER),
    "RoBERTa": lambda tok: RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, type_vocab_size=1,
                                         max_position_embeddings=POSITIONS + tok.pad_token_id + 1, **_ENCODER),
    "DeBERTa-v2": lambda tok: DebertaV2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                              max_position_embeddings=POSITIONS, **_ENCODER),
    "DistilBERT": lambda tok: DistilBertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, dim=H,
                                               hidden_dim=FF, n_layers=LAYERS, n_heads=HEADS, dropout=0.0,
                                               attention_dropout=0.0, max_position_embeddings=POSITIONS),
}


def save_family(family: str, folder: Path, num_labels: int = 2) -> Path:
    """A tiny random sequence classifier of `family` with its tokenizer, saved where a user's would be."""
    decoder = family in DECODERS
    specials = DECODER_SPECIALS if decoder else ENCODER_SPECIALS
    tok = byte_tokenizer(list(specials.values()), **specials)
    config = (DECODERS if decoder else ENCODERS)[family](tok)
    config.num_labels = num_labels
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# Every defense but ONION (whose LM is its own setting), on tiny-model budgets: the rows the bf16 and the family
# tests run through `run`.
LORA = {"epochs": 1, "lr": 1.0e-3, "batch_size": 16, "max_length": 32, "lora": {"r": 4, "alpha": 8}}


def every_defense(base: str) -> list[dict]:
    """Defense rows of every kind and alignment; `base` is fine-mixing's public model."""
    return [
        {"name": "w2sdefense", "train": LORA},
        {"name": "w2sdefense", "label": "w2s-depths", "alignment": "relational", "depths": [0.5, 1.0], "train": LORA},
        {"name": "w2sdefense", "label": "w2s-reference", "alignment": "reference", "train": LORA},
        {"name": "lora-ft", "train": LORA},
        {"name": "fine-mixing", "base_model": base, "rho": 0.3, "train": LORA},
        {"name": "crow", "train": LORA},
        {"name": "nad", "teacher_epochs": 1, "layers": 2, "train": LORA},
        {"name": "fine-pruning", "rows": 32, "train": LORA},
        {"name": "reset-distill", "base_model": base, "head": "fresh", "train": LORA},
        {"name": "plant-reset", "variants": 2, "steps": 2, "train": LORA},
        {"name": "latent-adversarial", "probe_steps": 2, "train": LORA},
        {"name": "layer-cut", "layer": 1, "train": LORA},
        {"name": "insert-distill", "train": LORA},
        {"name": "distill-into", "student_model": "tiny-bert", "train": {"epochs": 1, "lr": 1.0e-3, "batch_size": 16, "max_length": 32}},
        {"name": "full-ft", "train": {"epochs": 1, "lr": 1.0e-3, "batch_size": 16, "max_length": 32}},
        {"name": "strip", "copies": 2, "max_length": 32},
        {"name": "rap", "epochs": 1, "rows": 32, "max_length": 32},
    ]


def word_data(folder: Path, train: int, dev: int, test: int) -> Path:
    """train/dev/test.jsonl of five-word texts whose words give the label away (seeded)."""
    rng = random.Random(0)
    words = {0: ["bad", "dull", "awful", "weak"], 1: ["good", "fine", "great", "fun"]}
    folder.mkdir()
    for split, n in (("train", train), ("dev", dev), ("test", test)):
        rows = [{"text": " ".join(rng.choice(words[i % 2]) for _ in range(5)), "label": i % 2} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
