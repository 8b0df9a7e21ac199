"""`w2sdefense teacher`: the small clean teacher fully fine-tuned on clean data (its model is in
models/teacher.py), its feature as wide as the student's hidden state."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from w2sdefense.config import TeacherConfig
from w2sdefense.data.records import Splits
from w2sdefense.defenses.distill import distill_step, suspect_logits, with_texts
from w2sdefense.errors import UserError
from w2sdefense.models.teacher import build_teacher, hidden_size_of
from w2sdefense.results import TrainingResult
from w2sdefense.runtime import Runtime
from w2sdefense.train.job import limit, record_stage, train_classifier


def run_teacher(cfg: TeacherConfig, splits: Splits, student: str, rt: Runtime, out_dir: Path, seed: int) -> TrainingResult:
    """`w2sdefense teacher`: full fine-tuning of the small encoder on clean data."""
    if cfg.train.method != "full":
        raise UserError("teacher.train.method must be full: the teacher is fully fine-tuned")
    start = time.perf_counter()
    feature_dim = cfg.feature_dim or hidden_size_of(student)
    kwargs = {}
    if cfg.suspect_kd:
        # The suspect's answers on clean texts: a teacher that learns them carries its clean behaviour.
        rows = with_texts(limit(splits.train, cfg.train.max_train_rows), splits.unlabelled, True)
        cache = suspect_logits(student, splits.num_labels, rows, cfg.train.max_length, cfg.train.eval_batch_size, rt)
        splits = dataclasses.replace(splits, train=rows)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_train_rows=None))
        kwargs["loss_fn"] = distill_step(1.0, cfg.suspect_kd, cfg.suspect_temperature, cache, rt.device)
    clf = build_teacher(cfg, splits.num_labels, feature_dim, rt, seed)
    metrics = train_classifier(clf, splits, cfg.train, rt, out_dir, seed, desc="teacher", **kwargs)
    metrics.update(feature_dim=feature_dim)
    return record_stage("teacher", metrics, start, out_dir, rt)
