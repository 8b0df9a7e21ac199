"""The experiment report: one row per model, as report.json and a Markdown table."""

from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata
from pathlib import Path

import torch

from w2sdefense.fileio import atomic_write_text, write_json

COLUMNS = [
    ("model", "model", "{}"),
    ("clean_accuracy", "CA", "{:.2%}"),
    ("attack_success_rate", "ASR", "{:.2%}"),
    ("attack_success_rate_clean_correct", "ASR (clean-correct)", "{:.2%}"),
    ("mean_target_probability_triggered", "P(target) triggered", "{:.3f}"),
    ("trainable_params", "trainable params", "{:,}"),
    ("wall_time_s", "stage time (s)", "{:.1f}"),
    ("peak_memory_mb", "peak mem (MB)", "{:.0f}"),
]


def environment() -> dict:
    """Versions, machine and date, so a number can be traced to where it was measured."""
    versions = {}
    for pkg in ("w2sdefense", "torch", "transformers", "peft", "accelerate"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.machine(), "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
    }


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "–" if value is None else fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of the report rows."""
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r, key, fmt) for key, _, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join([header, rule, *body])


def write_report(out_dir: Path, name: str, rows: list[dict], config: dict) -> dict:
    """Write report.json and report.md; return the report."""
    report = {"name": name, "rows": rows, "config": config, "environment": environment()}
    write_json(out_dir / "report.json", report)
    env = report["environment"]
    text = (
        f"# {name}\n\n{markdown_table(rows)}\n\n"
        "CA: accuracy on the clean test set. ASR: share of triggered non-target test inputs "
        "classified as the target label. ASR (clean-correct): the same over the triggered rows "
        "whose clean version the model classifies correctly. Stage time: the wall time of the stage "
        "that produced the model (loading, teacher caching, training, saving; not evaluation).\n\n"
        f"Measured {env['date']} on {env['platform']} ({env['cpu_threads']} torch threads"
        f"{', ' + env['cuda'] if env['cuda'] else ''}), torch {env['versions']['torch']}, "
        f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}.\n"
    )
    atomic_write_text(out_dir / "report.md", text)
    return report
