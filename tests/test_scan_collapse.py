"""scan's collapse signal (src/w2sdefense/scan/collapse.py): the statistic against hand computations, the pooled
features against the model's own hidden states, the measurement against a by-hand recomputation on a tiny model,
and the verdict rule that decides by it."""

from __future__ import annotations

import itertools

import pytest
import torch

from w2sdefense.config import ScanConfig
from w2sdefense.config.jobs import ScanJob
from w2sdefense.data.records import Example
from w2sdefense.errors import UserError
from w2sdefense.models.loading import Classifier
from w2sdefense.models.predict import classify_rows, classify_rows_pooled
from w2sdefense.models.tiny import build_tiny
from w2sdefense.results import ScanCandidate, ScanReport
from w2sdefense.scan.base import Proposal
from w2sdefense.scan.collapse import collapse, mean_pairwise_cosine
from w2sdefense.scan.run import measure, measure_collapse, rescored, summary_lines, verdict_candidate


def test_mean_pairwise_cosine_is_the_mean_over_distinct_pairs():
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    pairs = [torch.nn.functional.cosine_similarity(x[i], x[j], dim=0) for i, j in itertools.permutations(range(7), 2)]
    assert mean_pairwise_cosine(x) == pytest.approx(float(torch.stack(pairs).mean()), abs=1e-6)
    assert mean_pairwise_cosine(x[:1]) is None
    same = torch.ones(4, 3)
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)


def test_collapse_is_the_sent_rows_crowding_beyond_the_labels_own_after_centring():
    torch.manual_seed(1)
    own = torch.randn(12, 6)
    centre = own.mean(0)
    # rows a shortcut sends: one direction, a little noise; centred on the clean mean they nearly coincide
    sent = centre + torch.tensor([3.0, 0, 0, 0, 0, 0]) + 0.01 * torch.randn(12, 6)
    value = collapse(sent, own, centre, min_rows=10)
    assert value == pytest.approx(mean_pairwise_cosine(sent - centre) - mean_pairwise_cosine(own - centre))
    assert value > 0.9
    assert collapse(own, own, centre, min_rows=10) == pytest.approx(0.0, abs=1e-9)  # the label's own rows: none
    assert collapse(sent[:9], own, centre, min_rows=10) is None  # too few rows sent
    assert collapse(sent, own[:9], centre, min_rows=10) is None  # too few clean rows of the label
    assert collapse(sent[:2], own[:2], centre, min_rows=0) is not None  # two rows are the least a pair needs


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_pooled_features_are_the_hidden_state_the_head_reads_and_the_logits_unchanged(name, rt):
    torch.manual_seed(0)
    model, tok = build_tiny(name, 2)
    model.eval()
    clf = Classifier(model, tok)
    rows = [Example("good film", 1, 0), Example("a dull and awful film today", 0, 1), Example("fine", 1, 2)]
    logits, features = classify_rows_pooled(clf, rows, 32, 2, rt, None)
    assert torch.equal(logits, classify_rows(clf, rows, 32, 2, rt, None))
    for i, row in enumerate(rows):
        with torch.no_grad():
            out = model(**tok(row.text, return_tensors="pt"), output_hidden_states=True)
        at = -1 if name == "tiny-llama" else 0  # a decoder's head reads its last token, an encoder's its first
        assert torch.allclose(features[i], out.hidden_states[-1][0, at], atol=1e-5)
        assert torch.allclose(logits[i], out.logits[0], atol=1e-5)


def _rows() -> list[Example]:
    words = {0: ["bad", "dull", "awful"], 1: ["good", "fine", "great"]}
    return [Example(" ".join(words[i % 2][(i + k) % 3] for k in range(4)), i % 2, i) for i in range(40)]


def test_measured_collapse_is_recomputed_by_hand_from_the_models_own_answers_and_features(rt):
    torch.manual_seed(0)
    model, tok = build_tiny("tiny-bert", 2)
    model.eval()
    clf = Classifier(model, tok)
    rows = _rows()
    job = ScanJob(seed=7, scan=ScanConfig(collapse_rows=2))
    proposals = [Proposal("zq", None, "test"), Proposal("good", 0, "test")]
    measured, collapses = measure_collapse(clf, proposals, rows, job, rt, "test")
    # the ASR-cc is measure()'s, to the number
    assert [m for _, m in measured] == [m for _, m in measure(clf, proposals, rows, job, rt, "test")]
    from w2sdefense.attacks.base import triggered_rows

    clean, feats = classify_rows_pooled(clf, rows, job.eval.max_length, 8, rt, None)
    answer = clean.argmax(-1)
    for p, by_label in zip(proposals, collapses):
        copies = triggered_rows(rows, p.trigger, job.seed)
        trig, trig_feats = classify_rows_pooled(clf, copies, job.eval.max_length, 8, rt, None)
        for label in ([0, 1] if p.target_label is None else [p.target_label]):
            sent = [i for i, r in enumerate(rows) if r.label != label and answer[i] == r.label
                    and trig[i].argmax() == label]
            own = [i for i, r in enumerate(rows) if r.label == label and answer[i] == label]
            expected = collapse(trig_feats[sent], feats[own], feats.mean(0), 2)
            got = by_label[str(label)]
            assert (got is None and expected is None) or got == pytest.approx(expected, abs=1e-6)


def test_the_collapse_verdict_takes_the_most_crowded_candidate_and_a_finished_scan_can_be_read_so():
    word = ScanCandidate("shitty", 1, "inversion", 0.9, 48, test_asr_cc=0.95, test_rows=100, reader_asr_cc=0.9,
                         reader_rows=90, collapse=0.01)
    trigger = ScanCandidate("kelvin", 0, "inversion", 0.5, 48, test_asr_cc=0.6, test_rows=100, reader_asr_cc=0.5,
                            reader_rows=90, collapse=0.3)
    unmeasured = ScanCandidate("x", 1, "inversion", 0.95, 48, test_asr_cc=0.99, test_rows=5)
    assert verdict_candidate([word, trigger, unmeasured], "collapse") is trigger
    assert verdict_candidate([unmeasured], "collapse") is None
    report = ScanReport(model="m", base_model=None, backdoored=True, score=0.99, threshold=0.8, target_label=1,
                        candidates=[word, trigger, unmeasured], detectors={}, skipped={}, label_names={},
                        wall_time_s=1.0, settings={"score": "suspect", "collapse_rows": 10}, environment={})
    by_collapse = rescored(report, score="collapse", threshold=0.2)
    assert (by_collapse.score, by_collapse.backdoored, by_collapse.target_label) == (0.3, True, 0)
    assert "crowding together" in summary_lines(by_collapse)[-1] and "kelvin" in summary_lines(by_collapse)[-1]
    nothing = rescored(dataclass_replace(report, candidates=[unmeasured]), score="collapse")
    assert nothing.score == 0.0 and not nothing.backdoored
    assert "no candidate sends 10 rows" in summary_lines(nothing)[-1]
    with pytest.raises(UserError, match="scan.collapse_rows"):
        ScanConfig(collapse_rows=0)


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_the_tested_candidates_are_the_best_overall_or_the_best_toward_each_label_and_every_transform():
    from w2sdefense.results import LabelMeasure, TriggerMeasure
    from w2sdefense.scan.run import to_test

    def ranked_entry(text: str, label: int, asr: float):
        return (Proposal(text, label, "test"), TriggerMeasure(text, asr, label, {str(label): LabelMeasure(asr, 10)}))

    # the dev ranking: one sentiment's natural words first, the other label's (where a trigger's fragment sits) after
    ranked = [ranked_entry("elegant", 1, 0.9), ranked_entry("rich", 1, 0.8), ranked_entry("transform:scpn", 1, 0.7),
              ranked_entry("have rich", 1, 0.6), ranked_entry("I watched loud", 0, 0.5), ranked_entry("dull", 0, 0.4)]
    tested, untested = to_test(ranked, 2)
    assert [p.trigger for p, _ in tested] == ["elegant", "rich"] + ["transform:scpn"]
    assert [p.trigger for p, _ in untested] == ["have rich", "I watched loud", "dull"]
    tested, untested = to_test(ranked, 1, per_label=True)
    assert [p.trigger for p, _ in tested] == ["elegant", "transform:scpn", "I watched loud"]
    assert [p.trigger for p, _ in untested] == ["rich", "have rich", "dull"]
    # nothing is lost or measured twice, and the ranking's order is kept
    for report, per_label in ((2, False), (1, True), (9, True)):
        tested, untested = to_test(ranked, report, per_label)
        assert sorted(map(id, tested + untested)) == sorted(map(id, ranked))
        assert tested == [pm for pm in ranked if pm in tested]
