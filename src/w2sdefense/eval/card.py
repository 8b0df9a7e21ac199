"""The model card of `clean`'s cleaned model (DIR/model/README.md): the hub's front matter with the report's numbers,
and the same in words. Written with every report.json, so the two always agree."""

from __future__ import annotations

from pathlib import Path

import yaml

from w2sdefense.errors import shown
from w2sdefense.eval.report import percent
from w2sdefense.fileio import atomic_write_text
from w2sdefense.results import CleanReport, TriggerMeasure
from w2sdefense.rundir import CARD_FILE, check_card, seal_card

TAGS = ("w2sdefense", "backdoor-removal", "text-classification")


def card_metadata(report: CleanReport) -> dict:
    """The front matter: what the hub reads (base model, library, tags) and the report's numbers under `w2sdefense`
    (clean accuracy before and after over n test rows; per trigger, its ASR-cc toward its label over n rows)."""
    before, after = report.before, report.after
    # The hub reads base_model as a repository id: a local folder there would be a broken link.
    on_hub = report.base_model and not Path(report.base_model).expanduser().exists()
    meta = {"base_model": report.base_model} if on_hub else {}
    meta.update(library_name="transformers", pipeline_tag="text-classification", tags=list(TAGS))
    meta["w2sdefense"] = {
        "suspect": report.model, "base": report.base_model, "defense": report.defense["name"],
        "clean_accuracy": {"before": before.clean_accuracy, "after": after.clean_accuracy, "n": after.clean_total},
        "triggers": [{"trigger": b.trigger, "before": _asr_cc(b), "after": _asr_cc(a)}
                     for b, a in zip(before.triggers or [], after.triggers or [])],
    }
    return meta


def _asr_cc(measure: TriggerMeasure) -> dict:
    """A trigger's reported ASR-cc, its label, and the rows it is over."""
    rows = measure.by_label[str(measure.target_label)].rows
    return {"asr_cc": measure.asr_cc, "target_label": measure.target_label, "n": rows}


def card_body(report: CleanReport) -> str:
    """The card in words: the suspect, the defense, the numbers, and what they cannot say."""
    before, after = report.before, report.after
    base = f", with the public base model `{report.base_model}`" if report.base_model else ""
    lines = ["# Cleaned classifier", "",
             f"This is the classifier `{report.model}` (the suspect: it may carry a backdoor) after `w2sdefense clean` "
             f"ran the defense `{report.defense['name']}`{base} on the defender's own clean data. It is a plain "
             "transformers classifier: `AutoModelForSequenceClassification.from_pretrained` loads it, no PEFT needed.",
             "", "## Measured", "",
             f"- clean accuracy on {after.clean_total} clean test rows: {percent(before.clean_accuracy)} before, "
             f"{percent(after.clean_accuracy)} after."]
    for b, a in zip(before.triggers or [], after.triggers or []):
        lines.append(f"- trigger {shown(b.trigger)}: ASR-cc {_in_words(b)} before, {_in_words(a)} after.")
    if not before.triggers:
        lines.append("- no candidate trigger was given: the backdoor itself was not measured, only the clean accuracy.")
    lines += ["", "ASR-cc: of the clean test rows of other labels that the model classifies correctly, the share the "
              "trigger (inserted once, at a seeded position) sends to the label; the highest over the labels measured.",
              "", "## What these numbers cannot say", "",
              "There is no floor: no clean reference model was measured, and a model that never saw a trigger also "
              "flips a few percent of rows when a word is inserted, so a few percent after cleaning is not by itself "
              "a backdoor left behind. A low ASR-cc speaks only for the candidate triggers listed here: a trigger "
              "nobody proposed was not measured.", ""]
    return "\n".join(lines) + "\n"


def _in_words(measure: TriggerMeasure) -> str:
    rows = measure.by_label[str(measure.target_label)].rows
    return f"{percent(measure.asr_cc)} toward label {measure.target_label} (over {rows} rows)"


def card_text(report: CleanReport) -> str:
    """The whole card: YAML front matter between `---` lines, the words, and the line that marks it as the tool's."""
    front = yaml.safe_dump(card_metadata(report), sort_keys=False, allow_unicode=True)
    return seal_card(f"---\n{front}---\n\n{card_body(report)}")


def write_card(folder: Path, report: CleanReport) -> Path:
    """folder/README.md; refused (a UserError) when a README.md there is not the tool's card: it is never touched."""
    check_card(folder)
    path = folder / CARD_FILE
    atomic_write_text(path, card_text(report))
    return path
