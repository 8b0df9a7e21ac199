"""What every detector shares: the vocabulary a trigger word is searched in, what a detector is given, what it
proposes, and the detectors by name (`scan.detectors`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from w2sdefense.config import ScanConfig
from w2sdefense.data.records import Example
from w2sdefense.models.loading import Classifier
from w2sdefense.registry import Registry
from w2sdefense.runtime import Runtime

# Where a tokenizer marks a token that starts a word: byte-level BPE (GPT-2, Llama 3, SmolLM) and sentencepiece.
WORD_START_MARKS = ("Ġ", "▁")


@dataclass(frozen=True)
class Proposal:
    """A candidate trigger from a detector; `target_label` None: measured toward every label."""

    trigger: str
    target_label: int | None
    detector: str


@dataclass
class ScanInputs:
    """What a detector works with: the suspect, clean rows it classifies correctly, and the settings."""

    clf: Classifier
    rows: list[Example]  # clean rows the suspect classifies correctly (the inversion optimises on them)
    num_labels: int
    cfg: ScanConfig
    rt: Runtime
    base_model: str | None
    seed: int
    pool: list[Example] = field(default_factory=list)  # the defender's clean rows, all of them (a reader fits on them)
    shared: dict = field(default_factory=dict)  # what the scan's parts build once and share (the clean reader)
    workdir: Path | None = None  # the scan's folder, where a part that trains writes (None: a temporary folder)


class Detector(ABC):
    """One way of finding candidate triggers; `needs_base`: it reads the public base model."""

    needs_base: ClassVar[bool] = False

    @abstractmethod
    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        """Candidate triggers, the detector's most likely first."""


DETECTORS: Registry[type[Detector]] = Registry("detector", "scan.detectors")


def word_ids(tokenizer) -> torch.Tensor:
    """The token ids a trigger word can start with: no special token, a decoded text of letters or digits only, and
    where the tokenizer marks word starts (byte-level BPE, sentencepiece), only tokens that start a word; WordPiece
    continuations (##) are left out."""
    ids, starts = trigger_vocabulary(tokenizer)
    return ids[starts]


def trigger_vocabulary(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token id a trigger can be made of (no special token, a decoded text of letters or digits only), and
    the mask of those that start a word (all of them where the tokenizer marks no word start): a rare word such as
    `mn` is often a word start and a continuation (`Ġm`, `n`)."""
    vocab = tokenizer.get_vocab()
    marked = {m: {i for t, i in vocab.items() if t.startswith(m) and len(t) > 1} for m in WORD_START_MARKS}
    mark = max(marked, key=lambda m: len(marked[m]))
    if len(marked[mark]) > len(vocab) // 100:  # a real word-start convention, not one byte token that looks like it
        starts = marked[mark]
    else:
        starts = {i for t, i in vocab.items() if not t.startswith("##")}
    special = set(tokenizer.all_special_ids)
    ids = sorted(i for i in set(vocab.values()) if i not in special)
    texts = tokenizer.convert_tokens_to_string  # a lone token's text, as the tokenizer writes it out
    tokens = tokenizer.convert_ids_to_tokens(ids)
    keep = [i for i, tok in zip(ids, tokens) if _alnum(texts([tok]).strip().removeprefix("##"))]
    return torch.tensor(keep, dtype=torch.long), torch.tensor([i in starts for i in keep], dtype=torch.bool)


def _alnum(text: str) -> bool:
    return bool(text) and all(c.isalnum() for c in text)
