"""What a stage records: typed results of a poisoning, a training, a defense and an evaluation, and the reports
built from them (`run`'s rows, `clean`'s and `scan`'s reports), written to and read from their JSON files here only.

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
from w2sdefense.rundir import METRICS_FILE, REPORT_FILE

R = TypeVar("R", bound="Result")
E = TypeVar("E", bound="ExperimentReport")


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
    """One stage measured on a poison folder's clean and triggered test sets (eval/metrics.py; eval/filtering.py
    for a model behind an input filter)."""

    clean_accuracy: float | None = None
    clean_correct: int | None = None
    clean_total: int | None = None
    attack_success_rate: float | None = None
    attack_hits: int | None = None
    triggered_total: int | None = None
    attack_success_rate_clean_correct: float | None = None  # None on disk: a rate over zero rows (n/a)
    triggered_clean_correct_total: int | None = None  # the rows ASR-cc is over
    attack_success_rate_survived: float | None = None
    triggered_survived_total: int | None = None
    trigger_cut: int | None = None  # triggered rows whose trigger lies past eval.max_length (a filter counts none)
    mean_target_probability_triggered: float | None = None
    target_label: int | None = None
    eval_wall_time_s: float | None = None  # the evaluation's one wall time
    # An input filter's: the shares of clean and triggered inputs it rejects, its cost per input, and, measured on
    # a sample of the test set, the sample's size and the model alone on the same rows (its fair baseline)
    false_rejection_rate: float | None = None
    detection_rate: float | None = None
    clean_rejected: int | None = None
    triggered_rejected: int | None = None
    clean_accuracy_accepted: float | None = None  # CA over the clean inputs it lets through
    filter_seconds_per_input: float | None = None
    test_rows_sampled: int | None = None
    test_rows_of: int | None = None
    unfiltered_clean_accuracy: float | None = None
    unfiltered_attack_success_rate_clean_correct: float | None = None
    model: str | None = None  # `evaluate`: what was measured, on which folder
    poison_dir: str | None = None

    @property
    def is_filtered(self) -> bool:
        """True for a model measured behind an input filter."""
        return self.false_rejection_rate is not None


@dataclass(frozen=True, kw_only=True)
class PoisonResult(Result):
    """`poison`'s record, its folder's poison.json (written with the folder, data/poisoned.py; read here): the
    attack, the poisoning policy, the data and the seed it ran with, and what it did (`counts`: rows eligible,
    poisoned, skipped, label distributions, trigger_cut); the source files' hashes in `details`. `folder`: the
    poison folder it was read from (not in the file)."""

    attack: dict | None = None
    poison: dict | None = None
    data: dict | None = None
    seed: int | None = None
    num_labels: int | None = None
    counts: dict | None = None
    folder: Path | None = None

    @classmethod
    def named(cls) -> tuple[str, ...]:
        """The fields stored under their own names: all but `details` and `folder`."""
        return tuple(name for name in super().named() if name != "folder")

    @property
    def target_label(self) -> int | None:
        """The label triggered inputs get."""
        return (self.poison or {}).get("target_label")

    @property
    def poisoned_rows(self) -> int | None:
        """The training rows that carry the trigger."""
        return (self.counts or {}).get("poisoned")


# The training stage's figures a report row carries, written as null where the stage recorded none.
TRAINING_COST = ("trainable_params", "total_params", "peak_memory_mb", "peak_memory_kind", "best_dev_accuracy",
                 "selected_step", "selected_dev_accuracy", "steps", "train_examples_per_s", "defense", "seed")


@dataclass(frozen=True, kw_only=True)
class ReportRow(EvaluationResult):
    """One row of `run`'s report: a model (`model`: the row's name) measured, the cost of the stage that made it,
    its residual backdoor, and what it ran with. A key a row written earlier lacks is None here."""

    stage_wall_time_s: float | None = None  # the evaluation stage's wall time
    wall_time_s: float | None = None  # the stage that made the model: loading, caching, training, saving
    trainable_params: int | None = None
    total_params: int | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    best_dev_accuracy: float | None = None
    selected_step: int | None = None
    selected_dev_accuracy: float | None = None
    steps: int | None = None
    train_examples_per_s: float | None = None
    defense: str | None = None  # a defense row's: which defense, with which seed
    seed: int | None = None
    asr_cc_floor: float | None = None  # the clean model's ASR-cc (see `floored`)
    residual_backdoor: float | None = None  # ASR-cc minus the floor, in points
    # What it ran with: the keys of the stage that made the model and of its evaluation (pipeline.py's Stage.of),
    # and, resolved in full, the recipe that stage trained with and a defense's own settings
    stage_key: str | None = None
    eval_key: str | None = None
    train: dict | None = None
    settings: dict | None = None

    @classmethod
    def of(cls, name: str, evaluation: EvaluationResult, trained: TrainingResult, stage_wall_time_s: float | None,
           wall_time_s: float | None, **ran_with: object) -> ReportRow:
        """A row from an evaluation and the training stage that made the model (their two wall times), and what it
        ran with (`ran_with`: stage_key, eval_key, train, settings; None ones left out)."""
        cost = {k: trained.to_json().get(k) for k in TRAINING_COST}
        given = {k: v for k, v in ran_with.items() if v is not None}
        return cls.from_json({"model": name, **evaluation.to_json(), "stage_wall_time_s": stage_wall_time_s,
                              **cost, "wall_time_s": wall_time_s, **given})

    @property
    def floored(self) -> bool:
        """True when the report had a clean model, so the row has a floor and a residual (None ones: n/a)."""
        return self.residual_backdoor is not None or "residual_backdoor" in self.details

    def with_floor(self, floor: float | None) -> ReportRow:
        """This row with the clean model's ASR-cc as its floor and its residual backdoor in points; a residual is
        None (n/a, written as null) when its ASR-cc or the floor is over zero rows."""
        asr_cc = self.attack_success_rate_clean_correct
        residual = None if asr_cc is None or floor is None else 100 * (asr_cc - floor)
        values = {"asr_cc_floor": floor, "residual_backdoor": residual}
        nulls = {k: None for k, v in values.items() if v is None}
        details = {**{k: v for k, v in self.details.items() if k not in values}, **nulls}
        return dataclasses.replace(self, **values, details=details)


@dataclass(frozen=True, kw_only=True)
class ExperimentReport(Result):
    """`run`'s report.json: the experiment's name, its summary lines, one row per model, its config and where it
    was measured. A benchmark's results file is one with keys of its own (a subclass's fields, or `details`)."""

    name: str | None = None
    summary: list[str] | None = None
    rows: list[ReportRow] = field(default_factory=list)
    config: dict | None = None  # the experiment's config as config.yaml holds it (config.to_dict)
    environment: dict | None = None  # versions, machine and date (eval/report.environment)

    def to_json(self) -> dict:
        """The JSON object written to disk: the rows as plain objects."""
        return {**super().to_json(), "rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls: type[E], data: dict) -> E:
        """A report from its JSON object."""
        report = super().from_json({k: v for k, v in data.items() if k != "rows"})
        return dataclasses.replace(report, rows=[ReportRow.from_json(r) for r in data.get("rows", [])])

    def by_model(self) -> dict[str, ReportRow]:
        """The rows by their name."""
        return {r.model: r for r in self.rows}

    def row(self, model: str) -> ReportRow | None:
        """The row named `model`; None when the report has none."""
        return self.by_model().get(model)


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


def read_report(folder: str | Path) -> ExperimentReport:
    """`run`'s report in `folder` (its report.json)."""
    return read_result(ExperimentReport, Path(folder) / REPORT_FILE)


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
    default_reason: str | None = None  # why this defense ran, when the user named none
    evidence: list[str] | None = None  # what the benchmark measured of this defense (defenses/evidence.py), in words

    OPTIONAL: ClassVar[tuple[str, ...]] = ("base_source", "label_names", "reset", "train_rows", "steps",
                                           "default_reason", "evidence")

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


TRANSFORM = "transform:"  # a scan candidate that is a paraphrase transform of the rows (scan.transforms), not a trigger


def is_transform(trigger: str) -> bool:
    """Whether a candidate is a paraphrase transform of the rows (`transform:NAME`), not a text to insert."""
    return trigger.startswith(TRANSFORM)


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
    # the same insertion into the same test rows, read by a clean reader of the task (the base with a head fitted on
    # the defender's rows; scan.reader_check): a natural word of the task moves it too, a backdoor's trigger does not
    reader_asr_cc: float | None = None
    reader_rows: int | None = None
    # the share of the clean test rows of the candidate's label that the clean reader answers with that label: a
    # reader that seldom answers it is moved toward it by nothing, so its ASR-cc there says nothing (None: not read)
    reader_recall: float | None = None
    # the rows it sends to its label crowd together in the suspect's pooled feature beyond the label's own clean rows
    # (scan/collapse.py: mean pairwise cosine, sent minus own; None: not measured, or too few rows)
    collapse: float | None = None

    @property
    def contrast(self) -> float | None:
        """Test ASR-cc on the suspect minus the clean reader's (None where either was not measured)."""
        if self.test_asr_cc is None or self.reader_asr_cc is None:
            return None
        return self.test_asr_cc - self.reader_asr_cc

    def judged(self, min_recall: float) -> bool:
        """Whether the clean reader can judge this candidate: it answers the candidate's label on at least
        `min_recall` of that label's clean rows (a report made before the reader's recall was measured: always)."""
        return self.reader_recall is None or self.reader_recall >= min_recall


@dataclass(frozen=True)
class ScanReport:
    """`scan`'s report: the verdict, the score it rests on and the threshold, and the ranked candidates."""

    model: str
    base_model: str | None
    backdoored: bool
    score: float  # what the verdict rests on (scan.score): the best test ASR-cc, or the best contrast
    threshold: float
    target_label: int | None  # the best candidate's label (None: no candidate at all)
    # best first by the dev rows: the first `scan.report` measured on the test rows, then every transform (a
    # `transform:NAME` candidate, scan.transforms), then the rest
    candidates: list[ScanCandidate]
    detectors: dict[str, float | None]  # each detector's best dev ASR-cc (None: nothing it proposed was measured)
    skipped: dict[str, str]  # detectors that did not run, and why
    label_names: dict[str, str]  # id2label of the model, where it names its labels
    wall_time_s: float
    settings: dict
    environment: dict
    # the largest difference, over the candidates tested that the reader judges (scan.reader_min_recall), of the test
    # ASR-cc minus the clean reader's on the same rows (0.0: it judges none; None: no reader check ran); the verdict
    # rests on it where scan.score is `contrast`
    contrast_score: float | None = None
    # the clean reader's own check on the clean test rows (None: no reader check ran): `rows`, `accuracy`, `majority`
    # (the share of the commonest label: what answering it always reads right) and `recall` ({label: the share of its
    # rows the reader answers with it})
    reader: dict | None = None
    # where the wall time went, in seconds: loading the suspect and sampling the rows, each detector, measuring the
    # candidates on the dev and test rows, the reader check; `reader fit` is inside the first part that asked for it
    seconds: dict[str, float] | None = None

    @property
    def triggers(self) -> list[str]:
        """The candidates measured on the test rows, best first, each once (what triggers.txt lists and `clean
        --triggers` measures; a `transform:NAME` one there measures the test rows' paraphrases of that name)."""
        return list(dict.fromkeys(c.trigger for c in self.candidates if c.test_rows is not None))

    def to_json(self, summary: list[str]) -> dict:
        """report.json's object: every field and the `summary` lines."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**data, "candidates": [dataclasses.asdict(c) for c in self.candidates], "summary": summary}

    @classmethod
    def from_json(cls, data: dict) -> ScanReport:
        """A report from report.json's object (its summary lines are derived, so left out)."""
        fields = {k: v for k, v in data.items() if k != "summary"}
        return cls(**{**fields, "candidates": [ScanCandidate(**c) for c in data["candidates"]]})
