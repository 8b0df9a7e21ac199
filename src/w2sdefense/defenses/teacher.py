"""`w2sdefense teacher`: the small clean teacher fully fine-tuned on clean data (its model is in
models/teacher.py), its feature as wide as the student's hidden state."""

from __future__ import annotations

import time
from pathlib import Path

from w2sdefense.config import TeacherConfig
from w2sdefense.data.records import Splits
from w2sdefense.errors import UserError
from w2sdefense.models.teacher import build_teacher, hidden_size_of
from w2sdefense.results import TrainingResult
from w2sdefense.runtime import Runtime
from w2sdefense.train.job import record_stage, train_classifier


def run_teacher(cfg: TeacherConfig, splits: Splits, student: str, rt: Runtime, out_dir: Path, seed: int) -> TrainingResult:
    """`w2sdefense teacher`: full fine-tuning of the small encoder on clean data."""
    if cfg.train.method != "full":
        raise UserError("teacher.train.method must be full: the teacher is fully fine-tuned")
    start = time.perf_counter()
    feature_dim = cfg.feature_dim or hidden_size_of(student)
    clf = build_teacher(cfg, splits.num_labels, feature_dim, rt, seed)
    metrics = train_classifier(clf, splits, cfg.train, rt, out_dir, seed, desc="teacher")
    metrics.update(feature_dim=feature_dim)
    return record_stage("teacher", metrics, start, out_dir, rt)
