"""`lora-ft`: the W2SDefense recipe without the teacher (cross-entropy on clean data, same adapter, data and
steps): what PEFT fine-tuning alone removes. The authors' code offers only this."""

from __future__ import annotations

from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.recipes import LORA_RECIPE


@register_defense("lora-ft", "lora", kind="repair", method="lora", train=LORA_RECIPE)
def lora_ft(job: DefenseJob) -> dict:
    """The same adapter on the same clean data, cross-entropy only (PEFT alone)."""
    return fine_tune(job, prepare(job))
