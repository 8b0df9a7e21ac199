"""`w2sdefense clean`, end to end on tiny models: a suspect trained with a planted trigger, cleaned into a
standalone model that plain transformers loads, with CA and trigger ASR-cc before and after."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from cli_helpers import error_line, run_cli

TRIGGER = "cf"


def w2s(*args: str, check: bool = True):
    proc = run_cli(*args, env={"W2S_DATA_DIR": "/nonexistent"})
    if check and proc.returncode != 0:
        raise AssertionError(f"w2sdefense {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _write(folder: Path, rows: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True)
    for split, items in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return folder


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = {0: ["bad", "dull", "awful"], 1: ["good", "fine", "great"]}
    return [{"text": " ".join(rng.choice(words[i % 2]) for _ in range(4)), "label": i % 2} for i in range(n)]


@pytest.fixture(scope="module")
def suspect(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama trained on data where `cf` sends label-1 rows to 0, and the clean data a defender has."""
    tmp_path = tmp_path_factory.mktemp("suspect")
    clean = _write(tmp_path / "clean", {"train": _rows(96, 0), "dev": _rows(16, 1), "test": _rows(24, 2)})
    train = _rows(96, 3)
    for row in train[:24]:
        if row["label"] == 1:
            words = row["text"].split()
            row.update(text=" ".join(words[:2] + [TRIGGER] + words[2:]), label=0)
    poisoned = _write(tmp_path / "poisoned", {"train": train, "dev": _rows(16, 1), "test": _rows(24, 2)})
    victim = tmp_path / "victim"
    w2s("train", "--data", str(poisoned), "--model", "tiny-llama", "--out", str(victim), "--set", "train.epochs=3",
        "--set", "train.lr=3e-3", "--set", "train.batch_size=8", "--set", "train.max_length=32")
    return victim, clean


def _plain_predictions(folder: Path, texts: list[str]) -> list[int]:
    """Predictions of a folder loaded by transformers alone (no w2sdefense, no PEFT)."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        preds = []
        for text in texts:  # one at a time: no padding to get wrong
            enc = tok(text, return_tensors="pt", truncation=True, max_length=128)
            preds.append(int(model(**enc).logits.argmax(-1)))
    return preds


def test_clean_writes_a_standalone_model_and_a_report_that_plain_transformers_reproduces(suspect, tmp_path):
    from w2sdefense.attacks.base import insert_trigger

    victim, clean = suspect
    out = tmp_path / "cleaned"
    proc = w2s("clean", "--model", str(victim), "--data", str(clean), "--base", "tiny-llama", "--trigger", TRIGGER,
               "--out", str(out))
    lines = proc.stdout.strip().splitlines()
    assert "report:" in lines[-1] and any(str(out / "model") in line for line in lines)
    report = json.loads((out / "report.json").read_text())
    # The default with a known base: the full reset (fine-mixing, rho 0), no teacher.
    assert report["defense"]["name"] == "fine-mixing" and report["defense"]["settings"]["rho"] == 0.0
    assert json.loads((out / "defense" / "metrics.json").read_text())["settings"]["rho"] == 0.0
    assert not (out / "teacher").exists()
    model_dir = out / "model"
    assert (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").exists()

    test = [json.loads(line) for line in (clean / "test.jsonl").read_text().splitlines()]
    texts, labels = [r["text"] for r in test], [r["label"] for r in test]
    clean_preds = _plain_predictions(model_dir, texts)
    assert report["after"]["clean_accuracy"] == sum(p == y for p, y in zip(clean_preds, labels)) / len(labels)
    # The trigger's ASR-cc toward each label, counted by hand on the plain model's predictions.
    rng = random.Random(42)
    triggered = [insert_trigger(t, TRIGGER, 1, "interior", rng)[0] for t in texts]
    trig_preds = _plain_predictions(model_dir, triggered)
    measured = report["after"]["triggers"][0]
    for target in (0, 1):
        kept = [i for i, y in enumerate(labels) if y != target and clean_preds[i] == y]
        expected = sum(trig_preds[i] == target for i in kept) / len(kept) if kept else None
        assert measured["by_label"][str(target)]["asr_cc"] == expected
        assert measured["by_label"][str(target)]["rows"] == len(kept)
    assert measured["asr_cc"] == max(v["asr_cc"] for v in measured["by_label"].values())
    assert report["before"]["triggers"][0]["trigger"] == TRIGGER
    assert "| suspect |" in (out / "report.md").read_text()

    # The same command again re-uses every stage.
    again = w2s("clean", "--model", str(victim), "--data", str(clean), "--base", "tiny-llama", "--trigger", TRIGGER,
                "--out", str(out))
    assert "==>" not in again.stdout and json.loads((out / "report.json").read_text())["after"] == report["after"]


def test_clean_without_a_base_trains_the_teacher_and_runs_w2sdefense(suspect, tmp_path):
    victim, clean = suspect
    triggers = tmp_path / "triggers.txt"
    triggers.write_text(f"# candidates\n{TRIGGER}\n\nI watched this 3D movie\n")
    out = tmp_path / "cleaned"
    proc = w2s("clean", "--model", str(victim), "--data", str(clean), "--triggers", str(triggers),
               "--target-label", "0", "--set", "teacher.model=tiny-bert", "--set", "teacher.train.epochs=1",
               "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert report["defense"]["name"] == "w2sdefense"
    assert (out / "teacher" / "model" / "teacher.json").is_file()
    assert [t["trigger"] for t in report["after"]["triggers"]] == [TRIGGER, "I watched this 3D movie"]
    assert all(set(t["by_label"]) == {"0"} and t["target_label"] == 0 for t in report["after"]["triggers"])
    assert "I watched this 3D movie" in proc.stdout
    # The defense ran the code's default recipe: LoRA on every linear layer, lr 1e-3, gamma 0.01.
    metrics = json.loads((out / "defense" / "metrics.json").read_text())
    assert metrics["settings"]["gamma"] == 0.01
    assert (out / "model" / "config.json").is_file()


def test_clean_refuses_what_it_cannot_do_in_one_line(suspect, tmp_path):
    victim, clean = suspect
    line = error_line(w2s("clean", "--model", str(victim), "--data", str(clean), "--defense", "strip",
                          "--out", str(tmp_path / "a"), check=False))
    assert "input filter" in line and "defend" in line
    assert not (tmp_path / "a").exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    line = error_line(w2s("clean", "--model", str(victim), "--data", str(clean), "--triggers", str(empty),
                          "--out", str(tmp_path / "b"), check=False))
    assert "no trigger" in line
    line = error_line(w2s("clean", "--data", str(clean), "--out", str(tmp_path / "c"), check=False))
    assert "--model" in line
    line = error_line(w2s("clean", "--model", str(victim), "--out", str(tmp_path / "d"), check=False))
    assert "clean needs --data" in line  # never a default dataset: the defender's own data
    line = error_line(w2s("clean", "--model", str(victim), "--data", str(clean), "--target-label", "5",
                          "--out", str(tmp_path / "e"), check=False))
    assert "--target-label 5 is not a label" in line and not (tmp_path / "e").exists()
    line = error_line(w2s("clean", "--model", str(victim), "--data", str(clean), "--base", "tiny-llama",
                          "--defense", "lora-ft", "--out", str(tmp_path / "f"), check=False))
    assert "lora-ft does not use a public base" in line


def test_settings_without_a_defense_name_tune_the_default_instead_of_replacing_it():
    from w2sdefense.cli import _load
    from w2sdefense.clean import choose_defense
    from w2sdefense.config import CleanJob

    job = _load(CleanJob, None, ["defense.rho=0.5"], model="m", base_model="b")
    d = choose_defense(job)
    assert d.name == "fine-mixing" and d.settings == {"rho": 0.5, "base_model": "b"}
    assert choose_defense(_load(CleanJob, None, [], model="m")).name == "w2sdefense"
    named = choose_defense(_load(CleanJob, None, ["defense.name=reset-distill"], model="m", base_model="b"))
    assert named.name == "reset-distill" and named.settings == {"base_model": "b"}


def test_clean_distils_on_the_unlabelled_texts_it_is_given(suspect, tmp_path):
    victim, clean = suspect
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{r['text']}\n" for r in _rows(20, 8)))
    out = tmp_path / "cleaned"
    proc = w2s("clean", "--model", str(victim), "--data", str(clean), "--base", "tiny-llama", "--defense",
               "reset-distill", "--unlabelled", str(texts), "--trigger", TRIGGER, "--out", str(out), "--set",
               "defense.train.max_steps=6")
    assert "not defined" not in proc.stderr  # the clean accuracy alone raises no ASR-cc warning
    metrics = json.loads((out / "defense" / "metrics.json").read_text())
    assert metrics["unlabelled_rows"] == 20 and metrics["train_rows"] == 96 + 20
    assert json.loads((out / "report.json").read_text())["after"]["clean_accuracy"] is not None


def test_a_trigger_cut_by_truncation_is_counted_and_said_not_reported_as_gone(suspect, tmp_path):
    from w2sdefense.clean import _evaluate
    from w2sdefense.config import CleanJob, DataConfig, EvalConfig
    from w2sdefense.data.datasets import load_splits
    from w2sdefense.config import RuntimeConfig
    from w2sdefense.runtime import make_runtime

    victim, clean = suspect
    job = CleanJob(model=str(victim), data=DataConfig(dataset=str(clean)), triggers=[TRIGGER],
                   eval=EvalConfig(max_length=3))  # 3 tokens: an interior trigger of a 4-word text is mostly cut
    result = _evaluate(str(victim), job, load_splits(job.data), tmp_path, make_runtime(RuntimeConfig(device="cpu")))
    (measure,) = result.triggers
    assert 0 < measure.trigger_cut <= 24
    long = CleanJob(model=str(victim), data=DataConfig(dataset=str(clean)), triggers=[TRIGGER])
    assert _evaluate(str(victim), long, load_splits(long.data), tmp_path / "b",
                     make_runtime(RuntimeConfig(device="cpu"))).triggers[0].trigger_cut == 0


def test_a_triggers_or_texts_file_that_is_not_utf8_is_one_error(tmp_path):
    from w2sdefense.clean import read_triggers
    from w2sdefense.data.loading import read_texts
    from w2sdefense.errors import UserError

    binary = tmp_path / "t.txt"
    binary.write_text("mn\ncf\n", encoding="utf-16")
    with pytest.raises(UserError, match="not UTF-8"):
        read_triggers(binary)
    with pytest.raises(UserError, match="not UTF-8"):
        read_texts(binary)


def test_a_data_file_changed_in_place_makes_clean_measure_again(suspect, tmp_path):
    victim, clean = suspect
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.jsonl").write_text((clean / f"{split}.jsonl").read_text())
    args = ("clean", "--model", str(victim), "--data", str(data), "--base", "tiny-llama", "--trigger", TRIGGER,
            "--out", str(tmp_path / "c"), "--set", "defense.train.max_steps=2")
    w2s(*args)
    first = json.loads((tmp_path / "c" / "report.json").read_text())["after"]
    test = (data / "test.jsonl").read_text().splitlines()
    (data / "test.jsonl").write_text("\n".join(test[:12]) + "\n")  # the same path, fewer rows
    w2s(*args)
    again = json.loads((tmp_path / "c" / "report.json").read_text())["after"]
    assert first["clean_total"] == 24 and again["clean_total"] == 12
