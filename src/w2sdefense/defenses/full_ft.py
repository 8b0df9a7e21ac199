"""`full-ft`: every weight fine-tuned on the defender's clean data (the expensive upper bound of clean
fine-tuning), at a full-parameter learning rate."""

from __future__ import annotations

from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense

FULL_RECIPE = {"method": "full", "epochs": 3.0, "lr": 2e-5, "batch_size": 32, "max_length": 128,
               "select": "latest-within", "select_delta": 0.02}


@register_defense("full-ft", kind="repair", method="full", train=FULL_RECIPE)
def full_ft(job: DefenseJob) -> dict:
    """Full-parameter fine-tuning on the same clean data (the expensive upper bound)."""
    return fine_tune(job, prepare(job))
