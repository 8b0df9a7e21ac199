"""What a stage records: typed results of a training, a defense and an evaluation, written to and read from
their JSON files here only.

On disk a result is one flat JSON object: its named fields under their own names, beside whatever else the
stage measured (`details`: best_step, epochs_run, history terms, trigger counts, a defense's own figures).
A key absent from a file is None here and stays absent when written; a key present as null stays null (a rate
over zero rows), so reading and writing a file leaves its keys and values as they were.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from w2sdefense.errors import UserError
from w2sdefense.fileio import write_json
from w2sdefense.rundir import METRICS_FILE

R = TypeVar("R", bound="Result")


@dataclass(frozen=True, kw_only=True)
class Result:
    """The common part: to_json / from_json (a key that is no field is read from `details`)."""

    details: dict = field(default_factory=dict)  # the stage's other measurements, kept as they are on disk

    @classmethod
    def named(cls) -> tuple[str, ...]:
        """The fields stored under their own names (all but `details`)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "details")

    def to_json(self) -> dict:
        """The flat JSON object written to disk."""
        values = {name: getattr(self, name) for name in self.named()}
        return {**self.details, **{k: v for k, v in values.items() if v is not None}}

    @classmethod
    def from_json(cls: type[R], data: dict) -> R:
        """A result from its JSON object; a named key stored as null stays in `details`, so it is written back."""
        names = set(cls.named())
        named = {k: v for k, v in data.items() if k in names and v is not None}
        return cls(**named, details={k: v for k, v in data.items() if k not in named})


@dataclass(frozen=True, kw_only=True)
class TrainingResult(Result):
    """A training stage's record (train, teacher, a NAD self-teacher): its metrics.json."""

    stage: str | None = None  # train | teacher | defense | nad teacher
    wall_time_s: float | None = None  # the stage's one wall time: its work from loading to saving
    best_dev_accuracy: float | None = None
    selected_step: int | None = None  # the step of the checkpoint kept (by clean dev accuracy)
    selected_dev_accuracy: float | None = None
    steps: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    train_examples_per_s: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    feature_dim: int | None = None  # a teacher's: the width of its projection head
    history: list | None = None  # one entry per dev evaluation


@dataclass(frozen=True, kw_only=True)
class DefenseResult(TrainingResult):
    """A defense stage's record: the training fields (absent for a filter that trains nothing), and which
    defense ran with which seed and settings."""

    defense: str | None = None
    seed: int | None = None
    settings: dict | None = None


@dataclass(frozen=True, kw_only=True)
class EvaluationResult(Result):
    """One stage measured on a poison folder's clean and triggered test sets."""

    clean_accuracy: float | None = None
    attack_success_rate: float | None = None
    attack_success_rate_clean_correct: float | None = None  # None on disk: a rate over zero rows (n/a)
    attack_success_rate_survived: float | None = None
    clean_total: int | None = None
    triggered_total: int | None = None
    eval_wall_time_s: float | None = None  # the evaluation's one wall time
    model: str | None = None  # `evaluate`: what was measured, on which folder
    poison_dir: str | None = None


def write_result(path: str | Path, result: Result, is_main: bool = True) -> Result:
    """Write `result` to `path` (a stage's metrics.json, or `evaluate --out`) on the main process."""
    if is_main:
        write_json(path, result.to_json())
    return result


def read_result(cls: type[R], path: str | Path) -> R:
    """A result read back from its file; a file that is not a JSON object is refused in one line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not a result this tool wrote ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a result this tool wrote (no JSON object)")
    return cls.from_json(data)


def stage_result(cls: type[R], folder: str | Path) -> R | None:
    """The result a stage recorded in `folder`'s metrics.json; None when it recorded none."""
    path = Path(folder) / METRICS_FILE
    return read_result(cls, path) if path.is_file() else None


@dataclass(frozen=True)
class LabelMeasure:
    """A trigger's ASR-cc toward one label, over `rows` test rows (None: over no row)."""

    asr_cc: float | None
    rows: int


@dataclass(frozen=True)
class TriggerMeasure:
    """`clean`: one candidate trigger's ASR-cc toward each label measured, and the highest with its label."""

    trigger: str
    asr_cc: float | None
    target_label: int
    by_label: dict[str, LabelMeasure]  # keyed by the label as text, as in the JSON
    # Test rows whose inserted trigger lies past max_length tokens (the model never saw it); None: not counted
    # (a record written before it was), and then left out of the JSON so such records keep their bytes
    trigger_cut: int | None = None

    @classmethod
    def from_json(cls, data: dict) -> TriggerMeasure:
        """A trigger's record from its JSON object."""
        by_label = {label: LabelMeasure(**m) for label, m in data["by_label"].items()}
        return cls(**{**data, "by_label": by_label})


@dataclass(frozen=True, kw_only=True)
class CleanEvaluation(Result):
    """`clean`: one model (the suspect or the cleaned one) measured on the clean test split; its metrics.json."""

    clean_accuracy: float | None = None
    clean_total: int | None = None
    triggers: list[TriggerMeasure] | None = None

    def to_json(self) -> dict:
        """The JSON object written to disk: the triggers as plain objects."""
        data = super().to_json()
        if self.triggers is not None:
            data["triggers"] = [{k: v for k, v in dataclasses.asdict(t).items() if k != "trigger_cut" or v is not None}
                                for t in self.triggers]
        return data

    @classmethod
    def from_json(cls, data: dict) -> CleanEvaluation:
        """A measurement from its JSON object."""
        result = super().from_json(data)
        if result.triggers is None:
            return result
        return dataclasses.replace(result, triggers=[TriggerMeasure.from_json(t) for t in result.triggers])


@dataclass(frozen=True)
class CleanReport:
    """`clean`'s report: what was cleaned with which defense, and the suspect and the cleaned model measured."""

    model: str
    base_model: str | None
    defense: dict  # the defense's settings as a config file gives them
    defense_stage_time_s: float | None
    selected_step: int | None
    before: CleanEvaluation
    after: CleanEvaluation
    cleaned_model: str
    environment: dict
    base_source: str | None = None  # where the suspect named its base, when --base was not given (absent: given)
    label_names: list[str] | None = None  # the suspect's id2label in id order (absent: only LABEL_0, ... or none)
    reset: dict | None = None  # a resetting defense's record: the suspect's distance from the base, head, tokenizer
    train_rows: int | None = None  # the labelled clean rows the defense trained on
    steps: int | None = None  # its optimizer steps

    OPTIONAL: ClassVar[tuple[str, ...]] = ("base_source", "label_names", "reset", "train_rows", "steps")

    def to_json(self, summary: list[str]) -> dict:
        """report.json's object: every field (None as null, but the OPTIONAL ones left out when None) and the
        `summary` lines."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in self.OPTIONAL:
            if data[name] is None:
                del data[name]
        return {**data, "before": self.before.to_json(), "after": self.after.to_json(), "summary": summary}

    @classmethod
    def from_json(cls, data: dict) -> CleanReport:
        """A report from report.json's object (its summary lines are derived, so left out)."""
        fields = {k: v for k, v in data.items() if k != "summary"}
        return cls(**{**fields, "before": CleanEvaluation.from_json(data["before"]),
                      "after": CleanEvaluation.from_json(data["after"])})


@dataclass(frozen=True)
class ScanCandidate:
    """`scan`: one candidate trigger, who proposed it, and its ASR-cc toward its label on held-out clean rows
    (`verify`: the dev rows that ranked it; `test`: the test rows it is reported on, None when not measured)."""

    trigger: str
    target_label: int
    detector: str
    verify_asr_cc: float | None
    verify_rows: int
    test_asr_cc: float | None = None
    test_rows: int | None = None


@dataclass(frozen=True)
class ScanReport:
    """`scan`'s report: the verdict, the score it rests on and the threshold, and the ranked candidates."""

    model: str
    base_model: str | None
    backdoored: bool
    score: float  # the best candidate's ASR-cc on the verification rows
    threshold: float
    target_label: int | None  # the best candidate's label (None: no candidate at all)
    candidates: list[ScanCandidate]  # best first; the first `scan.report` measured on the test rows
    detectors: dict[str, float | None]  # each detector's best verified ASR-cc (None: it proposed nothing)
    skipped: dict[str, str]  # detectors that did not run, and why
    label_names: dict[str, str]  # id2label of the model, where it names its labels
    wall_time_s: float
    settings: dict
    environment: dict

    def to_json(self, summary: list[str]) -> dict:
        """report.json's object: every field and the `summary` lines."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**data, "candidates": [dataclasses.asdict(c) for c in self.candidates], "summary": summary}

    @classmethod
    def from_json(cls, data: dict) -> ScanReport:
        """A report from report.json's object (its summary lines are derived, so left out)."""
        fields = {k: v for k, v in data.items() if k != "summary"}
        return cls(**{**fields, "candidates": [ScanCandidate(**c) for c in data["candidates"]]})
