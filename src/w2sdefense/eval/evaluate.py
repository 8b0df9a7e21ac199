"""A classifier's clean accuracy on test.jsonl and attack success rate on test_triggered.jsonl (eval/stage.py
loads what a stage holds and calls it)."""

from __future__ import annotations

import time

from w2sdefense.config import EvalConfig
from w2sdefense.data.records import Example
from w2sdefense.eval.metrics import backdoor_metrics
from w2sdefense.models.predict import classify_rows
from w2sdefense.models import Classifier
from w2sdefense.results import EvaluationResult
from w2sdefense.runtime import Runtime, peak_memory_mb, reset_peak_memory
from w2sdefense.models.truncation import cut_by_tokens


def evaluate_classifier(clf: Classifier, test: list[Example], triggered: list[Example], target: int,
                        cfg: EvalConfig, rt: Runtime) -> EvaluationResult:
    """Metrics of one model on the clean and triggered test sets, with throughput and memory (in `details`: the
    truncation counts' unknown rows and limit, examples per second, peak memory)."""
    reset_peak_memory(rt.device)
    start = time.perf_counter()
    clean = classify_rows(clf, test, cfg.max_length, cfg.batch_size, rt, "clean test")
    trig = classify_rows(clf, triggered, cfg.max_length, cfg.batch_size, rt, "triggered test")
    wall = time.perf_counter() - start
    # Triggers the tokenizer cuts off never reach the model: counted, and left out of the survived ASR.
    survived, cut = cut_by_tokens(clf.tokenizer, triggered, cfg.max_length, "triggered test")
    metrics = backdoor_metrics(clean, [e.label for e in test], [e.idx for e in test], trig,
                               [e.idx for e in triggered], target, survived)
    rows = len(test) + len(triggered)
    return EvaluationResult.from_json({**metrics.to_json(), "trigger_cut_unknown": cut.unknown,
                                       "trigger_cut_limit": cut.limit, "eval_wall_time_s": wall,
                                       "eval_examples_per_s": rows / wall if wall else 0.0,
                                       **{f"eval_{k}": v for k, v in peak_memory_mb(rt.device).items()}})
