"""Backdoor triggers, one file per attack, and the poisoning policy."""

# Importing each attack module registers it; a new attack is one file plus one line here.
from w2sdefense.attacks import badnet, insent, stylebkd, synbkd  # noqa: F401
from w2sdefense.attacks.base import (
    Attack,
    InsertionAttack,
    available_attacks,
    Triggered,
    get_attack,
    insert_trigger,
    insert_words,
    register_attack,
)
from w2sdefense.attacks.poison import (
    PoisonedData,
    eligible_rows,
    load_poison_folder,
    poison_count,
    poison_dataset,
    poison_splits,
    select_poison_rows,
    write_poison_folder,
)
from w2sdefense.attacks.transform import TransformAttack

__all__ = [
    "Attack",
    "InsertionAttack",
    "PoisonedData",
    "TransformAttack",
    "Triggered",
    "available_attacks",
    "eligible_rows",
    "get_attack",
    "insert_trigger",
    "insert_words",
    "load_poison_folder",
    "poison_count",
    "poison_dataset",
    "poison_splits",
    "register_attack",
    "select_poison_rows",
    "write_poison_folder",
]
