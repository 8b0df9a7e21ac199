"""w2sdefense: poison, fine-tune, defend (weak-to-strong unlearning), scan and measure LM classifiers.

The Python API (w2sdefense.api): `clean_model`, `scan_model` and `run_config`, the `clean`, `scan` and `run` commands
as functions that return typed reports.
"""

from w2sdefense.api import clean_model, run_config, scan_model

__version__ = "0.1.0"
__all__ = ["clean_model", "run_config", "scan_model", "__version__"]
