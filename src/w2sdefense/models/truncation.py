"""Trigger survival measured with the model's tokenizer (the word-budget version is data/truncation.py)."""

from __future__ import annotations

from collections.abc import Sequence

from w2sdefense.data.records import Example
from w2sdefense.data.truncation import Survival, TriggerCut, count_cut, trigger_end, warn_if_cut


def effective_max_length(tokenizer, max_length: int) -> int:
    """max_length, lowered to the model's positions (tokenizer.model_max_length) where those are fewer."""
    allowed = getattr(tokenizer, "model_max_length", None)
    return allowed if isinstance(allowed, int) and 0 < allowed < max_length else max_length


def survival_by_tokens(tokenizer, examples: Sequence[Example], max_length: int) -> list[Survival]:
    """Per row: does a trigger copy fit whole within the first max_length tokens `encode` keeps?

    The text up to the trigger's end is tokenised with the special tokens: it fits when that count is at most
    the limit (a trailing special token such as [SEP] is re-added after the cut, so it counts on both sides).
    This assumes right truncation, the tokenizers' default and what `encode` uses.
    """
    limit = effective_max_length(tokenizer, max_length)
    ends = [trigger_end(ex) for ex in examples]
    known = [i for i, end in enumerate(ends) if end is not None]
    out: list[Survival] = [None] * len(examples)
    if known:
        prefixes = [examples[i].text[: ends[i]] for i in known]
        # Cut at limit + 1: enough to tell "fits" from "does not", without tokenising whole documents.
        ids = tokenizer(prefixes, add_special_tokens=True, truncation=True, max_length=limit + 1)["input_ids"]
        for i, row in zip(known, ids):
            out[i] = len(row) <= limit
    return out


def cut_by_tokens(tokenizer, examples: Sequence[Example], max_length: int,
                  split: str) -> tuple[list[Survival], TriggerCut]:
    """Per-row survival and the trigger-cut counts of `examples` at max_length, warning when over 1 %."""
    survival = survival_by_tokens(tokenizer, examples, max_length)
    counts = count_cut(survival, f"{effective_max_length(tokenizer, max_length)} tokens")
    warn_if_cut(split, counts)
    return survival, counts
