"""`fine-mixing` (Zhang et al., 2022): reset the suspect model's backbone toward the public model it was
fine-tuned from, keeping a seeded share `rho` of the fine-tuning change (or interpolating by `rho`), then
fine-tune on clean data with lora-ft's recipe at two epochs (160 steps: what the public base's backbone needs to
win back the clean accuracy, benchmarks/studies/unlearning-deeper). The trigger never has to
fire for its weights to move: a pathway clean gradients barely reach is reset all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.recipes import LORA_RECIPE
from w2sdefense.errors import UserError
from w2sdefense.models.loading import Classifier
from w2sdefense.config import check_choice
from w2sdefense.models.reset import HEADS, TOKENIZERS, check_reset, reset_student


@dataclass(frozen=True)
class ResetSettings:
    """The reset toward the public base, declared once for the defenses that start from it (fine-mixing,
    reset-distill): what it keeps of the suspect and from where."""

    NAME: ClassVar[str] = "fine-mixing"  # the defense's name in messages
    base_model: str | None = None  # the public model the suspect was fine-tuned from (any name --model takes)
    # Share of the fine-tuning change kept (1: the suspect as it is, 0: the base's backbone). 0, the measured
    # default: a partial reset keeps a share of the backdoor (benchmarks/studies/unlearning-deeper)
    rho: float = 0.0
    mix: str = "mask"  # mask (a seeded Bernoulli(rho) mask per weight) | interpolate (base + rho * change)
    # suspect: keep the suspect's classification head | fresh: a new head too (the control "the base with a fresh
    # head": what of the suspect does the reset keep?)
    head: str = "suspect"
    # suspect: keep the suspect's tokenizer | base: take the base's (a tokenizer that maps the trigger to other ids
    # survives a reset that keeps the suspect's)
    tokenizer: str = "suspect"

    def check_reset(self) -> None:
        """A named base, rho in [0, 1], a known mix, head and tokenizer."""
        if self.base_model is None:
            raise UserError(f"{self.NAME} needs base_model: the public model the suspect was fine-tuned from "
                            "(e.g. base_model: smollm2-135m)")
        check_reset(self.NAME, self.base_model, self.rho, self.mix)
        check_choice(f"{self.NAME}.head", self.head, HEADS)
        check_choice(f"{self.NAME}.tokenizer", self.tokenizer, TOKENIZERS)


@dataclass(frozen=True)
class FineMixingSettings(ResetSettings):
    def __post_init__(self) -> None:
        self.check_reset()


# Two epochs of lora-ft's recipe: the budget the reset needs to keep clean accuracy on every attack, the measured
# default (benchmarks/studies/unlearning-deeper).
RESET_RECIPE = {**LORA_RECIPE, "epochs": 2.0}


@register_defense("fine-mixing", kind="repair", method="lora", settings=FineMixingSettings, train=RESET_RECIPE,
                  starts_from_victim=False)
def fine_mixing(job: DefenseJob) -> dict:
    """Reset the backbone toward the public base (keep a share rho of the change), then two epochs of lora-ft's recipe."""
    record = {}
    return {**fine_tune(job, prepare(job, modify=reset_modifier(job, record))), **record}


def reset_modifier(job: DefenseJob, record: dict) -> Callable[[Classifier], None]:
    """The reset a defense applies to the loaded suspect (its settings' base_model, rho, mix, head and tokenizer),
    as prepare's `modify`; what it did lands in `record`."""
    s = job.settings

    def modify(clf: Classifier) -> None:
        record.update(reset_student(clf, s.base_model, s.rho, s.mix, job.seed, job.rt.dtype, s.head, s.tokenizer))
    return modify
