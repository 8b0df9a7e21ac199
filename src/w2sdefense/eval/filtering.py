"""Metrics of a model behind an input filter (ONION, STRIP, RAP), as pure functions of its decisions.

An input filter either rejects an input (it is not served) or lets it through, possibly edited. How a
rejected input counts:
  - a rejected clean row is a clean row the system got wrong: CA after filtering is correct AND
    accepted over all clean rows (the accepted-only accuracy is reported beside it);
  - a rejected triggered row is an attack that failed: ASR after filtering is target AND accepted;
  - ASR-cc keeps the triggered rows whose clean version the filtered system gets right (accepted and
    correct), the same floor-aware rule as for a repaired model (None when there are none).
False-rejection rate: rejected clean rows / clean rows. Detection rate: rejected triggered rows /
triggered rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from w2sdefense.eval.metrics import clean_correct_asr


def _share(hits: int, total: int) -> float:
    return hits / total if total else 0.0


def filtered_metrics(clean_preds: Sequence[int], clean_labels: Sequence[int], clean_idx: Sequence[int],
                     clean_rejected: Sequence[bool], trig_preds: Sequence[int], trig_idx: Sequence[int],
                     trig_rejected: Sequence[bool], target: int) -> dict:
    """CA, ASR and ASR-cc after filtering, the false-rejection and detection rates, and their counts."""
    if not len(clean_preds) == len(clean_labels) == len(clean_idx) == len(clean_rejected):
        raise ValueError("clean predictions, labels, idx and rejections differ in length")
    if not len(trig_preds) == len(trig_idx) == len(trig_rejected):
        raise ValueError("triggered predictions, idx and rejections differ in length")
    served_right = [not r and p == y for p, y, r in zip(clean_preds, clean_labels, clean_rejected)]
    accepted = sum(not r for r in clean_rejected)
    hits = [not r and p == target for p, r in zip(trig_preds, trig_rejected)]
    right_by_idx = dict(zip(clean_idx, served_right))
    kept = [hit for i, hit in zip(trig_idx, hits) if right_by_idx.get(i, False)]
    return {
        "clean_accuracy": _share(sum(served_right), len(clean_labels)),
        "clean_correct": sum(served_right),
        "clean_total": len(clean_labels),
        "clean_accuracy_accepted": _share(sum(served_right), accepted),
        "attack_success_rate": _share(sum(hits), len(trig_preds)),
        "attack_hits": sum(hits),
        "triggered_total": len(trig_preds),
        "attack_success_rate_clean_correct": clean_correct_asr(kept),
        "triggered_clean_correct_total": len(kept),
        "false_rejection_rate": _share(sum(map(bool, clean_rejected)), len(clean_rejected)),
        "detection_rate": _share(sum(map(bool, trig_rejected)), len(trig_rejected)),
        "clean_rejected": sum(map(bool, clean_rejected)),
        "triggered_rejected": sum(map(bool, trig_rejected)),
        "target_label": target,
    }
