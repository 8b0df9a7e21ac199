"""The input-filter side of defenses: a filter decides per input (reject, or let through, possibly edited)
in front of a model it does not change. Calibrated by `defend` on clean dev data and saved as a run
folder holding `filter.json` (written and read here); eval/filtering.py measures the model behind it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from w2sdefense.data.records import Example
from w2sdefense.errors import UserError
from w2sdefense.eval.filtering import InputFilter
from w2sdefense.eval.stage import INPUT_FILTER, stage_kind
from w2sdefense.fileio import write_json
from w2sdefense.rundir import FILTER_FILE
from w2sdefense.runtime import Runtime


def calibration_rows(job, name: str) -> list[Example]:
    """The clean dev rows an input filter calibrates its threshold on (at least two)."""
    if len(job.splits.dev) < 2:
        raise UserError(f"{name} calibrates its threshold on clean dev rows; the dev split has fewer than 2")
    return job.splits.dev


def frr_threshold(scores: list[float], frr: float) -> tuple[float | None, int]:
    """The threshold that rejects about `frr` of clean rows scoring below it (their frr-quantile), and
    how many of `scores` fall under it; None (nothing rejected) when frr is 0."""
    if frr <= 0:
        return None, 0
    threshold = float(torch.quantile(torch.tensor(scores), frr))
    return threshold, sum(s < threshold for s in scores)


def write_filter(out_dir: Path, defense: str, student: str, settings: dict, flt: InputFilter, rt: Runtime,
                 seed: int) -> None:
    """Save a calibrated filter: which defense, the model it guards, its settings and state, and the seed
    its evaluation sample is drawn with (the defense's)."""
    if rt.is_main:
        write_json(Path(out_dir) / FILTER_FILE, {"defense": defense, **_student_paths(student, Path(out_dir)),
                                                 "settings": settings, "state": flt.state(), "seed": seed})


def _student_paths(student: str, out_dir: Path) -> dict:
    """Where the guarded model is: a local folder both absolute and relative to the filter's folder (what
    a moved or copied run finds it by), a built-in name or hub id as it is."""
    path = Path(student).expanduser()
    if not path.exists():
        return {"student": student}
    absolute = path.resolve()
    return {"student": str(absolute), "student_relative": os.path.relpath(absolute, out_dir.resolve())}


def read_filter(path: str | Path) -> dict:
    """The saved filter record of a filter run folder: its `student` where that model is now, and its
    `seed` (0 in records written before filters kept theirs: the seed their samples were drawn with)."""
    file = Path(path) / FILTER_FILE
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{file}: not a readable filter record ({exc})") from None
    if not isinstance(record, dict):
        raise UserError(f"{file}: not a readable filter record (expected a JSON object)")
    record["student"] = _guarded_model(file, record)
    record.setdefault("seed", 0)
    return record


def _guarded_model(file: Path, record: dict) -> str:
    """The model a filter guards: relative to the filter's folder when it is there (the run was moved or
    copied with its model), else as recorded (an absolute path, as older records hold, a name, a hub id)."""
    student = record.get("student")
    if not isinstance(student, str) or not student:
        raise UserError(f"{file}: names no student (the model the filter guards)")
    relative = record.get("student_relative")
    if not isinstance(relative, str):
        return student
    here = (file.parent / relative).resolve()
    if here.exists():
        return str(here)
    if not Path(student).exists():
        raise UserError(f"{file}: the model it guards is neither at {here} nor at {student} (moved or deleted); "
                        f"put it back, or set student in {FILTER_FILE} to where it is now")
    return student


def models_read(model: str) -> dict[str, str | None]:
    """The models `evaluate` loads, by what they are to the user: --model, and the model behind a filter run."""
    if stage_kind(model) != INPUT_FILTER:
        return {"--model": model}
    return {"--model": model, "the model behind the filter": read_filter(model).get("student")}
