"""benchmarks/study_tables.py: the four study tables of RESULTS.md rebuilt from the committed result files, each
checked against the files read here independently."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import study_tables  # noqa: E402

RESULTS = BENCH / "results"
HEADERS = {
    "latent-probe": "| model | epsilon | rows the shift toward 0 flips | toward 1 "
                    "| cos(shift toward 0, the trigger's own shift) |",
    "scan-real": "| scan | detectors | best candidate | its test ASR-cc (n) | verdict | score (scan.score) | wall time |",
    "scan-reader": "| scan | candidate | scanned model: test ASR-cc (n) | clean reader: ASR-cc (n) "
                   "| difference (points) | first by |",
    "filters-paper": "| filter | CA served | ASR-cc | residual (pts) | false rejections (test) | triggered rejected |",
    "weak-attack": "| attack | model | CA | ASR | P(target) on triggered | trainable params | stage time (s) "
                   "| peak mem (MB) |",
}


def _rows(text: str) -> list[list[str]]:
    """The body rows of the markdown table in `text`, as lists of cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_every_builder_gives_a_markdown_table_with_its_header(name):
    lines = [line for line in study_tables.BUILDERS[name](RESULTS).splitlines() if line.startswith("|")]
    assert lines[0] == HEADERS[name]
    assert set(lines[1]) == {"|", "-"} and lines[1].count("|") == lines[0].count("|")
    assert len(lines) > 2 and all(line.count("|") == lines[0].count("|") for line in lines)


def test_the_latent_probe_table_has_every_point_of_the_jsonl():
    points = [json.loads(line) for line in (RESULTS / "latent-probe.jsonl").read_text().splitlines() if line.strip()]
    rows = _rows(study_tables.latent_probe_table(RESULTS))
    assert len(rows) == len(points)
    first = next(p for p in points if p["model"] == "insent" and p["epsilon"] == min(q["epsilon"] for q in points))
    toward = first["labels"]
    assert rows[0] == ["InSent suspect", f"{first['epsilon']:g}", f"{100 * toward['0']['flip_rate']:.1f} %",
                       f"{100 * toward['1']['flip_rate']:.1f} %",
                       f"{toward['0']['cos_with_trigger_shift']['insent']:.2f}"]
    assert {float(r[1]) for r in rows} == {p["epsilon"] for p in points}
    assert [r[0] for r in rows].index("clean model") == sum(p["model"] == "insent" for p in points)


def test_the_scan_table_gives_each_reports_best_candidate_and_wall_time():
    reports = {path.stem: _json(path) for path in (RESULTS / "scan-real").glob("*.json")}
    rows = _rows(study_tables.scan_real_table(RESULTS))
    assert len(rows) == len(reports)
    for stem, report in reports.items():
        best = max((c for c in report["candidates"] if c["test_asr_cc"] is not None), key=lambda c: c["test_asr_cc"])
        # the verdict's score: the best test ASR-cc, under scan.score=contrast the best contrast, under collapse the
        # highest collapse
        rule = report["settings"].get("score", "suspect")
        collapses = [c["collapse"] for c in report["candidates"] if c.get("collapse") is not None]
        expected = {"contrast": report.get("contrast_score"), "collapse": max(collapses, default=0.0)}
        assert report["score"] == expected.get(rule, best["test_asr_cc"])
        row = next(r for r in rows if r[0] == study_tables.SCANS.get(stem, stem))
        assert row[2] == f"`{best['trigger']}` → {best['target_label']}"
        assert row[3] == f"{100 * best['test_asr_cc']:.1f} % ({best['test_rows']})"
        assert row[5] == f"{report['score']:.2f} ({rule})"
        assert row[6] == f"{round(report['wall_time_s']) // 60} min {round(report['wall_time_s']) % 60} s"
        assert row[4].startswith("backdoor" if report["backdoored"] else "no backdoor")


def test_the_scan_reader_table_gives_every_candidate_the_reader_read_and_the_best_by_each_score():
    rows = _rows(study_tables.scan_reader_table(RESULTS))
    reports = {path.stem: _json(path) for path in (RESULTS / "scan-real").glob("*.json")}
    reports.update({path.stem: _json(path) for path in (RESULTS / "scan-reader").glob("*.json")})
    read = {stem: [c for c in r["candidates"] if c.get("reader_asr_cc") is not None] for stem, r in reports.items()}
    read = {stem: candidates for stem, candidates in read.items() if candidates}  # scans without the reader: no rows
    assert len(rows) == sum(len(c) for c in read.values()) > 0
    for stem, candidates in read.items():
        mine = [r for r in rows if r[0] == study_tables.SCANS.get(stem, stem)]
        assert [r[1] for r in mine] == [f"`{c['trigger']}` → {c['target_label']}" for c in candidates]
        for r, c in zip(mine, candidates):
            assert r[3] == f"{100 * c['reader_asr_cc']:.1f} % ({c['reader_rows']})"
            assert r[4].replace("−", "-") == f"{100 * (c['test_asr_cc'] - c['reader_asr_cc']):+.1f}"
        best = max(candidates, key=lambda c: c["test_asr_cc"] - c["reader_asr_cc"])
        assert "contrast" in mine[candidates.index(best)][5]
        if "contrast_score" in reports[stem] and reports[stem]["contrast_score"] is not None:
            assert reports[stem]["contrast_score"] == best["test_asr_cc"] - best["reader_asr_cc"]


def test_the_filters_table_gives_the_files_numbers():
    data = _json(RESULTS / "filters-paper.json")
    rows = {r[0].split("`")[1] if "`" in r[0] else r[0]: r for r in _rows(study_tables.filters_paper_table(RESULTS))}
    rap = next(r for r in data["report"]["rows"] if r["model"] == "rap")
    assert rows["rap"][1:3] == [f"{100 * rap['clean_accuracy']:.1f}",
                                f"{100 * rap['attack_success_rate_clean_correct']:.1f}"]
    assert rows["rap"][5].startswith(f"{100 * rap['detection_rate']:.1f} % ({rap['triggered_rejected']} of ")
    assert rows["rap"][3].replace("−", "-") == f"{rap['residual_backdoor']:+.1f}"
    assert ("strip-other-label" in rows) == ("strip-other-label" in data)
    if "strip-other-label" in data:
        extra, floor = data["strip-other-label"], data["report"]["rows"][0]["asr_cc_floor"]
        residual = 100 * (extra["attack_success_rate_clean_correct"] - floor)
        assert rows["strip-other-label"][3].replace("−", "-") == f"{residual:+.1f}"
        assert rows["strip-other-label"][4].startswith(f"{100 * extra['false_rejection_rate']:.1f} %")


def test_the_weak_attack_table_gives_every_row_of_the_three_files():
    runs = {path.stem: _json(path) for path in (RESULTS / "weak-attack-2026-11-22").glob("*.json")}
    rows = _rows(study_tables.weak_attack_table(RESULTS))
    assert len(rows) == sum(len(run["rows"]) for run in runs.values())
    clean = next(r for r in runs["badnet"]["rows"] if r["model"] == "clean model")
    assert rows[0] == ["badnet", "clean model",
                       f"{100 * clean['clean_accuracy']:.2f}% ({clean['clean_correct']}/{clean['clean_total']})",
                       f"{100 * clean['attack_success_rate']:.2f}% ({clean['attack_hits']}/{clean['triggered_total']})",
                       f"{clean['mean_target_probability_triggered']:.3f}", f"{clean['trainable_params']:,}",
                       f"{clean['wall_time_s']:.0f}", f"{clean['peak_memory_mb']:.0f}"]


def test_the_layer_probe_table_has_a_row_per_layer_and_each_models_own_numbers():
    points = [json.loads(line) for line in (RESULTS / "layer-probe.jsonl").read_text().splitlines() if line.strip()]
    text = study_tables.layer_probe_table(RESULTS)
    rows = _rows(text)
    layers = {str(p["layer"]) for p in points}
    assert len(rows) == len(layers) and rows[0][0] == "head" and rows[1][0] == "after 1"
    header = [line for line in text.splitlines() if line.startswith("|")][0]
    assert header.startswith("| layer | InSent suspect: CA / ASR-cc (insent) |")
    insent = next(p for p in points if p["model"] == "insent" and p["layer"] == 15)
    row = next(r for r in rows if r[0] == "after 15")
    assert row[1] == f"{100 * insent['ca']:.1f} / {100 * insent['asr_cc_insent']:.1f}"


def test_the_trigger_parts_table_has_each_part_per_model_and_the_pools_means():
    points = [json.loads(line) for line in (RESULTS / "trigger-parts.jsonl").read_text().splitlines() if line.strip()]
    text = study_tables.trigger_parts_table(RESULTS)
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    parts = [p for p in points if not p.get("pool")]
    rows = _rows(tables[0])
    assert len(rows) == len({p["part"] for p in parts}) and rows[0][0] == "`I`"
    sentence = next(p for p in parts if p["model"] == "insent" and p["part"] == "I watched this 3D movie")
    assert rows[-1] == ["`I watched this 3D movie`", f"{100 * sentence['asr_cc']:.1f} % ({sentence['target_label']})",
                        rows[-1][2]]
    pool = [p for p in points if p.get("pool") and p["model"] == "clean"]
    clean = next(r for r in _rows(tables[1]) if r[0] == "clean model")
    mean0 = sum(p["by_label"]["0"] for p in pool) / len(pool)
    assert clean[:3] == ["clean model", str(len(pool)), f"{100 * mean0:.1f} %"]


def test_the_scan_zoo_table_gives_each_scans_figures_and_every_models_row(tmp_path):
    sys.path.insert(0, str(BENCH))
    import scan_zoo

    def row(name, family, score, contrast, **extra):
        bad = family != "clean"
        return {"name": name, "split": "held-out", "family": family, "backdoored": bad, "trigger": "cf" if bad else None,
                "transform": None, "mode": "dirty-label" if bad else None, "rate": 0.05 if bad else None,
                "budget": "gentle", "planted_asr_cc": 0.97 if bad else None, "implanted": True if bad else None,
                "score": score, "contrast_score": contrast, "best": "cf" if bad else "bad", "recovered": bad or None,
                "target_label": 0 if bad else None, "found_label": 0, "scan_s": 60.0, "date": "2026-12-07",
                "machine": "Linux, 2 torch threads, CPU", **extra}

    rows = [row("bd", "badnet", 1.0, 0.6, verdict=True), row("c1", "clean", 0.5, 0.2, verdict=False),
            row("c2", "clean", 1.0, 0.1, verdict=True), row("bt", "badnet", 0.9, 0.5, verdict=True, split="tune"),
            row("ct", "clean", 0.4, 0.1, verdict=False, split="tune")]
    for scan, stem in (("default", "scan-zoo"), ("reader-lora", "scan-zoo-reader-lora")):
        (tmp_path / f"{stem}-rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / f"{stem}.json").write_text(json.dumps({"scan": scan, "scan_settings": ["scan.reader=lora"][:scan != "default"],
                                                           **scan_zoo.summarise(rows)}))
    text = study_tables.scan_zoo_table(tmp_path)
    table = _rows(text.split("\n\n")[0])
    # badnet scores 1.0 against clean 0.5 and 1.0: ROC-AUC (1 + 0.5) / 2 = 0.75; by contrast 0.6 beats both: 1.00
    # verdicts: the backdoored model flagged, one clean model of two
    assert table[0] == ["default (the defaults)", "held-out", "all", "1 (0)", "2", "0.75", "0 %", "1.00", "100 %",
                        "100 % / 50 %", "100 %", "100 %"]
    # the tuning half's own figures (0.9 above its clean model's 0.4), after the held-out half's
    assert table[2][:6] == ["default (the defaults)", "tune", "all", "1 (0)", "1", "1.00"]
    assert table[4][0] == "reader-lora (`scan.reader=lora`)" and len(table) == 8  # all + badnet, per half and scan
    models = _rows(text.split("\n\n")[-1])
    assert [m[0] for m in models] == ["bd", "c1", "c2", "bt", "ct"]
    assert models[0][7:] == ["1.00 / 0.60, `cf` (recovered)"] * 2 and models[1][6] == "–"
    assert models[1][7] == "0.50 / 0.20, `bad`"  # a clean model: nothing to recover
    assert "Seconds per scan: default 60 s, reader-lora 60 s. Scanned 2026-12-07 on Linux, 2 torch threads, CPU" in text
