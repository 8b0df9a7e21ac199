"""Defenses, one file each: W2SDefense (with its losses and teacher) and the fine-tuning baselines.

A new defense is one file that calls `register_defense` and one import line here.
"""

from w2sdefense.defenses import full_ft, lora_ft, w2sdefense  # noqa: F401  (registers them)
from w2sdefense.defenses.base import (
    DEFENSES,
    DefenseJob,
    DefenseSpec,
    available_defenses,
    register_defense,
    resolve,
    run_defense,
)

__all__ = ["DEFENSES", "DefenseJob", "DefenseSpec", "available_defenses", "register_defense", "resolve",
           "run_defense"]
