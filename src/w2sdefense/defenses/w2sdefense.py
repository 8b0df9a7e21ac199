"""W2SDefense (Zhao et al., 2025): a frozen small clean teacher guides the LoRA-wrapped poisoned student.

Loss = alpha * CE + beta * T^2 * KL(teacher || student) + gamma * FA, on clean data only.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

import torch
import torch.nn.functional as F

from w2sdefense.config import check_choice, check_positive
from w2sdefense.models.reset import check_reset
from w2sdefense.data.records import Example
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.fine_mixing import ResetSettings, reset_modifier
from w2sdefense.defenses.recipes import LORA_RECIPE
from w2sdefense.errors import UserError
from w2sdefense.defenses.losses import (
    feature_alignment_normalized,
    feature_alignment_per_sample,
    feature_alignment_reference,
    feature_alignment_relational,
    kd_loss,
    w2s_total,
)
from w2sdefense.models.features import pool
from w2sdefense.models.loading import Classifier
from w2sdefense.runtime import Runtime
from w2sdefense.models.batching import encode, model_inputs
from w2sdefense.models.predict import run_inference
from w2sdefense.train.loop import LossFn, StepOutput

log = logging.getLogger(__name__)

ALIGNMENTS = ("per-sample", "normalized", "relational", "reference")
TEACHER_MODES = ("trained", "zeros", "random")


@dataclass(frozen=True)
class W2SSettings(ResetSettings):
    """An optional reset toward the public base before unlearning (fine-mixing's settings: none while base_model is
    unset), then the loss weights: alpha * CE + beta * T^2 * KL + gamma * FA (the authors' BadNet values with gamma
    0.01: the project's measured default; their own gamma 0.001 is the preset row w2sdefense-authors)."""

    NAME: ClassVar[str] = "defense"  # the reset's messages say defense.rho, defense.mix, ...

    alpha: float = 5.0  # cross-entropy weight
    beta: float = 0.001  # KD weight (multiplied by T^2)
    gamma: float = 0.01  # feature-alignment weight
    temperature: float = 2.0
    # per-sample | normalized (scale-free, on unit vectors) | relational (the batch's cosine-similarity matrix,
    # scale- and width-free) | reference (the authors' code)
    alignment: str = "per-sample"
    # Where the student is aligned: fractions of its depth (e.g. [0.33, 0.67, 1.0]: layers round(d * L), the
    # term averaged over them); unset: the last layer only
    depths: list[float] | None = None
    gamma_final: float | None = None  # gamma decays linearly from `gamma` to this over the steps (unlearn, then repair)
    # Controls: trained (the method) | zeros (no teacher: its feature replaced by zeros and no KD, so the
    # alignment is a pure norm penalty gamma * ||h||^2) | random (the teacher's encoder and projection at a
    # seeded random initialisation, never trained)
    teacher_mode: str = "trained"

    def __post_init__(self) -> None:
        check_choice("defense.alignment", self.alignment, ALIGNMENTS)
        check_choice("defense.teacher_mode", self.teacher_mode, TEACHER_MODES)
        if self.base_model is None:
            check_reset(self.NAME, None, self.rho, self.mix)
            if (self.head, self.tokenizer) != ("suspect", "suspect"):
                raise UserError("defense.head and defense.tokenizer change what the reset toward the public base "
                                "keeps; without defense.base_model there is no reset")
        else:
            self.check_reset()
        if self.teacher_mode == "zeros" and self.alignment != "per-sample":
            # A zero vector has no direction: normalized would be a constant, relational a push apart.
            raise UserError("defense.teacher_mode zeros (the norm-penalty control) needs alignment per-sample")
        for name in ("alpha", "beta", "gamma"):
            check_positive(f"defense.{name}", getattr(self, name), allow_zero=True)
        check_positive("defense.temperature", self.temperature)
        check_positive("defense.gamma_final", self.gamma_final, allow_zero=True)
        if self.depths is not None:
            if not self.depths or any(not 0 < d <= 1 for d in self.depths):
                raise UserError(f"defense.depths must be fractions of the student's depth in (0, 1]; got {self.depths}")
            if self.alignment == "reference":
                raise UserError("defense.depths needs an alignment other than reference (the authors' term reads "
                                "the last layer only)")


@register_defense("w2sdefense", "w2s", kind="repair", method="lora", needs_teacher=True, settings=W2SSettings,
                  train=LORA_RECIPE)
def w2sdefense(job: DefenseJob) -> dict:
    """Weak-to-strong unlearning: LoRA on the student, guided by the frozen clean teacher."""
    from w2sdefense.models.teacher import check_teacher_labels, load_teacher
    from w2sdefense.models import is_decoder
    from w2sdefense.train.job import limit

    settings, train = job.settings, job.train
    check_teacher_labels(job.teacher, job.splits.num_labels, job.student)  # before the student's base is written
    record = {}
    reset = reset_modifier(job, record) if settings.base_model is not None else None
    student = prepare(job, modify=reset)  # first: the same adapter and head as lora-ft gets for this seed
    hidden = student.config.get_text_config().hidden_size
    rows = limit(job.splits.train, train.max_train_rows)
    if settings.teacher_mode == "zeros":
        cache = zero_cache(rows, hidden)
    else:
        teacher = load_teacher(job.teacher, job.rt.dtype, random_init_seed=job.seed if settings.teacher_mode == "random"
                               else None)
        aligned = (settings.gamma or settings.gamma_final) and settings.alignment != "relational"  # relational: any width
        if teacher.model.feature_dim != hidden and aligned:
            raise UserError(f"the teacher's feature size {teacher.model.feature_dim} differs from the student's "
                            f"hidden size {hidden}: train the teacher for this student")
        spill = job.out_dir / "teacher_cache"
        cache = cache_teacher_outputs(teacher, rows, train.max_length, train.eval_batch_size, job.rt, spill_dir=spill)
    loss = w2s_loss(settings, cache, is_decoder(student.config), job.rt.device)
    metrics = fine_tune(job, student, loss_fn=loss)
    del cache, loss
    shutil.rmtree(job.out_dir / "teacher_cache", ignore_errors=True)  # a disk cache only lives as long as the run
    return {**metrics, **record}


@dataclass(frozen=True)
class TeacherCache:
    """The frozen teacher's logits [N, K] and features [N, D] for every training example, found by the
    example's identity (`Example.idx`), so pairing never depends on batch order or on two places
    agreeing about positions. No logits: no KD term (the zero-teacher control)."""

    logits: torch.Tensor | None
    features: torch.Tensor
    row_of: dict[int, int]  # example id -> row of logits/features

    def rows(self, example_ids: torch.Tensor) -> torch.Tensor:
        """Cache rows of a batch's examples; an example the teacher never saw is an error."""
        try:
            return torch.tensor([self.row_of[i] for i in example_ids.tolist()], dtype=torch.long)
        except KeyError as exc:
            raise RuntimeError(f"no teacher output for training example {exc.args[0]}") from None


IN_MEMORY_LIMIT = 2 * 2**30  # bytes of teacher features kept in RAM; larger sets go to a disk file


def _feature_buffer(rows: int, dim: int, spill_dir: Path | None, rank: int) -> torch.Tensor:
    """A [rows, dim] float32 buffer: in memory, or memory-mapped from disk when it is large."""
    if spill_dir is None or rows * dim * 4 <= IN_MEMORY_LIMIT:
        return torch.empty((rows, dim))
    spill_dir.mkdir(parents=True, exist_ok=True)
    path = spill_dir / f"teacher_features.rank{rank}.npy"
    log.info("teacher features (%.1f GiB) cached on disk in %s", rows * dim * 4 / 2**30, path)
    return torch.from_numpy(np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim)))


def cache_teacher_outputs(teacher: Classifier, rows: list[Example], max_length: int, batch_size: int,
                          rt: Runtime, spill_dir: Path | None = None) -> TeacherCache:
    """Run the teacher once per example (eval mode: no dropout, so every epoch would get the same)."""
    row_of = {ex.idx: i for i, ex in enumerate(rows)}
    if len(row_of) != len(rows):
        raise UserError("the defender's training rows repeat an example id (idx); give each row its own")
    encoded = encode(teacher.tokenizer, rows, max_length)
    model = teacher.model
    logits = torch.empty((len(rows), model.num_labels))
    features = _feature_buffer(len(rows), model.feature_dim, spill_dir, rt.accelerator.process_index)

    def keep(inputs: dict, positions: torch.Tensor) -> None:
        out = model(**inputs)
        logits[positions] = out.logits.float().cpu()
        features[positions] = out.feature.float().cpu()

    run_inference(model, encoded, teacher.tokenizer.pad_token_id, batch_size, rt, keep)
    return TeacherCache(logits, features, row_of)


def zero_cache(rows: list[Example], dim: int) -> TeacherCache:
    """The zero-teacher control: every feature 0 (the alignment becomes ||h||^2) and no logits (no KD)."""
    row_of = {ex.idx: i for i, ex in enumerate(rows)}
    if len(row_of) != len(rows):
        raise UserError("the defender's training rows repeat an example id (idx); give each row its own")
    return TeacherCache(None, torch.zeros((len(rows), dim)), row_of)


ALIGN = {"per-sample": feature_alignment_per_sample, "normalized": feature_alignment_normalized,
         "relational": feature_alignment_relational, "reference": feature_alignment_reference}


def depth_layers(depths: list[float] | None, num_layers: int) -> list[int]:
    """Indices into hidden_states (0: the embeddings, num_layers: the last layer) of the aligned depths."""
    if depths is None:
        return [num_layers]
    return sorted({min(num_layers, max(1, round(d * num_layers))) for d in depths})


def scheduled(start: float, final: float | None, batch: dict) -> float:
    """A weight at this step: `start`, or linear from `start` to `final` over training (the loop's
    `progress`, the share of the steps done before this one)."""
    if final is None:
        return start
    done = float(batch["progress"]) if "progress" in batch else 0.0
    return start + (final - start) * done


def w2s_loss(cfg: W2SSettings, cache: TeacherCache, decoder: bool, device: torch.device) -> LossFn:
    """The W2SDefense step loss; teacher outputs are looked up by each example's identity."""

    align = ALIGN[cfg.alignment]

    def step(model: torch.nn.Module, batch: dict) -> StepOutput:
        out = model(**model_inputs(batch), output_hidden_states=True)
        logits, hidden = out.logits.float(), out.hidden_states[-1]
        layers = depth_layers(cfg.depths, len(out.hidden_states) - 1)
        pos = cache.rows(batch["example_id"].cpu())  # the cache stays on the CPU; only the batch's rows move
        t_features = cache.features[pos].to(device)
        ce = F.cross_entropy(logits, batch["labels"])
        kd = logits.new_zeros(()) if cache.logits is None else kd_loss(logits, cache.logits[pos].to(device),
                                                                          cfg.temperature)
        if cfg.alignment == "reference":
            fa = feature_alignment_reference(t_features, hidden)
        else:
            fa = torch.stack([align(t_features, pool(out.hidden_states[i], batch["attention_mask"], decoder))
                              for i in layers]).mean()
        gamma = scheduled(cfg.gamma, cfg.gamma_final, batch)
        total = w2s_total(ce, kd, fa, cfg.alpha, cfg.beta, gamma)
        return StepOutput(total, {"loss": total.item(), "ce": ce.item(), "kd": kd.item(), "fa": fa.item(),
                                  **({"gamma": gamma} if cfg.gamma_final is not None else {})})

    return step
