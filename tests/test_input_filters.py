"""Input-filter defenses (STRIP, ONION): their metrics by hand, their decisions on a model whose backdoor
is known exactly, the perplexity they rest on against the library's own loss, and the real CLI."""

from __future__ import annotations

import json
import math
import os
import random
import shutil

import pytest
import torch
from types import SimpleNamespace

from cli_helpers import error_line, run_cli
from w2sdefense.config import DefenseConfig, RuntimeConfig
from w2sdefense.data.records import Example, Splits
from w2sdefense.defenses import DefenseJob, open_filter, resolve, run_defense
from w2sdefense.defenses.filtering import read_filter, write_filter
from w2sdefense.eval.filtering import Screened, evaluate_filtered, filtered_metrics, sample_test
from w2sdefense.defenses.onion import OnionFilter, OnionSettings
from w2sdefense.defenses.strip import StripFilter, StripSettings
from w2sdefense.config import EvalConfig
from w2sdefense.errors import UserError
from w2sdefense.models import Classifier
from w2sdefense.models.language import load_language_model, perplexities
from w2sdefense.models.tiny import byte_tokenizer
from w2sdefense.results import read_report


def test_filtered_metrics_by_hand():
    # 4 clean rows: row 0 right, row 1 right but rejected, row 2 wrong, row 3 right.
    # 3 triggered rows (clean versions 0, 1, 3): hit, hit (its clean row was rejected), rejected.
    m = filtered_metrics(clean_preds=[1, 1, 0, 1], clean_labels=[1, 1, 1, 1], clean_idx=[0, 1, 2, 3],
                         clean_rejected=[False, True, False, False], trig_preds=[0, 0, 0], trig_idx=[0, 1, 3],
                         trig_rejected=[False, False, True], target=0)
    assert m["clean_accuracy"] == 2 / 4 and m["clean_accuracy_accepted"] == 2 / 3
    assert m["attack_success_rate"] == 2 / 3 and m["attack_hits"] == 2
    # Served right: clean rows 0 and 3; their triggered versions: a hit and a rejection.
    assert m["attack_success_rate_clean_correct"] == 1 / 2 and m["triggered_clean_correct_total"] == 2
    assert m["false_rejection_rate"] == 1 / 4 and m["detection_rate"] == 1 / 3


class KeywordModel(torch.nn.Module):
    """A classifier with a known backdoor: any 'z' byte sends it to class 0 with certainty; without one it
    cannot decide (equal logits, entropy ln 2)."""

    def __init__(self, z_id: int):
        super().__init__()
        self.z_id = z_id
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, **_):
        has_z = ((input_ids == self.z_id) & attention_mask.bool()).any(-1).float()
        return SimpleNamespace(logits=torch.stack([20.0 * has_z, torch.zeros_like(has_z)], -1))


@pytest.fixture
def keyword_classifier():
    tok = byte_tokenizer(["<pad>"], pad_token="<pad>")
    return Classifier(KeywordModel(tok.convert_tokens_to_ids("z")), tok)


CLEAN = ["a fine and lovely film", "the plot was dull", "good acting in every scene", "a boring story",
         "fun for the whole family", "weak and slow", "great music", "the ending felt long"]


def _splits(texts: list[str]) -> Splits:
    rows = [Example(text=t, label=i % 2, idx=i) for i, t in enumerate(texts)]
    return Splits(train=rows, dev=rows, test=rows, num_labels=2)


def test_strip_rejects_inputs_whose_prediction_survives_blending(keyword_classifier, rt, tmp_path):
    cfg = DefenseConfig(name="strip", settings={"copies": 8, "frr": 0.1})
    settings = resolve(cfg).settings
    flt = StripFilter(settings, CLEAN, seed=1)
    clean_entropy = flt.entropies(keyword_classifier, CLEAN, rt)
    assert clean_entropy == pytest.approx([math.log(2)] * len(CLEAN))
    flt.threshold = float(torch.quantile(torch.tensor(clean_entropy), settings.frr))
    triggered = [t.replace(" ", " zz ", 1) for t in CLEAN]
    screened = flt.screen(keyword_classifier, triggered + CLEAN, rt)
    assert screened.rejected == [True] * len(CLEAN) + [False] * len(CLEAN)
    # Each copy keeps the trigger word with probability 1 - replace_ratio: the mean entropy shows it.
    assert all(0 < s < math.log(2) for s in screened.scores[:len(CLEAN)])
    # The same copies for the same input, whatever else is screened with it.
    assert flt.blended(triggered[0]) == flt.blended(triggered[0])


def test_tfidf_ranks_each_texts_words_as_computed_by_hand():
    from w2sdefense.defenses.strip import tfidf_ranked

    # idf = ln(3 / df) + 1: good, film 1.405 (in two texts), bad, plot 2.099; tf = count / words ("." left out).
    # "good good film .": good 2/3 * 1.405 = .937, film .468; "bad film": bad 1.049, film .703;
    # "good plot": plot 1.049, good .703.
    assert tfidf_ranked(["good good film .", "bad film", "good plot"]) == [["good", "film"], ["bad", "film"],
                                                                           ["plot", "good"]]
    assert tfidf_ranked(["a b c d"], keep=2) == [["a", "b"]]  # equal scores keep their order of first use


def test_strip_other_label_donors_replace_words_with_another_labels_top_words(rt):
    from w2sdefense.defenses import strip

    settings = StripSettings(copies=6, replace_ratio=0.5, donors="other-label")
    donors = {0: [["dull", "slow"]], 1: [["lovely", "great"], ["fun"]]}
    flt = StripFilter(settings, CLEAN, seed=2, donor_words=donors)
    text = "w1 w2 w3 w4 w5"
    for copy in flt.blended(text, predicted=0):
        words = copy.split()
        replaced = [w for w, old in zip(words, text.split()) if w != old]
        # int(5 * 0.5) = 2 positions, given a label-1 text's top words in order (the one-word donor gives one).
        assert replaced in (["lovely", "great"], ["great", "lovely"], ["fun"]) and len(words) == 5
        assert "lovely" not in replaced or "great" in replaced
    assert all(set(c.split()) <= set(text.split()) | {"dull", "slow"} for c in flt.blended(text, predicted=1))
    loaded = strip._load(settings, json.loads(json.dumps(flt.state())))  # as filter.json stores it
    assert loaded.donor_words == donors and loaded.blended(text, 0) == flt.blended(text, 0)
    # A record from before donors existed still loads, with the random donors it was calibrated with.
    old = {k: v for k, v in flt.state().items() if k != "donor_words"}
    assert strip._load(StripSettings(), old).donor_words is None
    with pytest.raises(UserError, match="at least two labels"):
        StripFilter(settings, CLEAN, seed=2, donor_words={0: [["dull"]]})


def test_strip_calibrates_on_clean_dev_at_the_stated_false_rejection_rate(rt, tmp_path):
    from w2sdefense.train.job import run_train
    from w2sdefense.config import TrainConfig

    rng = random.Random(0)
    words = "good bad fine dull great weak fun slow lovely boring".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(60)]
    splits = _splits(texts)
    run_train("tiny-llama", splits, TrainConfig(method="full", epochs=1.0, batch_size=8, max_length=32), rt,
              tmp_path / "victim", seed=0)
    cfg = DefenseConfig(name="strip", settings={"copies": 4, "frr": 0.2})
    metrics = run_defense(DefenseJob(str(tmp_path / "victim"), None, splits, cfg, rt, tmp_path / "strip", seed=3))
    assert metrics.details["dev_false_rejection_rate"] <= 0.2 and metrics.details["dev_rows"] == 60
    flt, record = open_filter(tmp_path / "strip")
    assert record["defense"] == "strip" and flt.threshold == pytest.approx(metrics.details["threshold"])
    assert record["student"] == str((tmp_path / "victim").resolve()) and record["seed"] == 3


def test_onion_deletes_the_words_whose_removal_makes_the_text_more_fluent(monkeypatch, rt):
    import w2sdefense.defenses.onion as onion

    text = "a lovely mn film"
    fluency = {text: 100.0, "lovely mn film": 120.0, "a mn film": 130.0, "a lovely film": 20.0,
               "a lovely mn": 140.0, "short": float("inf")}
    monkeypatch.setattr(onion, "perplexities", lambda lm, texts, *a, **k: [fluency[t] for t in texts])
    flt = OnionFilter(OnionSettings(threshold=0.0), lm=object())
    screened = flt.screen(None, [text, "short"], rt)
    assert screened.texts == ["a lovely film", "short"] and screened.rejected == [False, False]
    assert screened.scores[0] == pytest.approx(80.0)
    # A threshold above the gain keeps every word.
    assert OnionFilter(OnionSettings(threshold=90.0), lm=object()).screen(None, [text], rt).texts == [text]


def test_onion_edit_rate_sets_the_threshold_that_edits_that_share_of_clean_rows(monkeypatch, rt):
    import w2sdefense.defenses.onion as onion

    # Four clean two-word texts; removing their second word gains 10, 20, 30 and 40 perplexity points.
    texts = ["a b", "c d", "e f", "g h"]
    fluency = {}
    for text, gain in zip(texts, (10.0, 20.0, 30.0, 40.0)):
        first, second = text.split()
        fluency.update({text: 100.0, first: 100.0 - gain, second: 100.0})
    monkeypatch.setattr(onion, "perplexities", lambda lm, ts, *a, **k: [fluency[t] for t in ts])
    flt = OnionFilter(OnionSettings(edit_rate=0.25), lm=object())
    assert flt.calibrate(texts, rt) == 1  # one of four clean rows keeps a gain above the threshold
    assert flt.threshold == pytest.approx(32.5)  # the 75th percentile of 10, 20, 30, 40 (linear)
    assert flt.screen(None, texts, rt).texts == ["a b", "c d", "e f", "g"]
    # The calibrated threshold is what a saved filter is loaded with; a record without one keeps the setting.
    assert onion._load(OnionSettings(edit_rate=0.25), flt.state()).threshold == pytest.approx(32.5)
    assert onion._load(OnionSettings(threshold=5.0), {}).threshold == 5.0
    # Without edit_rate the paper's threshold 0 stands, and every row with a gain is edited.
    fixed = OnionFilter(OnionSettings(), lm=object())
    assert fixed.calibrate(texts, rt) == 4 and fixed.threshold == 0.0
    with pytest.raises(UserError, match="set one of onion.threshold and onion.edit_rate"):
        OnionSettings(threshold=1.0, edit_rate=0.1)


def test_perplexity_matches_the_library_loss_and_ignores_padding(rt):
    lm = load_language_model("tiny-llama")
    texts = ["a lovely film", "the plot was dull and far too long for what it was"]
    alone = [perplexities(lm, [t], 8, 64, rt.device)[0] for t in texts]
    together = perplexities(lm, texts, 8, 64, rt.device)
    assert together == pytest.approx(alone, rel=1e-5)
    enc = lm.tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        loss = lm.model(**enc, labels=enc["input_ids"]).loss  # the library's own next-token loss
    assert alone[0] == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_evaluate_filtered_counts_rejections_as_the_metrics_say(keyword_classifier, rt):
    flt = StripFilter(StripSettings(copies=8), CLEAN, seed=0, threshold=math.log(2) - 1e-6)
    test = [Example(text=t, label=1, idx=i) for i, t in enumerate(CLEAN)]
    triggered = [Example(text=t.replace(" ", " zz ", 1), label=1, idx=i) for i, t in enumerate(CLEAN)]
    m = evaluate_filtered(keyword_classifier, flt, test, triggered, 0, EvalConfig(batch_size=4, max_length=32), rt,
                          seed=0)
    # Clean rows: undecided logits (argmax 0 = the wrong label), none rejected; triggered: all rejected.
    assert m["false_rejection_rate"] == 0.0 and m["detection_rate"] == 1.0
    assert m["attack_success_rate"] == 0.0 and m["clean_accuracy"] == 0.0 and m["filter_seconds_per_input"] > 0


def test_sample_test_keeps_the_triggered_versions_of_the_sampled_rows():
    test = [Example(text=t, label=0, idx=10 + i) for i, t in enumerate(CLEAN)]
    triggered = [Example(text="zz " + t, label=0, idx=10 + i) for i, t in enumerate(CLEAN) if i % 3]
    clean, trig = sample_test(test, triggered, 5, seed=0)
    assert len(clean) == 5 and [e.idx for e in clean] == sorted(e.idx for e in clean)  # in the test set's order
    assert {e.idx for e in trig} == {e.idx for e in clean} & {e.idx for e in triggered}
    assert sample_test(test, triggered, 0, seed=0) == (test, triggered) == sample_test(test, triggered, 8, seed=0)


def test_the_evaluation_sample_follows_the_seed():
    test = [Example(text=f"row {i}", label=0, idx=i) for i in range(40)]
    triggered = [Example(text=f"zz row {i}", label=0, idx=i) for i in range(40)]
    picked = {seed: [e.idx for e in sample_test(test, triggered, 10, seed)[0]] for seed in (0, 1, 42)}
    assert all(picked[seed] == [e.idx for e in sample_test(test, triggered, 10, seed)[0]] for seed in picked)
    assert len({tuple(rows) for rows in picked.values()}) == 3  # each seed its own sample of the 40 rows


def test_a_filter_keeps_the_defense_seed_for_its_sample(tmp_path):
    write_filter(tmp_path / "new", "onion", "tiny-llama", {}, RejectZZ(3), SimpleNamespace(is_main=True), 43)
    assert read_filter(tmp_path / "new")["seed"] == 43
    # A record written before filters kept their seed was sampled with 0: it still reads so.
    old = {"defense": "onion", "student": "tiny-llama", "settings": {}, "state": {}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "filter.json").write_text(json.dumps(old))
    assert read_filter(tmp_path / "old")["seed"] == 0


def test_a_filter_run_moved_with_its_model_still_finds_it(tmp_path):
    exp = tmp_path / "exp"
    (exp / "victim" / "model").mkdir(parents=True)
    write_filter(exp / "defenses" / "onion", "onion", str(exp / "victim" / "model"), {}, RejectZZ(0),
                 SimpleNamespace(is_main=True), 0)
    saved = json.loads((exp / "defenses" / "onion" / "filter.json").read_text())
    assert saved["student_relative"] == os.path.join("..", "..", "victim", "model")
    moved = exp.rename(tmp_path / "moved")  # the recorded absolute path is gone
    assert read_filter(moved / "defenses" / "onion")["student"] == str((moved / "victim" / "model").resolve())
    # A record from before relative paths keeps its absolute one; a name stays a name.
    old = {"defense": "onion", "student": str(moved / "victim" / "model"), "settings": {}, "state": {}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "filter.json").write_text(json.dumps(old))
    assert read_filter(tmp_path / "old")["student"] == str(moved / "victim" / "model")
    write_filter(tmp_path / "named", "onion", "tiny-llama", {}, RejectZZ(0), SimpleNamespace(is_main=True), 0)
    assert "student_relative" not in json.loads((tmp_path / "named" / "filter.json").read_text())
    assert read_filter(tmp_path / "named")["student"] == "tiny-llama"
    shutil.rmtree(moved / "victim")  # gone from both places: said in one sentence
    with pytest.raises(UserError, match=r"filter.json: the model it guards is neither at .* nor at "):
        read_filter(moved / "defenses" / "onion")


class RejectZZ:
    """A filter that rejects every input with the word 'zz', measured on a sample of the test set."""

    def __init__(self, test_rows: int):
        self.test_rows = test_rows

    def screen(self, clf, texts, rt):
        return Screened(list(texts), ["zz" in t.split() for t in texts], [0.0] * len(texts))

    def state(self):
        return {}


def test_a_sampled_filter_is_measured_beside_the_unfiltered_model_on_the_same_rows(keyword_classifier, rt):
    test = [Example(text=t, label=0, idx=i) for i, t in enumerate(CLEAN)]
    triggered = [Example(text="zz " + t, label=0, idx=i) for i, t in enumerate(CLEAN)]
    cfg = EvalConfig(batch_size=4, max_length=32)
    m = evaluate_filtered(keyword_classifier, RejectZZ(3), test, triggered, 0, cfg, rt, seed=5)
    assert m["clean_total"] == m["triggered_total"] == m["test_rows_sampled"] == 3 and m["test_rows_of"] == 8
    assert m["test_rows_seed"] == 5
    # Behind the filter every triggered row is rejected; without it the 'z' sends each to the target.
    assert m["attack_success_rate"] == 0.0 and m["detection_rate"] == 1.0 and m["clean_accuracy"] == 1.0
    assert m["unfiltered_attack_success_rate"] == m["unfiltered_attack_success_rate_clean_correct"] == 1.0
    assert m["unfiltered_clean_accuracy"] == 1.0
    whole = evaluate_filtered(keyword_classifier, RejectZZ(0), test, triggered, 0, cfg, rt, seed=5)
    assert whole["clean_total"] == 8 and "test_rows_sampled" not in whole and "unfiltered_clean_accuracy" not in whole


def test_input_filters_from_the_cli_and_a_run_config(small_data, tmp_path):
    env = {"W2S_DATA_DIR": str(small_data)}
    config = tmp_path / "filters.yaml"
    config.write_text(
        "name: filters\nseed: 3\n"
        "data: {dataset: sst2, max_train: 120, max_dev: 24, max_test: 24}\n"
        "attack: {name: badnet}\npoison: {count: 30}\n"
        "victim: {model: tiny-llama, train: {method: full, epochs: 1, batch_size: 16, max_length: 32}}\n"
        "clean_model: true\n"
        "defenses:\n  - {name: strip, copies: 2}\n  - {name: onion, lm: tiny-llama, max_words: 8}\n"
        "  - {name: rap, epochs: 1, rows: 32, max_length: 32}\n"
        "  - {name: nad, layers: 1, train: {epochs: 1, batch_size: 16, max_length: 32}}\n"
        "  - {name: fine-pruning, layers: 1, rows: 32, train: {method: full, epochs: 1, batch_size: 16, max_length: 32}}\n"
        "eval: {batch_size: 32, max_length: 32, probe_rows: 8}\n")
    proc = run_cli("run", str(config), "--out", str(tmp_path / "run"), env=env)
    assert proc.returncode == 0, proc.stderr
    rows = read_report(tmp_path / "run").by_model()
    assert set(rows) == {"clean model", "poisoned", "strip", "onion", "rap", "nad", "fine-pruning"}  # no defense needs a teacher
    for name in ("strip", "onion", "rap"):
        assert rows[name].clean_total == 24 and rows[name].is_filtered
        assert rows[name].false_rejection_rate == rows[name].clean_rejected / 24
        assert rows[name].floored
    assert rows["onion"].false_rejection_rate == 0.0  # ONION edits, never rejects
    for name in ("nad", "fine-pruning"):  # repaired models, evaluated like any model
        assert not rows[name].is_filtered
        assert rows[name].clean_accuracy == rows[name].clean_correct / 24
        assert rows[name].steps > 0
    # The single commands: defend writes a filter run, evaluate measures the victim behind it.
    victim, poison = tmp_path / "run" / "victim", tmp_path / "run" / "poison"
    proc = run_cli("defend", "--student", str(victim), "--defense", "strip", "--data", "sst2", "--set",
                   "data.max_dev=24", "--set", "defense.copies=2", "--out", str(tmp_path / "strip"), env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("evaluate", "--model", str(tmp_path / "strip"), "--data", str(poison), "--out",
                   str(tmp_path / "m.json"), env=env)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["defense"] == "strip" and "detection_rate" in m and m["triggered_total"] > 0
    bad = run_cli("defend", "--student", str(victim), "--defense", "strip", "--data", "sst2",
                  "--set", "defense.alpha=1", "--out", str(tmp_path / "bad"), env=env)
    assert error_line(bad) == ("error: unknown setting defense strip.alpha; strip takes copies, replace_ratio, frr, "
                               "blend_rows, max_length, batch_size, donors beside name, label, seed and train")
    assert not (tmp_path / "bad").exists()
