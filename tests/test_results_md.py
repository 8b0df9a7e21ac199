"""benchmarks/RESULTS.md is generated: rebuilding it from the studies and the committed result files changes
nothing, every study has its notes and a question without a measured number, and a malformed study is refused."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import results_md  # noqa: E402


def test_results_md_is_what_the_studies_and_results_generate():
    committed = (BENCH / "RESULTS.md").read_text(encoding="utf-8")
    assert results_md.build() == committed, "benchmarks/RESULTS.md is stale: run `python benchmarks/results_md.py`"


def test_every_study_has_notes_and_a_question_without_measured_numbers():
    studies = results_md.read_studies()
    assert len(studies) == len(list((BENCH / "studies").glob("*/")))
    measured = re.compile(r"\d+\.\d|\d\s?%|±")
    for study in studies:
        assert (BENCH / "studies" / study.name / "README.md").is_file(), study.name
        for text in (study.title, study.question, study.status or ""):
            assert not measured.search(text), f"{study.name}: a measured number in {text!r}"


def test_every_table_builder_is_shown_once():
    shown = [name for study in results_md.read_studies() for name in study.tables]
    assert sorted(shown) == sorted(results_md.BUILDERS), "a builder shown twice or by no study"


def test_links_in_the_notes_resolve():
    for notes in (BENCH / "studies").glob("*/README.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", notes.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (notes.parent / target).exists(), f"{notes}: broken link {target}"


def test_a_malformed_study_is_refused_with_its_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "study.yaml").write_text("title: t\nquestion: q\norder: 1\ntables: [nope]\n")
    with pytest.raises(ValueError, match="a/study.yaml.*nope"):
        results_md.read_studies(tmp_path)
    (tmp_path / "a" / "study.yaml").write_text("title: t\nquestion: q\norder: 1\nreading: r\n")
    with pytest.raises(ValueError, match="needs title"):
        results_md.read_studies(tmp_path)


def test_the_contents_link_every_section():
    text = results_md.build()
    for study in results_md.read_studies():
        assert f"](#{results_md.anchor(study.title)})" in text and f"## {study.title}\n" in text
