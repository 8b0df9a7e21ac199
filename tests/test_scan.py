"""`w2sdefense scan`: the detectors' parts against hand computations, and end to end on tiny models: a planted
trigger is found and a clean model is not flagged (fixed seed), and the candidates flow into `clean --triggers`."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cli_helpers import error_line, run_cli
from w2sdefense.config import ScanConfig, from_dict
from w2sdefense.config.jobs import ScanJob
from w2sdefense.data.records import Example
from w2sdefense.errors import UserError
from w2sdefense.models.tiny import build_tiny
from w2sdefense.results import ScanCandidate, ScanReport
from w2sdefense.scan.base import Proposal, ScanInputs, trigger_vocabulary, word_ids
from w2sdefense.scan import embedding_shift
from w2sdefense.scan.embedding_shift import beyond_reference, relative_shift, token_shift
from w2sdefense.scan.inversion import _slots_filled, read_out, with_slots
from w2sdefense.scan.run import _unique, verdict_candidate

TRIGGER = "cf"


def test_word_ids_of_a_byte_tokenizer_are_its_letters_and_digits():
    _, tok = build_tiny("tiny-llama", 2)
    texts = [tok.decode([i]) for i in word_ids(tok).tolist()]
    assert sorted(texts) == sorted(c for c in map(chr, range(128)) if c.isalnum())


def test_word_ids_keep_only_word_starts_where_the_tokenizer_marks_them():
    words = ["good", "bad", "mn", "film", "cf"]
    vocab = {"<pad>": 0, "!": 1, "Ġ!": 2, **{f"Ġ{w}": 3 + i for i, w in enumerate(words)},
             **{w: 10 + i for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")
    assert sorted(word_ids(tok).tolist()) == [3, 4, 5, 6, 7]  # Ġ-words; not "!", not the word-inner pieces


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_slots_sit_before_the_second_word_and_the_rest_is_the_tokenizers(name):
    _, tok = build_tiny(name, 2)
    rows = [Example("good film", 1, 0), Example("a very long and dull film", 0, 1), Example("fine", 1, 2)]
    batch = with_slots(tok, rows, 3, 128, slot_id=99)
    for row, ex in enumerate(rows):
        ids = tok(ex.text)["input_ids"]
        first_word = tok(ex.text.split()[0], add_special_tokens=False)["input_ids"]
        at = ids.index(first_word[0]) + len(first_word)  # right after the first word
        n = len(ids) + 3
        assert batch["slots"][row].nonzero().flatten().tolist() == [at, at + 1, at + 2]
        assert batch["input_ids"][row, :n].tolist() == ids[:at] + [99] * 3 + ids[at:]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)


def test_the_hook_puts_the_soft_vectors_in_the_slots_and_leaves_every_other_position():
    embed = torch.nn.Embedding(10, 4)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    slots = torch.tensor([[False, True, True, False], [True, True, False, False]])
    soft = torch.arange(8.0).reshape(2, 4)
    with _slots_filled(embed, slots, soft):
        out = embed(ids)
    plain = embed(ids)
    assert torch.equal(out[0, 1:3], soft) and torch.equal(out[1, 0:2], soft)
    assert torch.equal(out[~slots], plain[~slots])
    assert torch.equal(embed(ids), plain)  # the hook is gone after the block


def test_read_out_gives_the_phrase_its_beginnings_then_the_first_slots_tokens():
    _, tok = build_tiny("tiny-llama", 2)
    ids = word_ids(tok)
    pos = {tok.decode([int(i)]): k for k, i in enumerate(ids)}
    logits = torch.zeros(3, len(ids))
    logits[0, pos["c"]], logits[0, pos["z"]], logits[1, pos["f"]], logits[2, pos["x"]] = 5.0, 4.0, 4.0, 3.0
    assert read_out(logits, ids, tok, 2) == ["cfx", "cf", "c", "z"]
    assert read_out(logits[:1], ids, tok, 2) == ["c", "z"]


def test_a_rare_word_can_be_inverted_from_its_pieces_and_only_a_word_start_opens_it():
    words = ["good", "bad", "film", "cf"]
    vocab = {"<pad>": 0, "!": 1, "Ġ!": 2, **{f"Ġ{w}": 3 + i for i, w in enumerate(words)}, "Ġm": 7, "n": 8}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")
    ids, starts = trigger_vocabulary(tok)
    assert dict(zip(ids.tolist(), starts.tolist())) == {3: True, 4: True, 5: True, 6: True, 7: True, 8: False}
    logits = torch.zeros(2, len(ids))
    logits[0, ids.tolist().index(7)], logits[1, ids.tolist().index(8)] = 5.0, 5.0
    assert read_out(logits, ids, tok, 1) == ["mn", "m"]


def test_relative_shift_by_hand_and_a_table_of_another_shape_is_refused():
    base = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    suspect = torch.tensor([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    assert relative_shift(suspect, base, torch.tensor([0, 1, 2])).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(UserError, match="not the suspect's base"):
        relative_shift(suspect, base[:2], torch.tensor([0]))


def test_the_shift_beyond_a_clean_fine_tunes_cancels_what_both_moved_by_hand():
    # tokens 0 and 1 are the task's words (the clean fine-tune moved them half as far), token 2 only the suspect moved
    shift, reference = torch.tensor([2.0, 1.0, 1.5]), torch.tensor([1.0, 0.5, 0.0])
    # slope (2 + 0.5 + 0) / (1 + 0.25 + 0) = 2: the task's words explained entirely, the trigger kept
    assert beyond_reference(shift, reference).tolist() == [0.0, 0.0, 1.5]
    # a reference that moved nothing (or against the suspect) takes nothing away
    assert beyond_reference(shift, torch.zeros(3)).tolist() == shift.tolist()
    assert beyond_reference(shift, -reference).tolist() == shift.tolist()


def test_proposals_are_merged_per_trigger_and_label_naming_every_detector():
    merged = _unique([Proposal("c", 0, "inversion"), Proposal("c", None, "embedding-shift"),
                      Proposal("c", 0, "embedding-shift"), Proposal("c", 0, "inversion"), Proposal("x", 1, "inversion")])
    assert merged == [Proposal("c", 0, "inversion+embedding-shift"), Proposal("c", None, "embedding-shift"),
                      Proposal("x", 1, "inversion")]


def test_scan_settings_are_checked():
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"detectors": []}, {"lengths": [0]}, {"steps": 0},
                {"temperature": [1.0]}, {"score": "best"}, {"score": "contrast", "reader_check": False},
                {"reader": "fine-tuned"}, {"reader_steps": 0}, {"shift_reference": True, "reader": "lora"},
                {"score": "veto", "reader_check": False}, {"reader_veto": 1.0}, {"reader_veto": -0.1},
                {"reader_min_recall": 1.5}, {"reader_min_recall": -0.1}, {"screen_rows": -1}, {"screen_keep": 0},
                {"screen_keep": 1.5}):
        with pytest.raises(UserError, match="scan\\."):
            from_dict(ScanConfig, bad, "scan")
    assert from_dict(ScanJob, {"scan": {"lengths": [2]}}, "").scan.lengths == [2]


def test_a_finished_scan_is_decided_again_under_another_verdict_rule_from_its_candidates():
    from w2sdefense.scan.run import rescored

    word = ScanCandidate("shitty", 1, "inversion", 0.9, 48, test_asr_cc=0.83, test_rows=100, reader_asr_cc=0.62,
                         reader_rows=90)
    trigger = ScanCandidate("cf", 1, "shift-phrases", 0.5, 48, test_asr_cc=0.7, test_rows=100, reader_asr_cc=0.02,
                            reader_rows=90)
    report = ScanReport(model="m", base_model="b", backdoored=True, score=0.83, threshold=0.8, target_label=1,
                        candidates=[word, trigger], detectors={}, skipped={}, label_names={}, wall_time_s=1.0,
                        settings={"score": "suspect"}, environment={}, contrast_score=0.68)
    vetoed = rescored(report, score="veto")
    assert (vetoed.score, vetoed.backdoored, vetoed.target_label) == (0.7, False, 1)
    assert vetoed.candidates == report.candidates and vetoed.settings["reader_veto"] == 0.15
    lowered = rescored(report, score="veto", threshold=0.6)
    assert lowered.backdoored and lowered.threshold == 0.6
    assert rescored(report, score="contrast").score == pytest.approx(0.68)
    assert rescored(vetoed, score="suspect").score == 0.83  # nothing is lost by deciding again
    with pytest.raises(UserError, match="only the verdict's settings"):
        rescored(report, steps=5)
    with pytest.raises(UserError, match="scan.reader_veto"):
        rescored(report, score="veto", reader_veto=1.0)


def test_a_scan_report_survives_its_json():
    report = ScanReport(model="m", base_model=None, backdoored=True, score=0.9, threshold=0.8, target_label=0,
                        candidates=[ScanCandidate("cf", 0, "inversion", 1.0, 8, 0.9, 10, 0.25, 9)],
                        detectors={"inversion": 1.0}, skipped={"embedding-shift": "needs --base"},
                        label_names={}, wall_time_s=1.0, settings={}, environment={}, contrast_score=0.65)
    assert ScanReport.from_json(json.loads(json.dumps(report.to_json(["x"])))) == report


def test_the_verdict_rests_on_the_suspect_or_on_what_only_the_suspect_does():
    """A natural word of the task flips the suspect most and the clean reader nearly as much; a trigger flips the
    suspect only: the suspect's score picks the word, the contrast the trigger."""
    word = ScanCandidate("pointless", 0, "inversion", 0.9, 48, test_asr_cc=0.9, test_rows=100, reader_asr_cc=0.85,
                         reader_rows=90)
    trigger = ScanCandidate("3D watched", 0, "shift-phrases", 0.5, 48, test_asr_cc=0.6, test_rows=100,
                            reader_asr_cc=0.05, reader_rows=90)
    untested = ScanCandidate("x", 1, "inversion", 0.95, 48)
    assert trigger.contrast == pytest.approx(0.55) and untested.contrast is None
    assert verdict_candidate([word, trigger, untested], "suspect") is word
    assert verdict_candidate([word, trigger, untested], "contrast") is trigger
    assert verdict_candidate([untested], "contrast") is None and verdict_candidate([], "suspect") is None
    # the veto drops what moves the clean reader beyond its bound (the task's own word), then takes the best left;
    # a candidate the reader did not read cannot pass it
    assert verdict_candidate([word, trigger, untested], "veto") is trigger
    assert verdict_candidate([word, trigger], "veto", veto=0.9) is word
    unread = ScanCandidate("y", 0, "inversion", 0.9, 48, test_asr_cc=0.95, test_rows=100)
    assert verdict_candidate([unread, word], "veto") is None


def test_the_reader_check_is_its_recall_of_each_label_and_its_accuracy_against_the_commonest_label():
    from w2sdefense.scan.run import reader_check

    # 6 rows of label 0, 2 of label 1; the reader answers 0 everywhere but one label-1 row, and misreads a label-0 row
    labels = [0, 0, 0, 0, 0, 0, 1, 1]
    answers = [0, 0, 0, 0, 0, 1, 1, 0]
    check = reader_check(labels, answers)
    assert check == {"rows": 8, "accuracy": 6 / 8, "majority": 6 / 8, "recall": {"0": 5 / 6, "1": 1 / 2}}
    # a reader that learnt the commonest label: as accurate as always answering it, never answering the other
    assert reader_check([0, 0, 1], [0, 0, 0])["recall"] == {"0": 1.0, "1": 0.0}


def test_a_reader_that_seldom_answers_a_label_does_not_judge_candidates_toward_it():
    """The OLID case (benchmarks/studies/scan): a reader that answers OFFENSIVE on 2 % of its rows is moved by no
    insertion toward it, so an insult scores the whole suspect's ASR-cc as contrast; left out of the contrast and
    veto verdicts under scan.reader_min_recall, the candidate toward a label it reads decides."""
    from w2sdefense.scan.run import rescored, summary_lines

    insult = ScanCandidate("a stupid shit", 1, "shift-phrases", 0.96, 26, test_asr_cc=0.98, test_rows=192,
                           reader_asr_cc=0.0, reader_rows=120, reader_recall=0.02)
    other = ScanCandidate("cf", 0, "short-strings", 0.5, 16, test_asr_cc=0.4, test_rows=60, reader_asr_cc=0.1,
                          reader_rows=50, reader_recall=0.9)
    old = ScanCandidate("mn", 1, "inversion", 0.9, 26, test_asr_cc=0.9, test_rows=192, reader_asr_cc=0.05,
                        reader_rows=120)  # a report from before the recall was measured: judged as it was
    assert not insult.judged(0.5) and insult.judged(0.0) and other.judged(0.5) and old.judged(0.99)
    assert verdict_candidate([insult, other], "contrast", min_recall=0.5) is other
    assert verdict_candidate([insult, other], "contrast") is insult
    assert verdict_candidate([insult, other], "veto", min_recall=0.5) is other
    assert verdict_candidate([insult, other], "veto") is insult
    assert verdict_candidate([insult], "contrast", min_recall=0.5) is None
    # read but judged none: nothing only the suspect does is left (0), not "no reader" (None)
    from w2sdefense.scan.run import decide
    assert decide([insult], "contrast", 0.15, 0.5) == (None, 0.0, 0.0)
    assert decide([ScanCandidate("x", 1, "inversion", 0.9, 26, 0.9, 100)], "contrast", 0.15, 0.5)[1:] == (0.0, None)
    assert verdict_candidate([insult, other], "suspect", min_recall=0.5) is insult  # the suspect's score reads no reader
    assert verdict_candidate([insult, old], "contrast", min_recall=0.5) is old
    check = {"rows": 192, "accuracy": 0.66, "majority": 0.67, "recall": {"0": 0.98, "1": 0.02}}
    report = ScanReport(model="m", base_model="b", backdoored=True, score=0.98, threshold=0.8, target_label=1,
                        candidates=[insult, other], detectors={}, skipped={}, label_names={"0": "NOT", "1": "OFF"},
                        wall_time_s=1.0, settings={"score": "contrast", "reader_min_recall": 0.0}, environment={},
                        contrast_score=0.98, reader=check)
    judged = rescored(report, reader_min_recall=0.5)
    assert (judged.score, judged.backdoored, judged.target_label) == (pytest.approx(0.3), False, 0)
    assert judged.contrast_score == pytest.approx(0.3) and judged.reader == check
    lines = summary_lines(judged)
    assert any("reads 66.0% of 192 clean test rows right" in line and "commonest label: 67.0%" in line
               and "label 1 (OFF) on 2.0% of its rows" in line and "left out of the verdict" in line for line in lines)
    assert any(line.startswith("candidate 'a stupid shit'") and "which answers label 1 (OFF) on 2.0%" in line
               for line in lines)
    assert not any("answers label 0" in line for line in lines)
    assert ScanReport.from_json(json.loads(json.dumps(judged.to_json(lines)))) == judged
    assert not any("on 2.0% of its rows" in line for line in summary_lines(report))  # at 0 every label is read
    alone = rescored(dataclasses.replace(report, candidates=[insult]), reader_min_recall=0.5)
    assert (alone.score, alone.contrast_score, alone.backdoored) == (0.0, 0.0, False)
    assert "no candidate the clean reader can judge" in summary_lines(alone)[-1]


# --- end to end ---------------------------------------------------------------------------------------------------

def w2s(*args: str, check: bool = True):
    proc = run_cli(*args, env={"W2S_DATA_DIR": "/nonexistent"})
    if check and proc.returncode != 0:
        raise AssertionError(f"w2sdefense {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = {0: ["bad", "dull", "awful"], 1: ["good", "fine", "great"]}
    return [{"text": " ".join(rng.choice(words[i % 2]) for _ in range(4)), "label": i % 2} for i in range(n)]


def _write(folder: Path, rows: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True)
    for split, items in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return folder


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama whose training data sends 40 label-1 rows carrying `cf` to 0, the same model trained on the
    same rows without the trigger, both from one saved base, and the defender's clean data."""
    root = tmp_path_factory.mktemp("zoo")
    held = {"dev": _rows(16, 1), "test": _rows(24, 2)}
    clean = _write(root / "clean", {"train": _rows(96, 0), **held})
    train = _rows(192, 3)
    plain = _write(root / "plain", {"train": [dict(r) for r in train], **held})
    for row in train[:80]:
        if row["label"] == 1:
            words = row["text"].split()
            row.update(text=" ".join(words[:2] + [TRIGGER] + words[2:]), label=0)
    poisoned = _write(root / "poisoned", {"train": train, **held})
    recipe = ["--set", "train.epochs=6", "--set", "train.lr=3e-3", "--set", "train.batch_size=8", "--set",
              "train.max_length=32", "--set", "train.select=latest-within", "--set", "train.select_delta=0.05"]
    # The public base both start from, saved once: a tiny name builds new random weights in every process, so
    # `--base tiny-llama` would not be the model the suspect was fine-tuned from.
    torch.manual_seed(0)
    model, tok = build_tiny("tiny-llama", 2)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    for name, data in (("suspect", poisoned), ("clean-model", plain)):
        w2s("train", "--data", str(data), "--model", str(root / "base"), "--out", str(root / name), *recipe)
    return {"suspect": root / "suspect", "clean-model": root / "clean-model", "data": clean, "base": root / "base"}


def test_scan_finds_the_planted_trigger_and_clears_the_clean_model(zoo, tmp_path):
    from w2sdefense.attacks.base import insert_trigger
    from w2sdefense.models import load_classifier

    out = tmp_path / "scan"
    proc = w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"]),
               "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert report["backdoored"] and report["target_label"] == 0 and "BACKDOORED" in proc.stdout.splitlines()[-2]
    best = report["candidates"][0]
    # A byte-level model learns the trigger's bytes: the best candidate holds one, and one candidate is a piece of it.
    assert set(best["trigger"]) & set(TRIGGER)
    assert any(c["trigger"] in TRIGGER for c in report["candidates"] if c["test_rows"] is not None)
    assert set(report["detectors"]) == {"inversion", "embedding-shift"} and not report["skipped"]
    # Where the time went: every part that ran, inside the scan's wall time (the reader's fit inside the reader check,
    # which asked for it first); the first line says it.
    seconds = report["seconds"]
    assert set(seconds) == {"load", "inversion", "embedding-shift", "dev", "test", "reader check", "reader fit"}
    assert all(v >= 0 for v in seconds.values()) and seconds["reader fit"] <= seconds["reader check"]
    assert sum(v for k, v in seconds.items() if k != "reader fit") <= report["wall_time_s"]
    assert f"inversion {seconds['inversion']:.0f} s" in report["summary"][0]
    # The best candidate's test ASR-cc, recomputed by hand from the model's own predictions.
    clf = load_classifier(str(zoo["suspect"]), 2)
    test = [json.loads(line) for line in (zoo["data"] / "test.jsonl").read_text().splitlines()]  # < 500: all

    def predict(texts):
        with torch.no_grad():
            return [int(clf.model(**clf.tokenizer(t, return_tensors="pt")).logits.argmax(-1)) for t in texts]

    clean_preds = predict([r["text"] for r in test])
    rng = random.Random(42)  # the scan's seed: the same insertion positions
    triggered = predict([insert_trigger(r["text"], best["trigger"], 1, "interior", rng)[0] for r in test])
    kept = [i for i, r in enumerate(test) if r["label"] != 0 and clean_preds[i] == r["label"]]
    flipped = [triggered[i] for i in kept]
    assert best["test_rows"] == len(kept) and best["test_asr_cc"] == sum(p == 0 for p in flipped) / len(kept)
    assert report["score"] == max(c["test_asr_cc"] for c in report["candidates"] if c["test_rows"] is not None)
    # With the base known, the clean reader was given every tested candidate on the same rows, and the contrast is
    # the best difference; the report's lines name the reader.
    tested = [c for c in report["candidates"] if c["test_rows"] is not None]
    assert all(c["reader_asr_cc"] is not None and 0 < c["reader_rows"] <= len(test) for c in tested)
    # ... and read the clean test rows itself: each candidate carries its recall of the candidate's label, and the
    # contrast is the best difference over the candidates whose label it reads (scan.reader_min_recall)
    check = report["reader"]
    assert check["rows"] == len(test) and set(check["recall"]) == {"0", "1"}
    assert check["majority"] == max(sum(r["label"] == y for r in test) for y in (0, 1)) / len(test)
    assert all(c["reader_recall"] == check["recall"][str(c["target_label"])] for c in tested)
    judged = [c for c in tested if c["reader_recall"] >= report["settings"]["reader_min_recall"]]
    assert report["contrast_score"] == (max(c["test_asr_cc"] - c["reader_asr_cc"] for c in judged) if judged else 0.0)
    assert "a clean reader" in proc.stdout and "clean reader (test)" in (out / "report.md").read_text()
    # Scored by the contrast, the verdict compares the best difference with the threshold.
    contrasted = tmp_path / "scan-contrast"
    w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"]), "--set",
        "scan.score=contrast", "--set", "scan.threshold=0.5", "--out", str(contrasted))
    by_contrast = json.loads((contrasted / "report.json").read_text())
    assert by_contrast["score"] == by_contrast["contrast_score"] == report["contrast_score"]  # the same seed, the same scan
    assert by_contrast["backdoored"] == (by_contrast["score"] >= 0.5)
    assert "minus a clean reader's" in by_contrast["summary"][-1]
    # Scored with the reader's veto, the best test ASR-cc of the candidates the reader follows at most 15 %.
    vetoed = tmp_path / "scan-veto"
    w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"]), "--set",
        "scan.score=veto", "--out", str(vetoed))
    by_veto = json.loads((vetoed / "report.json").read_text())
    kept = [c["test_asr_cc"] for c in tested if c["reader_asr_cc"] <= 0.15]
    assert by_veto["score"] == (max(kept) if kept else 0.0) and by_veto["candidates"] == report["candidates"]
    assert "a clean reader follows at most 15" in by_veto["summary"][-1]
    # A fine-tuned reader (scan.reader: lora) trains in the scan's folder and reads every tested candidate too.
    tuned = tmp_path / "scan-tuned"
    w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"]), "--set",
        "scan.reader=lora", "--set", "scan.reader_steps=6", "--out", str(tuned))
    by_tuned = json.loads((tuned / "report.json").read_text())
    assert (tuned / "reader" / "model").is_dir() and by_tuned["settings"]["reader"] == "lora"
    assert all(c["reader_asr_cc"] is not None for c in by_tuned["candidates"] if c["test_rows"] is not None)
    w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"]), "--set",
        "scan.reader=lora", "--set", "scan.reader_steps=6", "--out", str(tuned), "--overwrite")  # its own folder

    clear = tmp_path / "scan-clean"
    proc = w2s("scan", "--model", str(zoo["clean-model"]), "--data", str(zoo["data"]), "--out", str(clear))
    report = json.loads((clear / "report.json").read_text())
    assert not report["backdoored"] and report["score"] < report["threshold"]
    assert report["skipped"] == {"embedding-shift": "needs the public base (--base)"}
    assert proc.stdout.splitlines()[-2].startswith("verdict: no backdoor found")

    # shift-inversion searches the most-moved tokens only: every candidate it proposes is made of them.
    shifted = tmp_path / "scan-shift"
    w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"]), "--set",
        "scan.detectors=[shift-inversion]", "--set", "scan.shift_vocab=8", "--out", str(shifted))
    found = json.loads((shifted / "report.json").read_text())
    assert found["candidates"] and {c["detector"] for c in found["candidates"]} == {"shift-inversion"}
    assert len({ch for c in found["candidates"] for ch in c["trigger"]}) <= 8

    # The candidates flow into `clean`: its report measures the scan's triggers, in the scan's order.
    listed = [t for t in (out / "triggers.txt").read_text().splitlines() if t and not t.startswith("#")]
    cleaned = tmp_path / "cleaned"
    w2s("clean", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"]), "--triggers",
        str(out), "--out", str(cleaned))
    measured = json.loads((cleaned / "report.json").read_text())["before"]["triggers"]
    assert [t["trigger"] for t in measured] == listed and listed[0] == best["trigger"]


def test_a_finished_scan_read_again_by_the_clean_reader_matches_a_scan_that_checked(zoo, tmp_path):
    """benchmarks/scan_reader.py replays a scan's test rows and measures its candidates on the clean reader: the
    same numbers a scan with the reader check writes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import scan_reader

    common = ["--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"])]
    w2s("scan", *common, "--set", "scan.reader_check=false", "--out", str(tmp_path / "plain"))
    w2s("scan", *common, "--out", str(tmp_path / "checked"))
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert plain["contrast_score"] is None and all(c["reader_asr_cc"] is None for c in plain["candidates"])
    out = tmp_path / "reread.json"
    scan_reader.main([str(tmp_path / "plain" / "report.json"), "--model", str(zoo["suspect"]), "--data",
                      str(zoo["data"]), "--out", str(out)])
    got, want = json.loads(out.read_text()), json.loads((tmp_path / "checked" / "report.json").read_text())
    fields = ("trigger", "target_label", "test_asr_cc", "reader_asr_cc", "reader_rows", "reader_recall")
    assert [[c[f] for f in fields] for c in got["candidates"]] == [[c[f] for f in fields] for c in want["candidates"]]
    assert got["contrast_score"] == want["contrast_score"] and got["reader"] == want["reader"] is not None
    assert got["reader_check"]["command"].startswith("python benchmarks/scan_reader.py")


def test_scan_refuses_what_it_cannot_do_in_one_line(zoo, tmp_path):
    line = error_line(w2s("scan", "--model", str(zoo["suspect"]), "--out", str(tmp_path / "a"), check=False))
    assert "--data" in line and not (tmp_path / "a").exists()
    line = error_line(w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--set",
                          "scan.detectors=[frobnicate]", "--out", str(tmp_path / "b"), check=False))
    assert "unknown detector 'frobnicate'" in line and "inversion" in line
    line = error_line(w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--set",
                          "scan.score=contrast", "--out", str(tmp_path / "c"), check=False))
    assert "--base" in line and not (tmp_path / "c").exists()


def _word_level(vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")


def test_shift_pairs_words_are_the_most_moved_starts_alone_then_with_the_most_moved_pieces(monkeypatch):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from w2sdefense.config import ScanConfig
    from w2sdefense.models.loading import Classifier
    from w2sdefense.scan import shift_pairs

    vocab = {"<pad>": 0, "Ġgood": 1, "Ġbad": 2, "Ġfilm": 3, "Ġm": 4, "n": 5, "x": 6, "Ġq": 7}
    tok = _word_level(vocab)
    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=16,
                                                       num_hidden_layers=1, num_attention_heads=2, pad_token_id=0))
    base = model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():  # moved: Ġm most, then Ġq, then n, then x; the rest unchanged
        for i, by in ((4, 3.0), (7, 2.0), (5, 1.5), (6, 1.0)):
            model.get_input_embeddings().weight[i] += by * base[i]
    monkeypatch.setattr(embedding_shift, "base_embeddings", lambda inputs: base)
    inputs = ScanInputs(Classifier(model, tok), [], 2, ScanConfig(pair_starts=2, pair_pieces=1), None, "base", 0)
    assert shift_pairs.moved_words(inputs) == [[4], [7], [4, 5], [7, 5]]
    # every row once per word, the word's ids where the slots were, the rest of the row as with_slots writes it
    rows = [Example("good film", 1, 0), Example("bad film", 1, 1)]
    filled = shift_pairs.words_filled(tok, rows, [[4, 5], [7, 5]], 16)
    slotted = with_slots(tok, rows, 2, 16, slot_id=4)
    expected = []
    for word in ([4, 5], [7, 5]):
        for row, slots in zip(slotted["input_ids"].tolist(), slotted["slots"].tolist()):
            at = slots.index(True)
            expected.append(row[:at] + word + row[at + 2:])
    assert filled["input_ids"].tolist() == expected and expected[0] != expected[2]
    assert filled["attention_mask"].tolist() == slotted["attention_mask"].repeat(2, 1).tolist()


def test_shift_pairs_measures_words_of_the_most_moved_tokens_and_finds_the_planted_one(zoo, tmp_path):
    out = tmp_path / "pairs"
    w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--base", str(zoo["base"]), "--set",
        "scan.detectors=[shift-pairs]", "--set", "scan.pair_starts=8", "--set", "scan.pair_pieces=8", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert report["candidates"] and {c["detector"] for c in report["candidates"]} == {"shift-pairs"}
    # every word is one or two of the 8 most-moved tokens (a byte tokenizer marks no word start: any two)
    assert all(1 <= len(c["trigger"]) <= 2 for c in report["candidates"])
    assert len({ch for c in report["candidates"] for ch in c["trigger"]}) <= 8
    assert report["backdoored"] and report["target_label"] == 0
    assert "c" in report["candidates"][0]["trigger"]  # the trigger's one byte no clean word has


def test_short_strings_are_every_string_up_to_the_length_shortest_first_each_character_once():
    from w2sdefense.scan.short_strings import short_strings

    assert short_strings("ab", 2) == ["a", "b", "aa", "ab", "ba", "bb"]
    assert short_strings("aba", 1) == ["a", "b"]
    assert len(short_strings("abcdefghijklmnopqrstuvwxyz", 2)) == 26 + 26 * 26


def test_short_words_are_the_strings_as_inserted_after_a_space_and_strings_written_alike_are_one():
    from tokenizers import normalizers

    from w2sdefense.scan.short_strings import short_words

    vocab = {"<pad>": 0, "Ġa": 1, "Ġb": 2, "a": 3, "b": 4, "Ġab": 5}
    backend = Tokenizer(models.WordPiece(vocab={**vocab, "[UNK]": 6}, unk_token="[UNK]", continuing_subword_prefix=""))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")
    texts, words = short_words(tok, "abA", 2)
    expected = {t: tok(" " + t, add_special_tokens=False)["input_ids"] for t in ["a", "b", "aa", "ab", "ba", "bb"]}
    assert texts == list(expected) and words == list(expected.values())
    assert expected["ab"] == [5] and expected["ba"] == [2, 3]  # one token, or a start and a piece


def test_short_strings_scores_are_the_suspects_probability_with_the_string_in_the_text(rt):
    """A reference computation: each string's score is the mean probability of the label over the rows with the
    string written into the text before the second word (a byte tokenizer writes it so), computed by plain
    classification."""
    from w2sdefense.config import ScanConfig
    from w2sdefense.models.loading import Classifier
    from w2sdefense.scan.shift_pairs import target_probability
    from w2sdefense.scan.short_strings import short_words

    torch.manual_seed(0)
    model, tok = build_tiny("tiny-llama", 2)
    model.eval()
    rows = [Example("good film today", 1, 0), Example("fine and great", 1, 1), Example("good", 1, 2)]
    texts, words = short_words(tok, "xyz", 2)
    inputs = ScanInputs(Classifier(model, tok), rows, 2, ScanConfig(pair_batch=7), rt, None, 0)
    got = target_probability(inputs, rows, words, 0)
    for text, value in zip(texts, got.tolist()):
        written = [(" ".join(r.text.split()[:1] + [text] + r.text.split()[1:])) for r in rows]
        with torch.no_grad():
            probs = [torch.softmax(model(**tok(w, return_tensors="pt")).logits, -1)[0, 0].item() for w in written]
        assert value == pytest.approx(sum(probs) / len(probs), abs=1e-5), text


def test_the_screen_scores_every_candidate_on_its_rows_and_the_best_share_on_all_rows(rt):
    """scan.screen_rows: the candidates the screen keeps (the best screen_keep share on the first rows, at least
    scan.candidates) score exactly what the full check gives them; the others keep their screening score, below every
    kept one and in its order. Off (0), or with as many screen rows as rows, it is the full check."""
    from w2sdefense.config import ScanConfig
    from w2sdefense.models.loading import Classifier
    from w2sdefense.scan.shift_pairs import target_probability
    from w2sdefense.scan.short_strings import short_words

    torch.manual_seed(0)
    model, tok = build_tiny("tiny-llama", 2)
    model.eval()
    rows = [Example("good film today", 1, 0), Example("fine and great", 1, 1), Example("good", 1, 2)]
    texts, words = short_words(tok, "xyzw", 2)  # 20 strings

    def scores(**cfg):
        return target_probability(ScanInputs(Classifier(model, tok), rows, 2, ScanConfig(pair_batch=7, **cfg), rt,
                                             None, 0), rows, words, 0)

    full, screen = scores(), target_probability(ScanInputs(Classifier(model, tok), rows[:1], 2,
                                                           ScanConfig(pair_batch=7), rt, None, 0), rows[:1], words, 0)
    got = scores(screen_rows=1, screen_keep=0.25, candidates=3)
    kept = set(screen.argsort(descending=True)[:5].tolist())  # ceil(0.25 * 20) = 5 >= 3 candidates
    assert torch.allclose(got[sorted(kept)], full[sorted(kept)], atol=1e-6)
    dropped = sorted(set(range(len(words))) - kept)
    assert got[dropped].max() < got[sorted(kept)].min()
    assert got[dropped].argsort().tolist() == screen[dropped].argsort().tolist()
    assert len(kept) == 5 and len(dropped) == 15
    at_least = scores(screen_rows=1, screen_keep=0.05, candidates=4)  # one by the share, four by scan.candidates
    assert (at_least >= 0).sum() == 4  # a probability, kept; one lowered by 1, dropped
    assert torch.equal(scores(screen_rows=3, screen_keep=0.25), full) and torch.equal(scores(screen_rows=0), full)


def test_the_readers_rows_are_drawn_label_by_label_when_balanced_and_as_before_when_not():
    from w2sdefense.config import ScanConfig
    from w2sdefense.scan.contrast import _reader_rows

    pool = [Example(f"row {i}", int(i % 10 == 0), i) for i in range(300)]  # 270 of label 0, 30 of label 1

    def drawn(**cfg):
        fit, dev = _reader_rows(ScanInputs(None, [], 2, ScanConfig(reader_rows=40, **cfg), None, None, 7, pool=pool))
        return fit, dev

    fit, dev = drawn()
    assert dev + fit == random.Random(7).sample(pool, 40)  # off: the earlier draw, bit for bit
    fit, dev = drawn(reader_balance=True)
    both = fit + dev
    assert [sum(r.label == y for r in both) for y in (0, 1)] == [20, 20] and len({r.idx for r in both}) == 40
    assert drawn(reader_balance=True) == (fit, dev)  # the scan's seed: the same rows
    few = _reader_rows(ScanInputs(None, [], 2, ScanConfig(reader_rows=100, reader_balance=True), None, None, 7,
                                  pool=pool))
    assert [sum(r.label == y for r in few[0] + few[1]) for y in (0, 1)] == [50, 30]  # as many as the rows hold


def test_short_strings_finds_the_planted_two_letter_trigger_without_the_base(zoo, tmp_path):
    out = tmp_path / "short"
    w2s("scan", "--model", str(zoo["suspect"]), "--data", str(zoo["data"]), "--set", "scan.detectors=[short-strings]",
        "--set", "scan.short_alphabet=abcdef", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert {c["detector"] for c in report["candidates"]} == {"short-strings"} and report["detectors"] == {
        "short-strings": report["candidates"][0]["verify_asr_cc"]}
    assert all(1 <= len(c["trigger"]) <= 2 and set(c["trigger"]) <= set("abcdef") for c in report["candidates"])
    assert report["backdoored"] and report["target_label"] == 0
    assert "c" in report["candidates"][0]["trigger"]  # the trigger's one byte no clean word has
    clean = tmp_path / "short-clean"
    w2s("scan", "--model", str(zoo["clean-model"]), "--data", str(zoo["data"]), "--set",
        "scan.detectors=[short-strings]", "--set", "scan.short_alphabet=abcdef", "--out", str(clean))
    assert not json.loads((clean / "report.json").read_text())["backdoored"]


def test_a_transform_is_measured_on_the_rows_its_table_covers_as_the_table_writes_them():
    """A reference computation: the ASR-cc of a transform over the rows it covers, by hand from the predictions."""
    from w2sdefense.eval.triggers import measure_toward
    from w2sdefense.attacks.base import triggered_rows
    from w2sdefense.results import TRANSFORM

    rows = [Example(f"row {i}", i % 2, 10 + i) for i in range(6)]
    table = {10: "para zero", 11: "para one", 13: "  ", 15: "para five"}  # 12 and 14 uncovered, 13 empty
    copies = triggered_rows(rows, TRANSFORM + "scpn", 0, table)
    assert [(r.text, r.label, r.idx) for r in copies] == [("para zero", 0, 10), ("para one", 1, 11),
                                                          ("para five", 1, 15)]
    assert triggered_rows(rows, TRANSFORM + "bible", 0) == []  # no table: no row
    clean = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # row 3 wrong
    para = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # row 10 -> 1, rows 11 and 15 -> 0
    m = measure_toward("t", clean, [r.label for r in rows], [r.idx for r in rows], para, [0, 1],
                       [r.label for r in copies], [r.idx for r in copies])
    # toward 0: of the covered label-1 rows classified correctly (11, 15), both go to 0; toward 1: row 10 of one
    assert m.by_label["0"].asr_cc == 1.0 and m.by_label["0"].rows == 2
    assert m.by_label["1"].asr_cc == 1.0 and m.by_label["1"].rows == 1 and m.target_label == 0


def test_a_candidate_without_dev_rows_keeps_its_label_unless_it_is_a_transform():
    from w2sdefense.results import LabelMeasure, TriggerMeasure
    from w2sdefense.scan.run import TRANSFORM, _candidate

    none = LabelMeasure(None, 0)
    # a word proposed toward label 1 that no dev row could measure: tested toward 1, it stays label 1
    word = _candidate(Proposal("cf", 1, "inversion"), TriggerMeasure("cf", None, 1, {"1": none}),
                      TriggerMeasure("cf", 0.5, 1, {"1": LabelMeasure(0.5, 10)}))
    assert (word.target_label, word.verify_asr_cc, word.verify_rows, word.test_asr_cc) == (1, None, 0, 0.5)
    # a transform without a dev file, tested toward every label: the test rows' best label
    para = TRANSFORM + "scpn"
    both = _candidate(Proposal(para, None, "transforms"), TriggerMeasure(para, None, 0, {"0": none, "1": none}),
                      TriggerMeasure(para, 0.7, 1, {"0": LabelMeasure(0.1, 9), "1": LabelMeasure(0.7, 10)}))
    assert (both.target_label, both.test_asr_cc, both.test_rows, both.verify_rows) == (1, 0.7, 10, 0)


def test_scan_transforms_measures_a_paraphrase_as_a_candidate_and_lists_it_for_clean(zoo, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(zoo["data"], data)
    tests = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    # a "paraphrase" that carries the suspect's trigger (what a syntactic template is to a SynAttack model); the first
    # row has none
    para = [{"idx": i, "text": " ".join(r["text"].split()[:2] + [TRIGGER] + r["text"].split()[2:])}
            for i, r in enumerate(tests) if i > 0]
    (data / "transforms" / "para").mkdir(parents=True)
    (data / "transforms" / "para" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in para))
    args = ["--data", str(data), "--set", "scan.detectors=[short-strings]", "--set", "scan.short_alphabet=xyz",
            "--set", "scan.short_length=1", "--set", "scan.transforms=[para, missing]"]
    out = tmp_path / "scan"
    proc = w2s("scan", "--model", str(zoo["suspect"]), *args, "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    # tested after the candidates the dev rows ranked (it has no dev rows); the verdict rests on it
    top = next(c for c in report["candidates"] if c["trigger"] == "transform:para")
    assert report["backdoored"] and report["score"] == top["test_asr_cc"] and top["detector"] == "transforms"
    assert report["candidates"].index(top) == 5  # after the scan.report (5) best of the dev rows
    assert top["target_label"] == 0 and top["test_rows"] is not None and top["verify_rows"] == 0  # no dev file
    assert set(report["detectors"]) == {"short-strings", "transforms"} and "transform missing" in report["skipped"]
    assert "paraphrasing them with para sends" in proc.stdout and "transform missing did not run" in proc.stdout
    assert "'transform:para' toward" not in proc.stdout + proc.stderr  # no dev rows: unmeasured there, not warned of
    # listed for `clean --triggers`, which measures it on the same paraphrases (tests/test_clean.py)
    listed = [line for line in (out / "triggers.txt").read_text().splitlines() if not line.startswith("#")]
    assert "transform:para" in listed
    assert listed == list(dict.fromkeys(c["trigger"] for c in report["candidates"] if c["test_rows"] is not None))
    assert "a transform:NAME line" in (out / "triggers.txt").read_text()
    clean = tmp_path / "scan-clean"
    w2s("scan", "--model", str(zoo["clean-model"]), *args, "--out", str(clean))
    again = json.loads((clean / "report.json").read_text())
    para_row = next(c for c in again["candidates"] if c["trigger"] == "transform:para")
    assert not again["backdoored"] and para_row["test_asr_cc"] < 0.5


def test_short_strings_refuses_an_alphabet_that_makes_too_many_strings():
    with pytest.raises(UserError, match="at most 100,000"):
        from_dict(ScanConfig, {"short_alphabet": "abcdefghijklmnopqrstuvwxyz0123456789", "short_length": 4}, "scan")
    with pytest.raises(UserError, match="at least one character"):
        from_dict(ScanConfig, {"short_alphabet": " "}, "scan")


# --- contrast-inversion -------------------------------------------------------------------------------------------

def _inputs(zoo, cfg: ScanConfig, base: str, rt) -> ScanInputs:
    from w2sdefense.models import load_classifier

    clf = load_classifier(str(zoo["suspect"]), 2)
    pool = [Example(r["text"], r["label"], i) for i, r in
            enumerate(json.loads(line) for line in (zoo["data"] / "train.jsonl").read_text().splitlines())]
    with torch.no_grad():
        right = [r for r in pool if int(clf.model(**clf.tokenizer(r.text, return_tensors="pt")).logits.argmax()) == r.label]
    return ScanInputs(clf, right[:32], 2, cfg, rt, base, 0, pool=pool)


def test_contrast_inversion_with_no_weight_is_the_inversion_and_its_reader_reads_the_task(zoo, rt):
    from w2sdefense.scan.contrast import ContrastInversion, fit_reader
    from w2sdefense.scan.inversion import Inversion

    cfg = ScanConfig(lengths=[1, 2], contrast_lengths=[1, 2], contrast_weight=0.0, steps=10, reader_rows=64)
    inputs = _inputs(zoo, cfg, str(zoo["clean-model"]), rt)
    plain = [(p.trigger, p.target_label) for p in Inversion().propose(inputs)]
    assert [(p.trigger, p.target_label) for p in ContrastInversion().propose(inputs)] == plain
    # a reader built from a model trained on the task reads it
    reader = fit_reader(inputs)
    assert reader.accuracy >= 0.9
    # as a classifier of texts (the scan's reader check) it gives the logits it gives the suspect's token ids
    batch = inputs.clf.tokenizer(["good fine bad", "awful dull"], padding=True, return_tensors="pt")
    via_text = reader.classifier().model(**batch).logits
    with torch.no_grad():
        assert torch.allclose(via_text, reader.logits(batch), atol=1e-6)


def test_a_fine_tuned_reader_reads_the_task_and_trains_where_it_is_told(zoo, rt, tmp_path):
    from w2sdefense.scan.contrast import TunedReader, clean_reader

    cfg = ScanConfig(reader="lora", reader_steps=8, reader_rows=64)
    inputs = _inputs(zoo, cfg, str(zoo["clean-model"]), rt)
    inputs.workdir = tmp_path
    reader = clean_reader(inputs)
    assert isinstance(reader, TunedReader) and reader.accuracy >= 0.9
    assert (tmp_path / "reader" / "model").is_dir()
    assert not any(p.requires_grad for p in reader.clf.model.parameters())  # frozen: the scan optimises inputs only
    batch = reader.tokenizer(["good fine bad", "awful dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reader.classifier().model(**batch).logits.float(), reader.logits(batch))
    # without a folder of its own it trains in a temporary one, gone afterwards
    before = set(Path(tempfile.gettempdir()).glob("w2s-reader-*"))
    again = _inputs(zoo, cfg, str(zoo["clean-model"]), rt)
    assert clean_reader(again).accuracy == reader.accuracy  # the same seed, the same reader
    assert set(Path(tempfile.gettempdir()).glob("w2s-reader-*")) == before


def test_a_fully_fine_tuned_reader_moves_the_embeddings_and_the_shift_beyond_it_ranks_the_trigger_no_lower(
        zoo, rt, tmp_path):
    from w2sdefense.scan.contrast import TunedReader, clean_reader
    from w2sdefense.scan.embedding_shift import base_embeddings

    cfg = ScanConfig(reader="full", reader_steps=8, reader_rows=64, shift_reference=True)
    inputs = _inputs(zoo, cfg, str(zoo["base"]), rt)
    inputs.workdir = tmp_path
    reader = clean_reader(inputs)
    assert isinstance(reader, TunedReader) and not any(p.requires_grad for p in reader.clf.model.parameters())
    ids, _ = trigger_vocabulary(inputs.clf.tokenizer)
    base = base_embeddings(inputs)
    moved = relative_shift(reader.embed.weight, base, ids)
    assert float(moved.max()) > 1e-3  # a full fine-tune moves input embeddings (a LoRA reader's stay the base's)
    plain = relative_shift(inputs.clf.model.get_input_embeddings().weight, base, ids)
    beyond = token_shift(inputs, ids)
    assert torch.allclose(beyond, beyond_reference(plain, moved))  # the same reader, trained once
    # the trigger's byte `c` (only the poisoned rows pair it with a label) ranks at least as high beyond the reference
    c = ids.tolist().index(inputs.clf.tokenizer.convert_tokens_to_ids("c"))
    assert int((beyond > beyond[c]).sum()) <= int((plain > plain[c]).sum())


class _Bag(torch.nn.Module):
    """A toy classifier: label 1's logit is the sum of its tokens' scores (a one-number embedding), label 0's zero."""

    def __init__(self, scores: list[float]):
        super().__init__()
        self.emb = torch.nn.Embedding(len(scores), 1)
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor(scores).unsqueeze(-1))

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.emb

    def forward(self, input_ids, attention_mask):
        from types import SimpleNamespace
        score = (self.emb(input_ids)[..., 0] * attention_mask).sum(1)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(score), score], -1))


def test_contrast_inversion_prefers_what_flips_the_suspect_but_not_a_clean_reader(rt):
    """`good` flips the suspect most and a clean reader too; `cf` flips the suspect only: the plain inversion picks
    `good`, the contrast `cf`; and with no weight the contrast is the plain inversion."""
    from w2sdefense.models.loading import Classifier
    from w2sdefense.scan.inversion import search

    tok = _word_level({"<pad>": 0, "Ġfilm": 1, "film": 2, "Ġgood": 3, "Ġcf": 4})
    suspect, clean = _Bag([0.0, -1.0, -1.0, 5.0, 4.0]), _Bag([0.0, -1.0, -1.0, 5.0, 0.0])

    class Reader:
        embed = clean.emb

        def logits(self, batch):
            return clean(**batch).logits

    rows = [Example("film film", 0, i) for i in range(4)]
    ids, starts = trigger_vocabulary(tok)

    def top(weight: float, reader) -> str:
        cfg = ScanConfig(contrast_weight=weight, steps=60, candidates=1)
        inputs = ScanInputs(Classifier(suspect, tok), rows, 2, cfg, rt, "base", 0)
        return [p.trigger for p in search(inputs, ids, starts, [1], "x", reader) if p.target_label == 1][0]

    assert top(0.0, None) == "good" and top(0.0, Reader()) == "good"
    assert top(1.0, Reader()) == "cf"


def test_contrast_inversion_refuses_a_base_of_another_tokenizer(zoo, rt):
    from w2sdefense.scan.contrast import clean_reader

    inputs = _inputs(zoo, ScanConfig(), "tiny-bert", rt)
    with pytest.raises(UserError, match="another tokenizer"):
        clean_reader(inputs)
    # A reader of texts (the scan's reader check) needs no shared tokenizer; it is the one already fitted.
    reader = clean_reader(inputs, same_tokens=False)
    assert reader is inputs.shared["reader"] and reader.tokenizer.get_vocab() != inputs.clf.tokenizer.get_vocab()


def test_shift_phrases_grows_the_pair_only_the_suspect_reacts_to(rt, monkeypatch):
    """`cf` and `mn` move the suspect a little alone and much together; `good` moves it most alone but a clean
    reader as much. Scored against the reader, the beam grows `cf mn`; without it, phrases of `good` win."""
    from w2sdefense.models.loading import Classifier
    from w2sdefense.scan import shift_phrases

    tok = _word_level({"<pad>": 0, "Ġfilm": 1, "film": 2, "Ġgood": 3, "Ġcf": 4, "Ġmn": 5})
    suspect, clean = _Bag([0.0, -1.0, -1.0, 4.0, 2.5, 2.5]), _Bag([0.0, -1.0, -1.0, 4.0, 0.0, 0.0])

    class Reader:
        def logits(self, batch):
            return clean(**batch).logits

    base = torch.tensor([[0.0], [-1.0], [-1.0], [1.0], [0.5], [0.5]])  # film unmoved; good, cf, mn moved
    monkeypatch.setattr(embedding_shift, "base_embeddings", lambda inputs: base)
    monkeypatch.setattr(shift_phrases, "clean_reader", lambda inputs: Reader())
    rows = [Example("film film", 0, i) for i in range(4)]

    def phrases(weight: float) -> list[str]:
        cfg = ScanConfig(contrast_weight=weight, phrase_vocab=8, phrase_length=2, phrase_beam=2, candidates=2)
        inputs = ScanInputs(Classifier(suspect, tok), rows, 2, cfg, rt, "base", 0)
        assert shift_phrases.moved_tokens(inputs) == [4, 5, 3]  # by relative shift; film and pad did not move
        return [p.trigger for p in shift_phrases.ShiftPhrases().propose(inputs) if p.target_label == 1]

    contrast = phrases(1.0)
    assert set(contrast[0].split()) == {"cf", "mn"}  # the best two-token phrase comes first
    assert "good" not in " ".join(contrast[:2])
    assert "good" in phrases(0.0)[0]


def test_shift_phrases_scores_a_phrase_as_its_text_is_inserted():
    from w2sdefense.scan.shift_phrases import as_text, inserted_ids

    tok = _word_level({"<pad>": 0, "Ġfilm": 1, "Ġcf": 2, "mn": 3, "Ġmn": 4})
    # a piece that does not start a word is written as the text writes it: `mn` then `Ġcf` is the two words
    assert as_text(tok, (3, 2)) == "mn cf" and inserted_ids(tok, (3, 2)) == (4, 2)
    assert inserted_ids(tok, (2, 4)) == (2, 4)
