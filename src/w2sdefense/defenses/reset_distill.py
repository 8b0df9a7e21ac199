"""`reset-distill`: reset the suspect's backbone to the public base it was fine-tuned from, then win back what the
suspect learned by distilling it: the reset model learns the suspect's output distribution on the defender's clean
rows and unlabelled in-domain texts, with cross-entropy on the labelled rows.

    loss = alpha * CE(labelled rows) + beta * T^2 * KL(suspect || student)   (every row, labelled or not)

The trigger never appears in the defender's texts, so the suspect's answers there carry its clean behaviour; the
benchmark's re-learning test and ASR-cc say whether the backdoor comes back through them all the same. With
beta 0 and no unlabelled text it is `fine-mixing` exactly (tests/test_realistic.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from w2sdefense.data.records import UNLABELLED, Example
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.distill import DistillSettings, SuspectLogits, distill_step, suspect_logits, with_texts
from w2sdefense.defenses.fine_mixing import RESET_RECIPE, ResetSettings, reset_modifier
from w2sdefense.train.job import limit


@dataclass(frozen=True)
class ResetDistillSettings(DistillSettings, ResetSettings):
    """The reset's settings (base_model, rho, mix, head, tokenizer), then the distillation's (alpha, beta, temperature,
    unlabelled)."""

    NAME: ClassVar[str] = "reset-distill"

    def __post_init__(self) -> None:
        self.check_reset()
        self.check_distill()


@register_defense("reset-distill", kind="repair", method="lora", settings=ResetDistillSettings, train=RESET_RECIPE,
                  starts_from_victim=False)
def reset_distill(job: DefenseJob) -> dict:
    """Reset the backbone to the public base, then LoRA with CE and distillation from the suspect on clean texts."""
    s, record = job.settings, {}
    rows = distill_rows(job, s.unlabelled)
    cache = cache_suspect(job, rows)
    student = prepare(job, modify=reset_modifier(job, record))
    loss = distill_step(s.alpha, s.beta, s.temperature, cache, job.rt.device)
    metrics = fine_tune(job, student, rows=rows, loss_fn=loss)
    return {**metrics, **record, "unlabelled_rows": sum(e.label == UNLABELLED for e in rows)}


def distill_rows(job: DefenseJob, unlabelled: bool) -> list[Example]:
    """What a distilling repair trains on: the defender's labelled rows, then its unlabelled texts (if asked)."""
    return with_texts(limit(job.splits.train, job.train.max_train_rows), job.splits.unlabelled, unlabelled)


def cache_suspect(job: DefenseJob, rows: list[Example]) -> SuspectLogits:
    """The suspect's logits on a repair's rows."""
    return suspect_logits(job.student, job.splits.num_labels, rows, job.train.max_length, job.train.eval_batch_size,
                          job.rt)
