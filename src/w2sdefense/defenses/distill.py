"""Distillation from the suspect on clean texts, shared by the repairs that win back what the suspect learned
(reset-distill, plant-reset) and by a teacher that learns the suspect's clean behaviour (teacher.suspect_kd).

The suspect is run once over the texts (eval mode: every epoch would get the same answers); its logits are found
by each example's identity (`Example.idx`), so pairing never depends on batch order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from w2sdefense.data.records import UNLABELLED, Example
from w2sdefense.defenses.losses import distill_total, kd_loss, labelled_cross_entropy
from w2sdefense.config import check_positive
from w2sdefense.errors import UserError
from w2sdefense.models.batching import model_inputs
from w2sdefense.models import Classifier
from w2sdefense.models.loading import load_classifier
from w2sdefense.models.predict import classify_rows
from w2sdefense.runtime import Runtime
from w2sdefense.train.loop import LossFn, StepOutput


@dataclass(frozen=True)
class DistillSettings:
    """The repair loss of the defenses that distil the suspect (reset-distill, plant-reset), declared once:
    alpha * CE (labelled rows) + beta * T^2 * KL(suspect || student) (every row)."""

    NAME: ClassVar[str] = "defense"  # the defense's name in messages
    alpha: float = 1.0  # cross-entropy weight (labelled rows only)
    beta: float = 1.0  # distillation weight (times T^2), toward the suspect's outputs on every row
    temperature: float = 2.0
    unlabelled: bool = True  # also distil on the defender's unlabelled texts (defender.unlabelled), when it has them

    def check_distill(self) -> None:
        """The weights non-negative, the temperature positive."""
        for name in ("alpha", "beta"):
            check_positive(f"{self.NAME}.{name}", getattr(self, name), allow_zero=True)
        check_positive(f"{self.NAME}.temperature", self.temperature)


@dataclass(frozen=True)
class SuspectLogits:
    """The frozen suspect's logits [N, K] for every training text, found by the example's identity (idx)."""

    logits: torch.Tensor
    row_of: dict[int, int]

    def of(self, example_ids: torch.Tensor) -> torch.Tensor:
        """The suspect's logits for a batch's examples."""
        return self.logits[torch.tensor([self.row_of[i] for i in example_ids.tolist()], dtype=torch.long)]


def suspect_logits(suspect: str, num_labels: int, rows: list[Example], max_length: int, batch_size: int,
                   rt: Runtime) -> SuspectLogits:
    """Run the suspect (any name --model takes) once over `rows`."""
    return classifier_logits(load_classifier(suspect, num_labels, rt.dtype), rows, max_length, batch_size, rt)


def classifier_logits(clf: Classifier, rows: list[Example], max_length: int, batch_size: int,
                      rt: Runtime) -> SuspectLogits:
    """A loaded suspect's logits on `rows`, found by each row's idx."""
    row_of = {e.idx: i for i, e in enumerate(rows)}
    if len(row_of) != len(rows):
        raise UserError("the defender's rows and unlabelled texts repeat an example id (idx); give each its own")
    return SuspectLogits(classify_rows(clf, rows, max_length, batch_size, rt, "suspect outputs").float(), row_of)


def distill_step(alpha: float, beta: float, temperature: float, cache: SuspectLogits, device: torch.device) -> LossFn:
    """The step loss: alpha * CE on the batch's labelled rows + beta * T^2 KL toward the suspect on all of them."""

    def step(model: torch.nn.Module, batch: dict) -> StepOutput:
        logits = model(**model_inputs(batch)).logits.float()
        total, ce, kd = distill_terms(logits, batch["labels"], cache.of(batch["example_id"].cpu()).to(device),
                                      alpha, beta, temperature)
        return StepOutput(total, {"loss": total.item(), "ce": ce.item(), "kd": kd.item()})

    return step


def distill_terms(logits: torch.Tensor, labels: torch.Tensor, suspect: torch.Tensor, alpha: float, beta: float,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, CE, KD) of a batch's logits: alpha * CE on its labelled rows + beta * T^2 KL toward the suspect's."""
    ce = labelled_cross_entropy(logits, labels, UNLABELLED)
    kd = kd_loss(logits, suspect, temperature) if beta else logits.new_zeros(())
    return distill_total(ce, kd, alpha, beta), ce, kd


def with_texts(rows: list[Example], unlabelled: list[Example], use: bool) -> list[Example]:
    """What a distilling stage trains on: the labelled rows, then the unlabelled texts when `use`."""
    return list(rows) + (list(unlabelled) if use else [])
