"""The input-filter side of defenses: a filter decides per input (reject, or let through, possibly edited)
in front of a model it does not change. Calibrated by `defend` on clean dev data and saved as a run
folder holding `filter.json`; `evaluate` and `run` measure the model behind it.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import json

import torch

from w2sdefense.config import EvalConfig
from w2sdefense.data.records import Example
from w2sdefense.errors import UserError
from w2sdefense.eval.evaluate import evaluate_classifier
from w2sdefense.eval.filtering import filtered_metrics
from w2sdefense.models.predict import classify_rows
from w2sdefense.fileio import write_json
from w2sdefense.models import Classifier
from w2sdefense.runtime import Runtime, peak_memory_mb, reset_peak_memory

FILTER_FILE = "filter.json"


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


def calibration_rows(job, name: str) -> list[Example]:
    """The clean dev rows an input filter calibrates its threshold on (at least two)."""
    if len(job.splits.dev) < 2:
        raise UserError(f"{name} calibrates its threshold on clean dev rows; the dev split has fewer than 2")
    return job.splits.dev


def frr_threshold(scores: list[float], frr: float) -> tuple[float | None, int]:
    """The threshold that rejects about `frr` of clean rows scoring below it (their frr-quantile), and
    how many of `scores` fall under it; None (nothing rejected) when frr is 0."""
    if frr <= 0:
        return None, 0
    threshold = float(torch.quantile(torch.tensor(scores), frr))
    return threshold, sum(s < threshold for s in scores)


def write_filter(out_dir: Path, defense: str, student: str, settings: dict, flt: InputFilter, rt: Runtime,
                 seed: int) -> None:
    """Save a calibrated filter: which defense, the model it guards, its settings and state, and the seed
    its evaluation sample is drawn with (the defense's)."""
    if rt.is_main:
        write_json(Path(out_dir) / FILTER_FILE, {"defense": defense, **_student_paths(student, Path(out_dir)),
                                                 "settings": settings, "state": flt.state(), "seed": seed})


def _student_paths(student: str, out_dir: Path) -> dict:
    """Where the guarded model is: a local folder both absolute and relative to the filter's folder (what
    a moved or copied run finds it by), a built-in name or hub id as it is."""
    path = Path(student).expanduser()
    if not path.exists():
        return {"student": student}
    absolute = path.resolve()
    return {"student": str(absolute), "student_relative": os.path.relpath(absolute, out_dir.resolve())}


def is_filter_run(path: str | Path) -> bool:
    return (Path(path) / FILTER_FILE).is_file()


def read_filter(path: str | Path) -> dict:
    """The saved filter record of a filter run folder: its `student` where that model is now, and its
    `seed` (0 in records written before filters kept theirs: the seed their samples were drawn with)."""
    file = Path(path) / FILTER_FILE
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{file}: not a readable filter record ({exc})") from None
    if not isinstance(record, dict):
        raise UserError(f"{file}: not a readable filter record (expected a JSON object)")
    record["student"] = _guarded_model(file, record)
    record.setdefault("seed", 0)
    return record


def _guarded_model(file: Path, record: dict) -> str:
    """The model a filter guards: relative to the filter's folder when it is there (the run was moved or
    copied with its model), else as recorded (an absolute path, as older records hold, a name, a hub id)."""
    student = record.get("student")
    if not isinstance(student, str) or not student:
        raise UserError(f"{file}: names no student (the model the filter guards)")
    relative = record.get("student_relative")
    if not isinstance(relative, str):
        return student
    here = (file.parent / relative).resolve()
    if here.exists():
        return str(here)
    if not Path(student).exists():
        raise UserError(f"{file}: the model it guards is neither at {here} nor at {student} (moved or deleted); "
                        f"put it back, or set student in {FILTER_FILE} to where it is now")
    return student


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
                       **{f"unfiltered_{k}": plain[k] for k in ("clean_accuracy", "attack_success_rate",
                                                                "attack_success_rate_clean_correct")})
    return metrics
