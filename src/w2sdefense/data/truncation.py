"""Triggers cut off by truncation: which triggered rows keep their trigger within a length budget.

A tokenizer keeps the first max_length tokens of a text; a trigger inserted after them never reaches the
model, which lowers the ASR of the triggered test set and weakens poisoned training rows. Each triggered
row is classified as survived (True), cut (False) or unknown (None: no localisable trigger, e.g. a
paraphrase, which is never counted as cut). A row with several trigger copies survives when one of them
fits whole. This module measures against a word budget; models/truncation.py measures with a tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from w2sdefense.data.records import Example

log = logging.getLogger(__name__)

WARN_SHARE = 0.01  # warn when a split loses more than this share of its localisable triggers

Survival = bool | None  # True: the trigger survived, False: cut, None: unknown


@dataclass(frozen=True)
class TriggerCut:
    """How many triggered rows of one split keep their trigger within `limit` (e.g. '128 tokens')."""

    limit: str
    triggered: int
    cut: int
    survived: int
    unknown: int

    @property
    def share_cut(self) -> float:
        """Cut rows over rows whose trigger position is known (0.0 when none is)."""
        known = self.cut + self.survived
        return self.cut / known if known else 0.0

    def to_dict(self) -> dict:
        """Plain data for poison.json and metrics files."""
        return {**asdict(self), "share_cut": self.share_cut}


def trigger_end(example: Example) -> int | None:
    """The end (character offset) of the earliest-ending trigger copy; None when no span is known."""
    if not example.trigger_spans:
        return None
    return min(end for _, end in example.trigger_spans)


def survival_by_words(examples: Sequence[Example], max_words: int) -> list[Survival]:
    """Per row: does a trigger copy end within the first `max_words` whitespace-separated words?"""
    out: list[Survival] = []
    for ex in examples:
        end = trigger_end(ex)
        out.append(None if end is None else len(ex.text[:end].split()) <= max_words)
    return out


def count_cut(survival: Sequence[Survival], limit: str) -> TriggerCut:
    """Tally survived / cut / unknown rows."""
    cut = sum(s is False for s in survival)
    survived = sum(s is True for s in survival)
    return TriggerCut(limit=limit, triggered=len(survival), cut=cut, survived=survived,
                      unknown=len(survival) - cut - survived)


def warn_if_cut(split: str, counts: TriggerCut) -> None:
    """Log one warning line when `split` loses more than WARN_SHARE of its triggers to truncation."""
    if counts.share_cut > WARN_SHARE:
        log.warning("%s: the trigger of %d of %d triggered rows (%.1f%%) lies beyond %s and is cut off by "
                    "truncation; keep triggers near the start with attack.max_position, or raise max_length",
                    split, counts.cut, counts.cut + counts.survived, 100 * counts.share_cut, counts.limit)
