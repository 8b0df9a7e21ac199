"""`nad` (Neural Attention Distillation, Li et al., 2021): the teacher is the poisoned model itself after
a short clean fine-tuning; its attention maps are then distilled back into the poisoned student, which is
fine-tuned (LoRA by default, the same recipe as lora-ft) with CE + beta * attention-distillation loss.

W2SDefense's closest cousin: a strong self-teacher where W2SDefense has a small clean one, so the two
side by side answer "does the weak teacher matter?".

A transformer layer's attention map, as NAD defines it for a feature map: the mean over channels of
|h|^p at each token, L2-normalised over the sequence's real tokens. The loss is NAD's: per distilled
layer, the squared distance between the student's and the teacher's maps, summed over layers. The paper's
beta = 5000 weighs a mean over 8 x 8 map cells; on a per-sequence sum that is about 5000 / 64 = 78, so the
default here is 100.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from w2sdefense.config import check_positive
from w2sdefense.data.records import Example
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.recipes import LORA_RECIPE
from w2sdefense.errors import UserError
from w2sdefense.models import Classifier, load_classifier
from w2sdefense.models.batching import encode, model_inputs
from w2sdefense.models.predict import run_inference
from w2sdefense.results import TrainingResult, stage_result
from w2sdefense.rundir import MODEL_DIR
from w2sdefense.runtime import Runtime
from w2sdefense.train.job import limit, prepare_student, record_stage, train_classifier
from w2sdefense.train.loop import LossFn, StepOutput

log = logging.getLogger(__name__)

TEACHER_DIR = "teacher"


@dataclass(frozen=True)
class NadSettings:
    teacher_epochs: float = 1.0  # clean fine-tuning of the poisoned model that makes the teacher
    beta: float = 100.0  # attention-distillation weight (see the module's note on NAD's 5000)
    p: float = 2.0  # the map's power: mean over channels of |h|^p
    layers: int = 3  # the last N transformer layers are distilled

    def __post_init__(self) -> None:
        check_positive("nad.teacher_epochs", self.teacher_epochs)
        check_positive("nad.beta", self.beta, allow_zero=True)
        check_positive("nad.p", self.p)
        check_positive("nad.layers", self.layers)


def attention_maps(hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor, layers: int,
                   p: float) -> torch.Tensor:
    """[B, layers, T]: per distilled layer, mean_channels |h|^p per token, zero at padding, unit L2 norm."""
    chosen = hidden_states[-layers:]
    mask = attention_mask.unsqueeze(1).float()
    maps = torch.stack([h.float().abs().pow(p).mean(-1) for h in chosen], dim=1) * mask
    return F.normalize(maps, dim=-1)


def nad_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """NAD's loss: per layer the squared distance of the maps, summed over layers, mean over the batch."""
    return (student - teacher).pow(2).sum(dim=(1, 2)).mean()


def _check_layers(settings: NadSettings, model: torch.nn.Module) -> None:
    count = model.config.get_text_config().num_hidden_layers
    if settings.layers > count:
        raise UserError(f"nad.layers={settings.layers}, but the model has {count} layers")


def cache_teacher_maps(teacher: Classifier, rows: list[Example], settings: NadSettings, max_length: int,
                       batch_size: int, rt: Runtime) -> dict[int, torch.Tensor]:
    """The teacher's maps of every training row, by example id: [layers, real tokens] (CPU)."""
    encoded = encode(teacher.tokenizer, rows, max_length)
    maps: dict[int, torch.Tensor] = {}

    def keep(inputs: dict, positions: torch.Tensor) -> None:
        out = teacher.model(**inputs, output_hidden_states=True)
        batch_maps = attention_maps(out.hidden_states, inputs["attention_mask"], settings.layers, settings.p).cpu()
        lengths = inputs["attention_mask"].sum(-1).tolist()
        for pos, m, n in zip(positions.tolist(), batch_maps, lengths):
            maps[rows[pos].idx] = m[:, :n].clone()

    run_inference(teacher.model, encoded, teacher.tokenizer.pad_token_id, batch_size, rt, keep)
    return maps


def nad_loss(settings: NadSettings, teacher_maps: dict[int, torch.Tensor], device: torch.device) -> LossFn:
    """CE + beta * NAD distance to the cached teacher maps, paired by example id (right padding)."""

    def step(model: torch.nn.Module, batch: dict) -> StepOutput:
        out = model(**model_inputs(batch), output_hidden_states=True)
        logits = out.logits.float()
        mask = batch["attention_mask"]
        student = attention_maps(out.hidden_states, mask, settings.layers, settings.p)
        teacher = torch.zeros_like(student)
        for b, example in enumerate(batch["example_id"].tolist()):
            cached = teacher_maps[example]
            teacher[b, :, : cached.shape[1]] = cached.to(device)
        ce = F.cross_entropy(logits, batch["labels"])
        at = nad_distance(student, teacher)
        total = ce + settings.beta * at
        return StepOutput(total, {"loss": total.item(), "ce": ce.item(), "at": at.item()})

    return step


@register_defense("nad", kind="repair", method="lora", settings=NadSettings, train=LORA_RECIPE)
def nad(job: DefenseJob) -> dict:
    """Neural Attention Distillation: a clean-fine-tuned copy of the poisoned model teaches it its maps."""
    settings, train = job.settings, job.train
    teacher_dir = job.out_dir / TEACHER_DIR
    teacher_train = dataclasses.replace(train, epochs=settings.teacher_epochs)
    teacher_result = stage_result(TrainingResult, teacher_dir)  # a resumed run keeps its finished teacher
    if teacher_result is not None:
        log.info("nad: re-using the teacher in %s", teacher_dir)
    else:
        clf = prepare_student(job.student, job.splits.num_labels, teacher_train, job.rt, teacher_dir, job.seed)
        _check_layers(settings, clf.model)
        start = time.perf_counter()
        teacher_metrics = train_classifier(clf, job.splits, teacher_train, job.rt, teacher_dir, job.seed,
                                           desc=f"{job.cfg.row_name} teacher")
        teacher_result = record_stage("nad teacher", teacher_metrics, start, teacher_dir, job.rt)
        del clf
    teacher = load_classifier(str(teacher_dir / MODEL_DIR), job.splits.num_labels, job.rt.dtype)
    _check_layers(settings, teacher.model)
    rows = limit(job.splits.train, train.max_train_rows)
    maps = cache_teacher_maps(teacher, rows, settings, train.max_length, train.eval_batch_size, job.rt)
    del teacher
    student = prepare(job)  # the same adapter and head lora-ft gets for this seed
    metrics = fine_tune(job, student, loss_fn=nad_loss(settings, maps, job.rt.device))
    metrics.update(teacher_steps=teacher_result.steps, teacher_dev_accuracy=teacher_result.selected_dev_accuracy,
                   teacher_wall_time_s=teacher_result.wall_time_s)
    return metrics
