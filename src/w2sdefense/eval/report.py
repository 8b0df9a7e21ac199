"""The experiment report: one row per model, as report.json and a Markdown table."""

from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata
from pathlib import Path

import torch

from w2sdefense.eval.metrics import NOT_DEFINED, rate_or_na
from w2sdefense.fileio import atomic_write_text, write_json
from w2sdefense.rundir import CLEAN_ROW, POISONED_ROW, TEACHER_ROW

COLUMNS = [
    ("model", "model", "{}"),
    ("clean_accuracy", "CA", "{:.2%}"),
    ("clean_total", "n (CA)", "{}"),
    ("attack_success_rate_clean_correct", "ASR-cc", "{:.2%}"),
    ("triggered_clean_correct_total", "n (ASR-cc)", "{}"),
    ("residual_backdoor", "residual backdoor (pts)", "{:+.1f}"),
    ("attack_success_rate", "ASR", "{:.2%}"),
    ("attack_success_rate_survived", "ASR (trigger kept)", "{:.2%}"),
    ("trigger_cut", "triggers cut", "{}"),
    ("mean_target_probability_triggered", "P(target) triggered", "{:.3f}"),
    ("trainable_params", "trainable params", "{:,}"),
    ("wall_time_s", "stage time (s)", "{:.1f}"),
    ("peak_memory_mb", "peak mem (MB)", "{:.0f}"),
]
# Columns whose None means a rate over zero rows (n/a), not a value the row lacks (–).
UNDEFINED_WHEN_NONE = ("attack_success_rate_clean_correct", "residual_backdoor")


def percent(rate: float | None) -> str:
    """A rate as a percentage with one decimal; None (a rate over zero rows) as n/a."""
    return "n/a" if rate is None else f"{rate:.1%}"


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


def add_residuals(rows: list[dict]) -> list[dict]:
    """Give every row its residual backdoor: its ASR-cc minus the clean model's, in points.

    The clean model's ASR-cc is the floor: a model that never saw the trigger already sends that
    share of triggered rows to the target (e.g. the SCPN paraphrase itself flips sentiment). Rows
    are left as they are when the report has no clean model. A residual is None (n/a) when its ASR-cc or
    the floor is over zero rows.
    """
    clean = next((r for r in rows if r["model"] == CLEAN_ROW), None)
    if clean is None:
        return rows
    floor = clean["attack_success_rate_clean_correct"]
    return [{**r, "asr_cc_floor": floor,
             "residual_backdoor": _points_above(r["attack_success_rate_clean_correct"], floor)} for r in rows]


def _points_above(value: float | None, floor: float | None) -> float | None:
    return None if value is None or floor is None else 100 * (value - floor)


def plain_summary(rows: list[dict]) -> list[str]:
    """What happened, in words: the backdoor planted, and how much of it each defense removed."""
    by_name = {r["model"]: r for r in rows}
    poisoned = by_name.get(POISONED_ROW)
    if poisoned is None:
        return []
    floor_known = "residual_backdoor" in poisoned
    lines = [f"The attack: ASR-cc {rate_or_na(poisoned['attack_success_rate_clean_correct'])} on the poisoned model"
             + (f" (a clean model: {rate_or_na(poisoned['asr_cc_floor'])}), CA {poisoned['clean_accuracy']:.1%}."
                if floor_known else f", CA {poisoned['clean_accuracy']:.1%}.")]
    for r in rows:
        if r["model"] in (CLEAN_ROW, POISONED_ROW, TEACHER_ROW):
            continue
        ca = 100 * (r["clean_accuracy"] - poisoned["clean_accuracy"])
        if floor_known:
            before, after = poisoned["residual_backdoor"], r["residual_backdoor"]
            lines.append(f"{r['model']}: residual backdoor {rate_or_na(before, '{:.1f}')} -> "
                         f"{rate_or_na(after, '{:.1f}')} points ({removed_text(before, after)}), CA {ca:+.1f} points.")
        else:
            asr_cc = rate_or_na(r["attack_success_rate_clean_correct"])
            lines.append(f"{r['model']}: ASR-cc {asr_cc}, CA {ca:+.1f} points "
                         "(no clean model in this run, so no floor: set clean_model: true).")
        if "false_rejection_rate" in r:  # an input filter: what it turned away
            lines[-1] = (lines[-1][:-1] + f"; it rejects {r['false_rejection_rate']:.1%} of clean inputs and "
                         f"{r['detection_rate']:.1%} of triggered ones.")
    return lines


def removed_text(before: float | None, after: float | None) -> str:
    """How much of the backdoor a defense removed, in points: at most what there was (a model that ends below the
    floor removed all of it, not more)."""
    if before is None or after is None:
        return "n/a removed"
    if before <= 0:
        return "no backdoor above the floor to remove"
    if after <= 0:
        return f"all {before:.1f} removed"
    return f"{before - after:.1f} removed"


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return NOT_DEFINED if key in row and key in UNDEFINED_WHEN_NONE else "–"
    return fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of the report rows."""
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r, key, fmt) for key, _, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join([header, rule, *body])


def write_report(out_dir: Path, name: str, rows: list[dict], config: dict, experiment: str | None = None) -> dict:
    """Write report.json and report.md (`experiment`: what was run, in one line, said first); return the report."""
    rows = add_residuals(rows)
    summary = ([experiment] if experiment else []) + plain_summary(rows)
    report = {"name": name, "summary": summary, "rows": rows, "config": config, "environment": environment()}
    write_json(out_dir / "report.json", report)
    env = report["environment"]
    text = (
        f"# {name}\n\n" + "".join(f"- {line}\n" for line in summary) + f"\n{markdown_table(rows)}\n\n"
        "CA: accuracy on the clean test set. ASR-cc: share of the triggered non-target test inputs "
        "whose clean version the model classifies correctly that it classifies as the target label "
        "(a flip the trigger caused, not an error it already made). Residual backdoor: ASR-cc minus "
        "the clean model's ASR-cc, in points (0 = no more backdoor than a model that never saw the "
        "trigger). n: the rows a rate is over (for CA the clean test rows, for ASR-cc the triggered rows whose clean "
        f"version the model gets right). {NOT_DEFINED}: a share over zero rows (no triggered input's clean version classified correctly), "
        "which is no number. ASR: the same share over all triggered rows. ASR (trigger kept): the same share over the "
        "triggered rows whose trigger lies within eval.max_length tokens; triggers cut: the rows whose trigger "
        "the tokenizer cut off (none for paraphrase attacks, whose trigger has no position). Stage time: "
        "the wall time of the stage that produced the model (loading, teacher caching, training, saving; not "
        "evaluation).\n\n"
        f"Measured {env['date']} on {env['platform']} ({env['cpu_threads']} torch threads"
        f"{', ' + env['cuda'] if env['cuda'] else ''}), torch {env['versions']['torch']}, "
        f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}.\n"
    )
    atomic_write_text(out_dir / "report.md", text)
    return report
