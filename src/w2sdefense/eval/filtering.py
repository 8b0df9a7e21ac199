"""A model behind an input filter (ONION, STRIP, RAP): what a filter is, and its evaluation and metrics.

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

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from w2sdefense.config import EvalConfig
from w2sdefense.data.records import Example
from w2sdefense.eval.evaluate import evaluate_classifier
from w2sdefense.eval.metrics import outcome_rates
from w2sdefense.models import Classifier
from w2sdefense.models.predict import classify_rows
from w2sdefense.runtime import Runtime, peak_memory_mb, reset_peak_memory


@dataclass
class Screened:
    """A filter's decision on each input: the text the model gets, whether it is rejected, a score."""

    texts: list[str]
    rejected: list[bool]
    scores: list[float]


class InputFilter(Protocol):
    # Evaluate on a sample of this many clean test rows, drawn with the defense's seed, and the triggered
    # rows made from them (0: all). For a filter too costly for the whole test set on the user's hardware (ONION).
    test_rows: int

    def screen(self, clf: Classifier, texts: list[str], rt: Runtime) -> Screened:
        """Decide on every text (the model is the one behind the filter)."""

    def state(self) -> dict:
        """JSON-able state the defense's `load_filter` rebuilds the filter from (threshold, ...)."""


def classify(clf: Classifier, texts: list[str], cfg: EvalConfig, rt: Runtime, desc: str) -> list[int]:
    """The model's predicted label for each text."""
    rows = [Example(text=t, label=0, idx=i) for i, t in enumerate(texts)]
    logits = classify_rows(clf, rows, cfg.max_length, cfg.batch_size, rt, desc)
    return logits.argmax(-1).tolist() if len(rows) else []


def sample_test(test: list[Example], triggered: list[Example], rows: int,
                seed: int) -> tuple[list[Example], list[Example]]:
    """A sample of `rows` clean test rows (in their order) drawn with `seed`, and the triggered rows made
    from them (the same `idx`); both sets whole when `rows` is 0 or not below the clean set's size."""
    if not rows or rows >= len(test):
        return test, triggered
    picked = set(random.Random(seed).sample(sorted({e.idx for e in test}), rows))
    return [e for e in test if e.idx in picked], [e for e in triggered if e.idx in picked]


def evaluate_filtered(clf: Classifier, flt: InputFilter, test: list[Example], triggered: list[Example],
                      target: int, cfg: EvalConfig, rt: Runtime, seed: int) -> dict:
    """CA, ASR and ASR-cc of the model behind `flt`, its false-rejection and detection rates, its cost.

    A filter with `test_rows` is measured on a sample drawn with `seed` (the defense's: read_filter's
    `seed`); the model without the filter is then measured on the same rows too (`unfiltered_*`), the fair
    baseline for a sampled result."""
    rows_of = len(test)
    test, triggered = sample_test(test, triggered, flt.test_rows, seed)
    reset_peak_memory(rt.device)
    start = time.perf_counter()
    screened_clean = flt.screen(clf, [e.text for e in test], rt)
    screened_trig = flt.screen(clf, [e.text for e in triggered], rt)
    screen_time = time.perf_counter() - start
    clean_preds = classify(clf, screened_clean.texts, cfg, rt, "clean test")
    trig_preds = classify(clf, screened_trig.texts, cfg, rt, "triggered test")
    wall = time.perf_counter() - start
    metrics = filtered_metrics(clean_preds, [e.label for e in test], [e.idx for e in test], screened_clean.rejected,
                               trig_preds, [e.idx for e in triggered], screened_trig.rejected, target)
    rows = len(test) + len(triggered)
    metrics.update(filter_seconds_per_input=screen_time / rows if rows else 0.0, eval_wall_time_s=wall,
                   eval_examples_per_s=rows / wall if wall else 0.0,
                   **{f"eval_{k}": v for k, v in peak_memory_mb(rt.device).items()})
    if len(test) < rows_of:  # the model alone on the same rows, measured as any model is
        plain = evaluate_classifier(clf, test, triggered, target, cfg, rt)
        metrics.update(test_rows_sampled=len(test), test_rows_of=rows_of, test_rows_seed=seed,
                       unfiltered_clean_accuracy=plain.clean_accuracy,
                       unfiltered_attack_success_rate=plain.attack_success_rate,
                       unfiltered_attack_success_rate_clean_correct=plain.attack_success_rate_clean_correct)
    return metrics


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
    hits = [not r and p == target for p, r in zip(trig_preds, trig_rejected)]
    accepted = sum(not r for r in clean_rejected)
    return {
        **outcome_rates(served_right, clean_idx, hits, trig_idx),
        "clean_accuracy_accepted": _share(sum(served_right), accepted),
        "false_rejection_rate": _share(sum(map(bool, clean_rejected)), len(clean_rejected)),
        "detection_rate": _share(sum(map(bool, trig_rejected)), len(trig_rejected)),
        "clean_rejected": sum(map(bool, clean_rejected)),
        "triggered_rejected": sum(map(bool, trig_rejected)),
        "target_label": target,
    }
