"""Defenses, one file each (`w2sdefense list` shows them): W2SDefense (with its losses and teacher), the repair
baselines and the input filters.

A new defense is one file that calls `register_defense` and one import line here.
"""

from w2sdefense.defenses import (  # noqa: F401  (importing a defense's file registers it)
    crow,
    distill_into,
    fine_mixing,
    fine_pruning,
    insert_distill,
    full_ft,
    latent_adversarial,
    layer_cut,
    lora_ft,
    nad,
    onion,
    plant_reset,
    rap,
    reset_distill,
    strip,
    w2sdefense,
)
from w2sdefense.defenses.base import (
    DEFENSES,
    open_filter,
    DefenseJob,
    DefenseSpec,
    register_defense,
    resolve,
    run_defense,
)

__all__ = ["DEFENSES", "open_filter", "DefenseJob", "DefenseSpec", "register_defense", "resolve",
           "run_defense"]
