"""Defenses: weak-to-strong unlearning (W2SDefense), its losses and teacher, and baselines."""

from w2sdefense.defenses.registry import DefenseJob, available_defenses, register_defense, run_defense

__all__ = ["DefenseJob", "available_defenses", "register_defense", "run_defense"]
