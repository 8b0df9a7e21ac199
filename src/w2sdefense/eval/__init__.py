"""Metrics (clean accuracy, attack success rate), batched inference and reports."""
