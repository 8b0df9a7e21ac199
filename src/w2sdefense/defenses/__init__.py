"""Defenses, one file each: W2SDefense (with its losses and teacher), the fine-tuning baselines, and the
input filters ONION and STRIP.

A new defense is one file that calls `register_defense` and one import line here.
"""

from w2sdefense.defenses import fine_pruning, full_ft, lora_ft, onion, strip, w2sdefense  # noqa: F401  (registers)
from w2sdefense.defenses.base import (
    DEFENSES,
    open_filter,
    DefenseJob,
    DefenseSpec,
    available_defenses,
    register_defense,
    resolve,
    run_defense,
)

__all__ = ["DEFENSES", "open_filter", "DefenseJob", "DefenseSpec", "available_defenses", "register_defense", "resolve",
           "run_defense"]
