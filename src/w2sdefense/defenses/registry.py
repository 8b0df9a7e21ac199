"""Defenses registered by name: W2SDefense and the clean fine-tuning baselines."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from w2sdefense.config import DefenseConfig
from w2sdefense.data.records import Splits
from w2sdefense.errors import UserError
from w2sdefense.fileio import write_json
from w2sdefense.models import is_decoder
from w2sdefense.runtime import Runtime
from w2sdefense.train.job import Diagnostics, limit, prepare_student, train_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DefenseJob:
    """Everything a defense needs: the poisoned student, the teacher, clean data, where to write."""

    student: str  # a run folder, checkpoint folder or hub id of the poisoned classifier
    teacher: str | None  # a saved teacher folder (W2SDefense only)
    splits: Splits  # CLEAN data: the defender never sees the trigger
    cfg: DefenseConfig
    rt: Runtime
    out_dir: Path
    seed: int
    diagnostics: Diagnostics | None = None  # e.g. a trigger probe logged per evaluation (never selects)


DefenseFn = Callable[[DefenseJob], dict]
_DEFENSES: dict[str, tuple[DefenseFn, str]] = {}


def register_defense(name: str, method: str) -> Callable[[DefenseFn], DefenseFn]:
    """Register a defense under `name`; `method` (lora or full) is the fine-tuning it uses."""

    def wrap(fn: DefenseFn) -> DefenseFn:
        _DEFENSES[name] = (fn, method)
        return fn

    return wrap


def available_defenses() -> list[str]:
    """Registered defense names."""
    return sorted(_DEFENSES)


def run_defense(job: DefenseJob) -> dict:
    """Run the defense `job.cfg.name`, with the fine-tuning method it dictates; write metrics.json."""
    if job.cfg.name not in _DEFENSES:
        raise UserError(f"unknown defense {job.cfg.name!r}; known: {', '.join(available_defenses())}")
    fn, method = _DEFENSES[job.cfg.name]
    if job.cfg.train.method != method:
        log.info("%s fine-tunes with method=%s (train.method=%s ignored)", job.cfg.name, method, job.cfg.train.method)
    cfg = dataclasses.replace(job.cfg, train=dataclasses.replace(job.cfg.train, method=method))
    job = dataclasses.replace(job, cfg=cfg)
    start = time.perf_counter()
    metrics = fn(job)
    metrics.update(defense=cfg.name, seed=job.seed, defense_wall_time_s=time.perf_counter() - start)
    if job.rt.is_main:
        write_json(job.out_dir / "metrics.json", metrics)
    return metrics


def _student(job: DefenseJob):
    return prepare_student(job.student, job.splits.num_labels, job.cfg.train, job.rt, job.out_dir, job.seed)


def _train(job: DefenseJob, student, **kwargs) -> dict:
    """The shared fine-tuning loop on the defender's clean rows."""
    return train_classifier(student, job.splits, job.cfg.train, job.rt, job.out_dir, job.seed,
                            desc=job.cfg.row_name, diagnostics=job.diagnostics, **kwargs)


@register_defense("w2sdefense", method="lora")
def w2sdefense(job: DefenseJob) -> dict:
    """Weak-to-strong unlearning: LoRA on the student, guided by the frozen clean teacher."""
    from w2sdefense.defenses.teacher import check_teacher_labels, load_teacher
    from w2sdefense.defenses.w2s import cache_teacher_outputs, w2s_loss

    if not job.teacher:
        raise UserError("w2sdefense needs a trained teacher (run `w2sdefense teacher`, then pass --teacher)")
    check_teacher_labels(job.teacher, job.splits.num_labels, job.student)  # before the student's base is written
    student = _student(job)  # first: the same adapter and head as lora-ft gets for this seed
    teacher = load_teacher(job.teacher, job.rt.dtype)
    hidden = student.config.get_text_config().hidden_size
    if teacher.model.feature_dim != hidden and job.cfg.gamma:
        raise UserError(f"the teacher's feature size {teacher.model.feature_dim} differs from the student's "
                        f"hidden size {hidden}: train the teacher for this student")
    rows = limit(job.splits.train, job.cfg.train.max_train_rows)
    spill = job.out_dir / "teacher_cache"
    cache = cache_teacher_outputs(teacher, rows, job.cfg.train.max_length, job.cfg.train.eval_batch_size, job.rt,
                                  spill_dir=spill)
    loss = w2s_loss(job.cfg, cache, is_decoder(student.config), job.rt.device)
    metrics = _train(job, student, loss_fn=loss)
    del cache, loss
    shutil.rmtree(spill, ignore_errors=True)  # a disk cache only lives as long as the run
    metrics.update(alpha=job.cfg.alpha, beta=job.cfg.beta, gamma=job.cfg.gamma,
                   temperature=job.cfg.temperature, alignment=job.cfg.alignment)
    return metrics


@register_defense("lora-ft", method="lora")
def lora_ft(job: DefenseJob) -> dict:
    """The same adapter on the same clean data, cross-entropy only (PEFT alone)."""
    return _train(job, _student(job))


@register_defense("full-ft", method="full")
def full_ft(job: DefenseJob) -> dict:
    """Full-parameter fine-tuning on the same clean data (the expensive upper bound)."""
    return _train(job, _student(job))
