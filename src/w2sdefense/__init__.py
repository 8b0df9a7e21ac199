"""w2sdefense: poison, fine-tune, defend (weak-to-strong unlearning), scan and measure LM classifiers.

The Python API (w2sdefense.api): the commands as functions that return typed results. `poison_data`, `train_model`,
`train_teacher`, `defend_model`, `evaluate_model` and `run_config` (the researcher's `poison`, `train`, `teacher`,
`defend`, `evaluate` and `run`); `clean_model` and `scan_model` (the practitioner's `clean` and `scan`).
"""

from w2sdefense.api import (clean_model, defend_model, evaluate_model, poison_data, run_config, scan_model,
                            train_model, train_teacher)

__version__ = "0.1.0"
__all__ = ["clean_model", "defend_model", "evaluate_model", "poison_data", "run_config", "scan_model", "train_model",
           "train_teacher", "__version__"]
