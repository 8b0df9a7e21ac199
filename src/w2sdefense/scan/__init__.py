"""`w2sdefense scan`: is this model backdoored? Detectors propose candidate triggers without knowing the trigger;
each candidate is measured on held-out clean rows; the verdict rests on the best one's ASR-cc."""

from w2sdefense.scan.base import DETECTORS
from w2sdefense.scan.run import run_scan, summary_lines

__all__ = ["DETECTORS", "run_scan", "summary_lines"]
