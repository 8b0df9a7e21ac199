"""Clean accuracy and attack success rate, as pure functions of predictions."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from w2sdefense.results import EvaluationResult

log = logging.getLogger(__name__)
NOT_DEFINED = "n/a"  # how reports show a rate over zero rows: no number, not 0


def rate_or_na(value: float | None, fmt: str = "{:.1%}") -> str:
    """`value` formatted with `fmt`, or n/a for a rate over zero rows (None)."""
    return NOT_DEFINED if value is None else fmt.format(value)


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to the labels (0.0 for no rows)."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    return sum(int(p == y) for p, y in zip(preds, labels)) / len(labels) if labels else 0.0


def attack_success_rate(preds: Sequence[int], target: int) -> float:
    """Share of triggered (non-target) inputs classified as the target label."""
    return sum(int(p == target) for p in preds) / len(preds) if preds else 0.0


def clean_correct_asr(hits: Sequence[bool], what: str = "ASR-cc") -> float | None:
    """ASR-cc from the hits of the triggered rows whose clean version is classified correctly.

    None, with a warning naming `what` (the rate; for one trigger toward one label, which), when there are no
    such rows: a share of zero rows is no measurement, and 0 would read as "no backdoor".
    """
    if not hits:
        log.warning("%s is not defined: no triggered row's clean version is classified correctly (0 rows), "
                    "so it is reported as %s, not as a number", what, NOT_DEFINED)
        return None
    return sum(map(bool, hits)) / len(hits)


def outcome_rates(clean_right: Sequence[bool], clean_idx: Sequence[int], trig_hits: Sequence[bool],
                  trig_idx: Sequence[int], what: str = "ASR-cc") -> dict:
    """CA, ASR and ASR-cc with their counts, from each row's outcome: the one definition of the three.

    `clean_right`: per clean row, whether the system got it right; `trig_hits`: per triggered row, whether
    it got the target label. ASR-cc keeps the triggered rows whose clean version (the same idx) is right.
    A repaired model's outcome is its prediction; a filtered system's also counts a rejection (eval/filtering.py).
    """
    right_by_idx = dict(zip(clean_idx, clean_right))
    kept = [bool(hit) for i, hit in zip(trig_idx, trig_hits) if right_by_idx.get(i, False)]
    right, hits = sum(map(bool, clean_right)), sum(map(bool, trig_hits))
    return {
        "clean_accuracy": right / len(clean_right) if len(clean_right) else 0.0,
        "clean_correct": right,
        "clean_total": len(clean_right),
        "attack_success_rate": hits / len(trig_hits) if len(trig_hits) else 0.0,
        "attack_hits": hits,
        "triggered_total": len(trig_hits),
        "attack_success_rate_clean_correct": clean_correct_asr(kept, what),
        "triggered_clean_correct_total": len(kept),
    }


def backdoor_metrics(clean_logits: torch.Tensor, clean_labels: Sequence[int], clean_idx: Sequence[int],
                     trig_logits: torch.Tensor, trig_idx: Sequence[int], target: int,
                     trig_survived: Sequence[bool | None] | None = None,
                     what: str = "ASR-cc") -> EvaluationResult:
    """CA, ASR, ASR over triggered rows whose clean version is classified correctly (None over none), counts.

    Also the mean probability of the target label on triggered inputs: ASR saturates at 1.0,
    the probability still shows movement. With `trig_survived` (per triggered row: True when its
    trigger survived truncation, False when it was cut, None when unknown), also the ASR over the rows
    whose trigger was not cut (unknown ones count as not cut) and the number cut; without it those stay None and
    out of its JSON. Built from its JSON object, so an ASR-cc over zero rows is None here and null in to_json().
    """
    if len(clean_labels) != len(clean_idx) or len(clean_labels) != len(clean_logits):
        raise ValueError(f"clean: {len(clean_logits)} logits, {len(clean_labels)} labels, {len(clean_idx)} idx")
    if len(trig_idx) != len(trig_logits):
        raise ValueError(f"triggered: {len(trig_logits)} logits for {len(trig_idx)} idx")
    clean_preds = clean_logits.argmax(-1).tolist() if len(clean_labels) else []
    trig_preds = trig_logits.argmax(-1).tolist() if len(trig_idx) else []
    target_prob = trig_logits.softmax(-1)[:, target].mean().item() if len(trig_idx) else 0.0
    survival = {}
    if trig_survived is not None:
        if len(trig_survived) != len(trig_idx):
            raise ValueError(f"triggered: {len(trig_survived)} survival flags for {len(trig_idx)} idx")
        reached = [p for p, s in zip(trig_preds, trig_survived) if s is not False]
        survival = {"trigger_cut": len(trig_preds) - len(reached),
                    "attack_success_rate_survived": attack_success_rate(reached, target),
                    "triggered_survived_total": len(reached)}
    rates = outcome_rates([p == y for p, y in zip(clean_preds, clean_labels)], clean_idx,
                          [p == target for p in trig_preds], trig_idx, what)
    return EvaluationResult.from_json({
        **rates,
        "mean_target_probability_triggered": target_prob,
        "target_label": target,
        **survival,
    })
