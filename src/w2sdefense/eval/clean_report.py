"""`clean`'s report: the lines a user reads (the last one says where the cleaned model is), report.json,
report.md and the model card, from a CleanReport alone (the benchmark's evidence lines ride in it)."""

from __future__ import annotations

from pathlib import Path

from w2sdefense.errors import shown
from w2sdefense.eval.card import write_card
from w2sdefense.eval.report import markdown_report, percent
from w2sdefense.fileio import atomic_write_text, write_json
from w2sdefense.models.reset import FAR_FROM_BASE
from w2sdefense.results import CleanReport, TriggerMeasure
from w2sdefense.rundir import MODEL_DIR, REPORT_FILE, REPORT_MD


def label_text(label: int | str, names: list[str] | None) -> str:
    """`label 0`, or `label 0 (negative)` where the suspect's config names its labels."""
    i = int(label)
    return f"label {i} ({names[i]})" if names and 0 <= i < len(names) else f"label {i}"


def _trigger_lines(before: TriggerMeasure, after: TriggerMeasure, names: list[str] | None) -> list[str]:
    """A trigger's ASR-cc before and after toward the same label (the one the suspect's was highest toward), with the
    rows each rate is over; and where the cleaned model's highest lies elsewhere, that too."""
    label = str(before.target_label)
    b, a = before.by_label[label], after.by_label[label]
    lines = [f"trigger {shown(before.trigger)}: ASR-cc toward {label_text(label, names)} {percent(b.asr_cc)} "
             f"(of {b.rows} rows) -> {percent(a.asr_cc)} (of {a.rows} rows)."]
    if after.target_label != before.target_label and after.asr_cc is not None and after.asr_cc > (a.asr_cc or 0.0):
        top = after.by_label[str(after.target_label)]
        lines.append(f"  after cleaning it sends more rows to {label_text(after.target_label, names)}: "
                     f"{percent(top.asr_cc)} (of {top.rows} rows).")
    return lines


def reset_lines(report: CleanReport) -> list[str]:
    """What a reset found about the suspect and its base: how far apart they are (a warning when too far for a
    fine-tune), a tokenizer that differs from the base's, a fresh head."""
    r, lines = report.reset or {}, []
    distance = r.get("suspect_base_relative_distance")
    if distance is not None and distance > FAR_FROM_BASE:
        lines.append(f"warning: the suspect's backbone is {distance:.0%} of the base's weights away from "
                     f"{report.base_model}, far more than fine-tuning moves a model: it is probably not the model the "
                     "suspect was fine-tuned from, and the reset gave the suspect another model's weights. Check --base.")
    elif distance is not None:
        lines.append(f"the suspect is {distance:.2%} away from the base (the backbone's weight change relative to the "
                     "base's weights): a fine-tune of it.")
    remapped, kept = r.get("reset_tokens_remapped"), r.get("reset_tokenizer", "suspect")
    if remapped and kept == "suspect":
        lines.append(f"the suspect's tokenizer maps {remapped} tokens to other ids than the base's, and the cleaned "
                     "model keeps it: a trigger can hide there. --base-tokenizer takes the base's.")
    elif kept == "base":
        lines.append(f"the cleaned model has the base's tokenizer (the suspect's mapped {remapped or 0} tokens to "
                     "other ids).")
    if r.get("reset_head") == "fresh":
        lines.append("the suspect's classification head was replaced by a fresh one (--fresh-head).")
    return lines


def summary_lines(report: CleanReport) -> list[str]:
    """What the command did, in words; the last line is the one a user reads."""
    before, after = report.before, report.after
    lines = [f"{report.defense['name']} on {report.model}: clean accuracy {before.clean_accuracy:.1%} -> "
             f"{after.clean_accuracy:.1%} on {after.clean_total} clean test rows."]
    if report.default_reason:
        lines.append(report.default_reason)
    if report.base_source:
        lines.append(f"public base: {report.base_model}, as the suspect names it in {report.base_source} (--base "
                     "chooses another; --defense w2sdefense runs without one).")
    if report.steps is not None and report.train_rows is not None:
        lines.append(f"trained {report.steps} steps on {report.train_rows} labelled clean rows "
                     "(--set defense.train.max_steps=N changes the budget).")
    lines += reset_lines(report)
    for b, a in zip(before.triggers or [], after.triggers or []):
        lines += _trigger_lines(b, a, report.label_names)
        if a.trigger_cut:
            lines.append(f"  {a.trigger_cut} of {after.clean_total} test rows had this trigger cut off by truncation: "
                         "the model never saw it there (raise eval.max_length to measure them).")
    if not before.triggers:
        lines.append("no candidate trigger given (--trigger, --triggers): the backdoor itself was not measured.")
    lines += report.evidence or []
    lines.append(f"cleaned model: {report.cleaned_model} (plain weights and tokenizer: "
                 "AutoModelForSequenceClassification.from_pretrained loads it).")
    return lines


def _cell(text: str) -> str:
    """`text` as one cell of a Markdown table: a `|` in it (a trigger's) is escaped, not a column break."""
    return text.replace("|", "\\|")


def write_report(out: Path, report: CleanReport) -> None:
    """report.json (everything), report.md (the lines and a table) and the model card, model/README.md (the same
    numbers, with the hub's front matter)."""
    lines = summary_lines(report)
    write_json(out / REPORT_FILE, report.to_json(lines))
    triggers = report.before.triggers or []
    rows = ["| | CA | " + " | ".join(_cell(f"ASR-cc {t.trigger[:30]!r}") for t in triggers) + " |",
            "|---|---|" + "---|" * len(triggers)]
    for name, m in (("suspect", report.before), ("cleaned", report.after)):
        cells = [f"{percent(t.asr_cc)} (label {t.target_label})" for t in m.triggers or []]
        rows.append(f"| {name} | {m.clean_accuracy:.2%} | " + " | ".join(cells) + " |")
    atomic_write_text(out / REPORT_MD, markdown_report(
        "w2sdefense clean", lines, "\n".join(rows),
        "ASR-cc: of the clean test rows of other labels that the model classifies correctly, the share the "
        "trigger (inserted once, at a seeded interior position) sends to the label. Without a clean "
        "reference model there is no floor: a model that never saw a trigger also flips a few percent "
        "(README, Results). Settings: config.yaml; every stage's log: run.log and its folder.\n"))
    write_card(out / MODEL_DIR, report)
