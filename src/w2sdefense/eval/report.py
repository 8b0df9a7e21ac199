"""The experiment report: one row per model (results.ReportRow), as report.json and a Markdown table."""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from w2sdefense.eval.metrics import NOT_DEFINED, rate_or_na
from w2sdefense.fileio import atomic_write_text
from w2sdefense.results import ExperimentReport, ReportRow, write_result
from w2sdefense.rundir import CLEAN_ROW, POISONED_ROW, REPORT_FILE, REPORT_MD, TEACHER_ROW


@dataclass(frozen=True)
class Column:
    """A column of the Markdown table: its title, the row's value, its format, and when a missing value is a rate
    over zero rows (n/a) rather than one the row lacks (–)."""

    title: str
    value: Callable[[ReportRow], Any]
    fmt: str
    undefined: Callable[[ReportRow], bool] = lambda row: False


COLUMNS = [
    Column("model", lambda r: r.model, "{}"),
    Column("CA", lambda r: r.clean_accuracy, "{:.2%}"),
    Column("n (CA)", lambda r: r.clean_total, "{}"),
    # A row's ASR-cc is None only over zero rows; a residual only then, or with no clean model (–)
    Column("ASR-cc", lambda r: r.attack_success_rate_clean_correct, "{:.2%}", lambda r: True),
    Column("n (ASR-cc)", lambda r: r.triggered_clean_correct_total, "{}"),
    Column("residual backdoor (pts)", lambda r: r.residual_backdoor, "{:+.1f}", lambda r: r.floored),
    Column("ASR", lambda r: r.attack_success_rate, "{:.2%}"),
    Column("ASR (trigger kept)", lambda r: r.attack_success_rate_survived, "{:.2%}"),
    Column("triggers cut", lambda r: r.trigger_cut, "{}"),
    Column("P(target) triggered", lambda r: r.mean_target_probability_triggered, "{:.3f}"),
    Column("trainable params", lambda r: r.trainable_params, "{:,}"),
    Column("stage time (s)", lambda r: r.wall_time_s, "{:.1f}"),
    Column("peak mem (MB)", lambda r: r.peak_memory_mb, "{:.0f}"),
]


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


def add_residuals(rows: list[ReportRow]) -> list[ReportRow]:
    """Give every row its residual backdoor: its ASR-cc minus the clean model's, in points.

    The clean model's ASR-cc is the floor: a model that never saw the trigger already sends that
    share of triggered rows to the target (e.g. the SCPN paraphrase itself flips sentiment). Rows
    are left as they are when the report has no clean model. A residual is None (n/a) when its ASR-cc or
    the floor is over zero rows.
    """
    clean = next((r for r in rows if r.model == CLEAN_ROW), None)
    if clean is None:
        return rows
    return [r.with_floor(clean.attack_success_rate_clean_correct) for r in rows]


def plain_summary(rows: list[ReportRow]) -> list[str]:
    """What happened, in words: the backdoor planted, and how much of it each defense removed."""
    poisoned = next((r for r in rows if r.model == POISONED_ROW), None)
    if poisoned is None:
        return []
    ca = poisoned.clean_accuracy
    lines = [f"The attack: ASR-cc {rate_or_na(poisoned.attack_success_rate_clean_correct)} on the poisoned model"
             + (f" (a clean model: {rate_or_na(poisoned.asr_cc_floor)}), CA {ca:.1%}." if poisoned.floored
                else f", CA {ca:.1%}.")]
    for r in rows:
        if r.model in (CLEAN_ROW, POISONED_ROW, TEACHER_ROW):
            continue
        lines.append(_defended(r, poisoned))
    return lines


def _defended(r: ReportRow, poisoned: ReportRow) -> str:
    """One defense's line: the residual backdoor before and after (or its ASR-cc with no floor), its CA change,
    and what an input filter turns away."""
    ca = 100 * (r.clean_accuracy - poisoned.clean_accuracy)
    if poisoned.floored:
        before, after = poisoned.residual_backdoor, r.residual_backdoor
        line = (f"{r.model}: residual backdoor {rate_or_na(before, '{:.1f}')} -> {rate_or_na(after, '{:.1f}')} "
                f"points ({removed_text(before, after)}), CA {ca:+.1f} points.")
    else:
        line = (f"{r.model}: ASR-cc {rate_or_na(r.attack_success_rate_clean_correct)}, CA {ca:+.1f} points "
                "(no clean model in this run, so no floor: set clean_model: true).")
    if r.is_filtered:
        line = (line[:-1] + f"; it rejects {r.false_rejection_rate:.1%} of clean inputs and "
                f"{r.detection_rate:.1%} of triggered ones.")
    return line


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


def _cell(row: ReportRow, column: Column) -> str:
    value = column.value(row)
    if value is None:
        return NOT_DEFINED if column.undefined(row) else "–"
    return column.fmt.format(value)


def markdown_table(rows: Sequence[ReportRow]) -> str:
    """A Markdown table of the report rows."""
    header = "| " + " | ".join(c.title for c in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r, c) for c in COLUMNS) + " |" for r in rows]
    return "\n".join([header, rule, *body])


def write_report(out_dir: Path, name: str, rows: list[ReportRow], config: dict,
                 experiment: str | None = None) -> ExperimentReport:
    """Write report.json and report.md (`experiment`: what was run, in one line, said first); return the report."""
    rows = add_residuals(rows)
    summary = ([experiment] if experiment else []) + plain_summary(rows)
    report = ExperimentReport(name=name, summary=summary, rows=rows, config=config, environment=environment())
    write_result(out_dir / REPORT_FILE, report)
    atomic_write_text(out_dir / REPORT_MD, report_text(report))
    return report


def markdown_report(title: str, lines: list[str], table: str, note: str) -> str:
    """A report.md's layout (run, clean and scan share it): the title, the summary lines as a list, the table, then
    what the table means."""
    return f"# {title}\n\n" + "".join(f"- {line}\n" for line in lines) + f"\n{table}\n\n{note}"


def report_text(report: ExperimentReport) -> str:
    """report.md: the name, the summary lines, the table, what its columns mean and where it was measured."""
    env = report.environment
    return markdown_report(
        report.name, report.summary, markdown_table(report.rows),
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
        f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}.\n")
