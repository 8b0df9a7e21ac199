"""Evaluating any stage on a poison folder's test sets: the one function `evaluate` and `run` call.

A stage's kind comes from its own record: an input-filter run holds filter.json (the filter is measured in
front of the model it guards), a saved teacher holds teacher.json (in it or in its model/), anything
else is a classifier (a run folder, a checkpoint, an adapter, a hub id).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from w2sdefense.config import EvalConfig
from w2sdefense.data.poisoned import load_poison_folder, target_label
from w2sdefense.eval.evaluate import evaluate_classifier
from w2sdefense.eval.filtering import InputFilter, evaluate_filtered
from w2sdefense.models import load_classifier
from w2sdefense.models.loading import TEACHER_FILE
from w2sdefense.errors import UserError
from w2sdefense.models.teacher import load_teacher, teacher_labels
from w2sdefense.results import EvaluationResult, write_result
from w2sdefense.rundir import FILTER_FILE, MODEL_DIR
from w2sdefense.runtime import Runtime

CLASSIFIER, TEACHER, INPUT_FILTER = "classifier", "teacher", "input-filter"
# Rebuilds a saved filter from its run folder; returns it and its record (defense, student, seed, ...).
# Filters are registered by the defenses, a layer above: the caller hands this in (defenses.open_filter).
FilterOpener = Callable[[Path], tuple[InputFilter, dict]]


def stage_kind(model: str | Path) -> str:
    """What `model` is, read from its own record: INPUT_FILTER, TEACHER or CLASSIFIER."""
    path = Path(model).expanduser()
    if (path / FILTER_FILE).is_file():
        return INPUT_FILTER
    if (path / TEACHER_FILE).is_file() or (path / MODEL_DIR / TEACHER_FILE).is_file():
        return TEACHER
    return CLASSIFIER


def evaluate_stage(model: str | Path, poison_dir: str | Path, cfg: EvalConfig, rt: Runtime, out_file: Path | None,
                   open_filter: FilterOpener, name_inputs: bool = False) -> EvaluationResult:
    """Load what `model` holds (by stage_kind), measure it on `poison_dir`'s clean and triggered test sets,
    and write the metrics to `out_file` once (main process; None: not written).

    `name_inputs` adds what was measured (`model`, `poison_dir`; for a filter also `defense` and `student`)
    to the record, as `evaluate` writes it; a `run` stage's record does not repeat its own folder.
    """
    data = load_poison_folder(poison_dir)
    target = target_label(poison_dir)
    kind = stage_kind(model)
    named = {"model": str(model)}
    if kind == INPUT_FILTER:
        flt, record = open_filter(Path(model))
        clf = load_classifier(record["student"], data.num_labels, rt.dtype)
        metrics = evaluate_filtered(clf, flt, data.test, data.test_triggered, target, cfg, rt, record["seed"])
        named.update(defense=record["defense"], student=record["student"])
    else:
        clf = _load_teacher(model, poison_dir, data.num_labels, rt) if kind == TEACHER else load_classifier(
            str(model), data.num_labels, rt.dtype)
        metrics = evaluate_classifier(clf, data.test, data.test_triggered, target, cfg, rt).to_json()
    if name_inputs:
        metrics.update(named, poison_dir=str(poison_dir))
    result = EvaluationResult.from_json(metrics)
    return write_result(out_file, result, rt.is_main) if out_file is not None else result


def _load_teacher(model: str | Path, poison_dir: str | Path, num_labels: int, rt: Runtime):
    """A saved teacher, measured like a classifier (its own head), once its labels are the data's."""
    taught = teacher_labels(model)
    if taught != num_labels:
        raise UserError(f"the teacher {model} classifies {taught} labels, but the data {poison_dir} has {num_labels}")
    return load_teacher(model, rt.dtype)
