"""eval/stage.py: a stage's kind is read from its own record (filter.json, teacher.json), else a classifier."""

from __future__ import annotations

from pathlib import Path

from w2sdefense.eval.stage import CLASSIFIER, INPUT_FILTER, TEACHER, stage_kind


def test_stage_kind_comes_from_the_stage_record(tmp_path: Path) -> None:
    (tmp_path / "filter").mkdir()
    (tmp_path / "filter" / "filter.json").write_text("{}")
    (tmp_path / "teacher" / "model").mkdir(parents=True)
    (tmp_path / "teacher" / "model" / "teacher.json").write_text("{}")
    (tmp_path / "saved-teacher").mkdir()
    (tmp_path / "saved-teacher" / "teacher.json").write_text("{}")
    (tmp_path / "victim" / "model").mkdir(parents=True)
    (tmp_path / "victim" / "metrics.json").write_text("{}")
    kinds = {name: stage_kind(tmp_path / name) for name in ("filter", "teacher", "saved-teacher", "victim")}
    assert kinds == {"filter": INPUT_FILTER, "teacher": TEACHER, "saved-teacher": TEACHER, "victim": CLASSIFIER}
    assert stage_kind("tiny-llama") == CLASSIFIER and stage_kind("org/some-hub-model") == CLASSIFIER
