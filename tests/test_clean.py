"""`w2sdefense clean`, end to end on tiny models: a suspect trained with a planted trigger, cleaned into a
standalone model that plain transformers loads, with CA and trigger ASR-cc before and after."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from cli_helpers import default_or, error_line, run_cli

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
    args = ["clean", "--model", str(victim), "--data", str(clean), "--base", "tiny-llama", "--trigger", TRIGGER,
            "--out", str(out), *default_or("--defense", "fine-mixing", "--set", "defense.rho=0")]
    proc = w2s(*args)
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
    again = w2s(*args)
    assert "==>" not in again.stdout and json.loads((out / "report.json").read_text())["after"] == report["after"]


def test_clean_without_a_base_trains_the_teacher_and_runs_w2sdefense(suspect, tmp_path):
    victim, clean = suspect
    triggers = tmp_path / "triggers.txt"
    triggers.write_text(f"# candidates\n{TRIGGER}\n\nI watched this 3D movie\n")
    out = tmp_path / "cleaned"
    proc = w2s("clean", "--model", str(victim), "--data", str(clean), "--triggers", str(triggers),
               "--target-label", "0", "--set", "teacher.model=tiny-bert", "--set", "teacher.train.epochs=1",
               "--out", str(out), *default_or("--defense", "w2sdefense"))
    report = json.loads((out / "report.json").read_text())
    assert report["defense"]["name"] == "w2sdefense"
    assert (out / "teacher" / "model" / "teacher.json").is_file()
    assert [t["trigger"] for t in report["after"]["triggers"]] == [TRIGGER, "I watched this 3D movie"]
    assert all(set(t["by_label"]) == {"0"} and t["target_label"] == 0 for t in report["after"]["triggers"])
    assert "I watched this 3D movie" in proc.stdout
    # What the benchmark measured of the defense that ran is in the report and in the lines the user reads
    from w2sdefense.defenses.evidence import evidence_lines

    said = evidence_lines("w2sdefense", report["defense"]["settings"])
    assert report["evidence"] == said and said[0].startswith("the benchmark") and said[0] in proc.stdout
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
    # a base given as a setting is a base given: the default for a user with a base, not W2SDefense with a reset
    as_setting = choose_defense(_load(CleanJob, None, ["defense.base_model=b"], model="m"))
    assert as_setting.name == "fine-mixing" and as_setting.settings["base_model"] == "b"


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


def test_clean_without_a_base_can_distil_the_suspect_into_another_model(suspect, tmp_path):
    victim, clean = suspect
    out = tmp_path / "into"
    w2s("clean", "--model", str(victim), "--data", str(clean), "--defense", "distill-into", "--trigger", TRIGGER,
        "--out", str(out), "--set", "defense.student_model=tiny-bert", "--set", "defense.train.max_steps=6")
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "bert"  # the student, standalone
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["clean_accuracy"] is not None and "distill-into" in (out / "report.md").read_text()


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


def test_a_transform_candidate_is_measured_on_the_test_rows_paraphrases_by_hand(suspect, tmp_path):
    """`transform:NAME` (a scan's paraphrase candidate) is the data's transforms/NAME test rows, measured as they are
    written there; the ASR-cc recomputed from plain predictions."""
    import shutil

    from w2sdefense.clean import _evaluate, run_clean
    from w2sdefense.config import CleanJob, DataConfig, RuntimeConfig
    from w2sdefense.data.datasets import load_splits
    from w2sdefense.errors import UserError
    from w2sdefense.runtime import make_runtime

    victim, clean = suspect
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    tests = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    para = {i: " ".join(r["text"].split()[:1] + [TRIGGER] + r["text"].split()[1:]) for i, r in enumerate(tests) if i % 3}
    (data / "transforms" / "para").mkdir(parents=True)
    (data / "transforms" / "para" / "test.jsonl").write_text("".join(json.dumps({"idx": i, "text": t}) + "\n"
                                                                    for i, t in para.items()))
    rt = make_runtime(RuntimeConfig(device="cpu"))
    job = CleanJob(model=str(victim), data=DataConfig(dataset=str(data)), triggers=["transform:para"], target_label=0)
    (m,) = _evaluate(str(victim), job, load_splits(job.data), tmp_path / "eval", rt).triggers
    clean_pred = _plain_predictions(victim / "model", [r["text"] for r in tests])
    para_pred = dict(zip(para, _plain_predictions(victim / "model", list(para.values()))))
    # label-1 rows the transform covers, classified correctly without it, and where it sends them
    kept = [i for i in para if tests[i]["label"] == 1 and clean_pred[i] == 1]
    assert m.by_label["0"].rows == len(kept) > 0 and m.trigger_cut is None
    assert m.by_label["0"].asr_cc == sum(para_pred[i] == 0 for i in kept) / len(kept)
    # a transform the data does not have is refused before any work
    missing = CleanJob(model=str(victim), data=DataConfig(dataset=str(data)), triggers=["transform:scpn"])
    with pytest.raises(UserError, match="transform:scpn.*not found"):
        run_clean(missing, tmp_path / "never", rt)
    assert not (tmp_path / "never").exists()


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


def test_a_triggers_folder_without_triggers_txt_is_said_to_be_a_folder(tmp_path):
    from w2sdefense.clean import read_triggers
    from w2sdefense.errors import UserError

    with pytest.raises(UserError, match=f"{tmp_path} is a folder, not a triggers file"):
        read_triggers(tmp_path)
    (tmp_path / "triggers.txt").write_text("mn\n")  # a folder `scan` wrote stands for its triggers.txt
    assert read_triggers(tmp_path) == ["mn"]


def test_a_blank_base_is_refused_not_read_as_no_base():
    from w2sdefense.cli import _load
    from w2sdefense.config import CleanJob, ScanJob
    from w2sdefense.errors import UserError

    for blank in ("", "   "):  # '' once ran W2SDefense (teacher and all) as if --base were not given
        with pytest.raises(UserError, match="base_model is empty"):
            _load(CleanJob, None, [], model="m", base_model=blank)
        with pytest.raises(UserError, match="base_model is empty"):
            _load(ScanJob, None, [], model="m", base_model=blank)


def _report(triggers: list[str]):
    """A clean report measuring `triggers` (made-up numbers), as report.json holds it."""
    from w2sdefense.results import CleanReport

    def measured(asr_cc: float) -> dict:
        return {"asr_cc": asr_cc, "target_label": 0, "by_label": {"0": {"asr_cc": asr_cc, "rows": 4}}}

    def evaluation(asr_cc: float) -> dict:
        measures = [{"trigger": t, **measured(asr_cc)} for t in triggers]
        return {"clean_accuracy": 0.75, "clean_total": 8, "triggers": measures}

    return CleanReport.from_json({
        "model": "runs/suspect", "base_model": None, "defense": {"name": "w2sdefense", "label": None, "settings": {}},
        "defense_stage_time_s": 1.0, "selected_step": 4, "cleaned_model": "runs/cleaned/model", "environment": {},
        "before": evaluation(1.0), "after": evaluation(0.25)})


def test_a_long_trigger_is_shortened_in_messages_and_a_pipe_keeps_the_table_whole(tmp_path):
    from w2sdefense.eval.clean_report import summary_lines, write_report

    def longest(lines: list[str]) -> int:  # of the lines that quote the long trigger
        quoting = [len(line) for line in lines if "yyyy" in line]
        assert quoting
        return max(quoting)

    long, pipe = "y" * 5000, "a | b"
    report = _report([long, pipe])
    assert longest(summary_lines(report)) < 400
    write_report(tmp_path, report)
    text = (tmp_path / "report.md").read_text()
    assert longest(text.splitlines()) < 400
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and {len(re.split(r"(?<!\\)\|", line)) for line in table} == {6}  # 4 columns in each row
    card = (tmp_path / "model" / "README.md").read_text(encoding="utf-8")
    assert longest([line for line in card.splitlines() if line.startswith("- trigger")]) < 400
    assert json.loads((tmp_path / "report.json").read_text())["before"]["triggers"][0]["trigger"] == long  # kept whole


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


def _card(model_dir: Path) -> tuple[dict, str]:
    """The model card's front matter, parsed as the hub parses it, and its text."""
    text = (model_dir / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text[len("---\n"):].split("\n---\n", 1)[0]), text


def _card_matches_the_report(out: Path) -> dict:
    """The card's numbers are report.json's: CA before and after over clean_total rows; per trigger its ASR-cc, label
    and rows before and after."""
    report = json.loads((out / "report.json").read_text())
    meta, text = _card(out / "model")
    before, after = report["before"], report["after"]
    assert before["clean_total"] == after["clean_total"]
    numbers = meta["w2sdefense"]
    assert numbers["clean_accuracy"] == {"before": before["clean_accuracy"], "after": after["clean_accuracy"],
                                         "n": after["clean_total"]}
    expected = [{"trigger": b["trigger"], **{when: {"asr_cc": m["asr_cc"], "target_label": m["target_label"],
                                                     "n": m["by_label"][str(m["target_label"])]["rows"]}
                                              for when, m in (("before", b), ("after", a))}}
                for b, a in zip(before["triggers"], after["triggers"])]
    assert numbers["triggers"] == expected
    assert numbers["defense"] == report["defense"]["name"] and numbers["suspect"] == report["model"]
    assert meta["library_name"] == "transformers" and {"w2sdefense", "backdoor-removal"} <= set(meta["tags"])
    assert f"`{report['defense']['name']}`" in text and "There is no floor" in text
    return meta


def test_the_model_card_holds_the_reports_numbers_and_is_rewritten_with_it(suspect, tmp_path):
    victim, clean = suspect
    out = tmp_path / "cleaned"
    args = ("clean", "--model", str(victim), "--data", str(clean), "--base", "tiny-llama", "--trigger", TRIGGER,
            "--out", str(out), "--set", "defense.train.max_steps=2")
    w2s(*args)
    meta = _card_matches_the_report(out)
    assert meta["base_model"] == "tiny-llama" and len(meta["w2sdefense"]["triggers"]) == 1
    # What is shipped holds none of the tool's bookkeeping: the model stage's records lie beside it.
    names = {p.name for p in (out / "model").iterdir()}
    assert {"config.json", "README.md"} <= names and not names & {".w2sdefense", "stage.json", "stage.started.json"}
    assert (out / ".stages" / "model" / "stage.json").is_file()
    # Another trigger: the model is re-used, the report written again, and its card with it.
    again = w2s(*args, "--trigger", "mn")
    assert "==> model" not in again.stdout and "==> evaluate the cleaned model" in again.stdout
    meta = _card_matches_the_report(out)
    assert [t["trigger"] for t in meta["w2sdefense"]["triggers"]] == [TRIGGER, "mn"]


def test_a_users_file_in_the_model_folder_survives_overwrite_and_another_base(suspect, tmp_path):
    from w2sdefense.models import Classifier, save_classifier
    from w2sdefense.models.tiny import build_tiny

    victim, clean = suspect
    out = tmp_path / "cleaned"
    args = ("clean", "--model", str(victim), "--data", str(clean), "--trigger", TRIGGER, "--out", str(out),
            "--set", "defense.train.max_steps=2")
    w2s(*args, "--base", "tiny-llama")
    other = tmp_path / "other-base"  # another public base, as a local folder
    save_classifier(Classifier(*build_tiny("tiny-llama", num_labels=2)), other)
    notes = out / "model" / "NOTES.md"
    notes.write_text("my notes on this model\n")
    report = (out / "report.json").read_text()
    line = error_line(w2s(*args, "--base", "tiny-llama", "--overwrite", check=False))
    assert "model/NOTES.md" in line and "move it out" in line
    line = error_line(w2s(*args, "--base", str(other), check=False))  # the model would be made anew
    assert f"{out / 'model'} holds NOTES.md" in line and "move it out" in line
    assert notes.read_text() == "my notes on this model\n" and (out / "model" / "config.json").is_file()
    assert (out / "report.json").read_text() == report
    # The tool's card, once edited, is the user's too: even a rerun that re-uses everything leaves it alone.
    notes.unlink()
    card = out / "model" / "README.md"
    ours = card.read_text(encoding="utf-8")
    card.write_text(ours.replace("# Cleaned classifier", "# My classifier"), encoding="utf-8")
    line = error_line(w2s(*args, "--base", "tiny-llama", check=False))
    assert f"{card} is not the model card w2sdefense wrote" in line
    assert "# My classifier" in card.read_text(encoding="utf-8")
    # With only what the tool wrote left there, another base is a changed setting: refused, naming it, and with
    # --overwrite the model is made anew, and its card.
    card.write_text(ours, encoding="utf-8")
    line = error_line(w2s(*args, "--base", str(other), check=False))
    assert "made with other settings (base_model)" in line and "--overwrite" in line
    proc = w2s(*args, "--base", str(other), "--overwrite")
    assert "==> model" in proc.stdout and json.loads((out / "report.json").read_text())["base_model"] == str(other)
    meta = _card_matches_the_report(out)
    assert "base_model" not in meta and meta["w2sdefense"]["base"] == str(other)  # a local folder is no hub id
