"""The real command line, end to end, on tiny models and a few hundred SST-2-shaped rows (conftest.small_data)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from cli_helpers import error_line, run_cli

from w2sdefense.results import read_report


def w2s(*args: str, data_dir: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `w2sdefense` console script."""
    proc = run_cli(*args, env={"W2S_DATA_DIR": str(data_dir) if data_dir else "/nonexistent"})
    if check and proc.returncode != 0:
        raise AssertionError(f"w2sdefense {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_run_tiny_experiment_writes_report_with_every_row(small_data, tmp_path):
    out = tmp_path / "run"
    w2s("run", "configs/tiny-badnet.yaml", "--out", str(out), data_dir=small_data)
    report = read_report(out)
    names = [row.model for row in report.rows]
    assert names == ["clean model", "poisoned", "teacher", "w2sdefense", "w2sdefense-reference", "lora-ft", "full-ft"]
    for row in report.rows:
        assert row.clean_accuracy == row.clean_correct / row.clean_total
        assert row.attack_success_rate == row.attack_hits / row.triggered_total
        assert row.clean_total == 96 and row.triggered_total == sum(
            1 for line in (out / "poison" / "test.jsonl").read_text().splitlines() if json.loads(line)["label"] != 0)
        assert row.trainable_params > 0 and row.wall_time_s > 0
        # what it ran with: the keys of the stage that made the model and of its evaluation, and its recipe in full
        assert row.stage_key and row.eval_key and row.train["lr"] > 0
    by_name = report.by_model()
    assert by_name["w2sdefense"].trainable_params < by_name["full-ft"].trainable_params
    assert by_name["w2sdefense"].settings is not None and by_name["poisoned"].settings is None
    defended = json.loads((out / "defenses" / "w2sdefense" / "stage.json").read_text())
    assert by_name["w2sdefense"].stage_key == defended["key"]
    assert "| w2sdefense |" in (out / "report.md").read_text()
    # report.md says what the experiment was, and the rows each rate is over
    poisoned = by_name["poisoned"]
    assert report.summary[0] == (
        f"The experiment: badnet, trigger 'mn'; 60 of {sum(1 for _ in (out / 'poison' / 'train.jsonl').open())} "
        f"training rows poisoned (clean-label) toward label 0; victim tiny-llama (full fine-tuning), teacher tiny-bert; "
        f"{sum(1 for _ in (out / 'poison' / 'dev.jsonl').open())} dev and 96 test rows; seed 13.")
    table = (out / "report.md").read_text()
    assert "| n (CA) |" in table and f"| {poisoned.triggered_clean_correct_total} |" in table
    assert report.environment["versions"]["torch"]
    poison_meta = json.loads((out / "poison" / "poison.json").read_text())
    assert poison_meta["counts"]["poisoned"] == 60
    # Every stage folder is complete and in standard formats.
    assert (out / "victim" / "model" / "config.json").is_file()
    assert (out / "defenses" / "w2sdefense" / "model" / "adapter_config.json").is_file()
    assert (out / "teacher" / "model" / "teacher.json").is_file()
    metrics = json.loads((out / "defenses" / "w2sdefense" / "metrics.json").read_text())
    assert {"ce", "kd", "fa", "dev_accuracy"} <= set(metrics["history"][0])
    # A second run re-uses every finished stage.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}
    second = w2s("run", "configs/tiny-badnet.yaml", "--out", str(out), data_dir=small_data)
    assert "==>" not in second.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}
    # Changing one defense redoes that defense and its evaluation only.
    w2s("run", "configs/tiny-badnet.yaml", "--out", str(out), "--set", "defenses.2.train.lr=0.002",
        data_dir=small_data)
    redone = {p.parent.relative_to(out).as_posix() for p in out.rglob("stage.json") if p.stat().st_mtime_ns != stamps[p]}
    assert redone == {"defenses/lora-ft", "eval/lora-ft"}


def test_poison_train_evaluate_commands(small_data, tmp_path):
    poison_dir = tmp_path / "poison"
    w2s("poison", "--data", "sst2", "--attack", "insent", "--out", str(poison_dir), "--set", "data.max_train=200",
        "--set", "data.max_test=50", "--set", "poison.count=20", data_dir=small_data)
    train_rows = [json.loads(line) for line in (poison_dir / "train.jsonl").read_text().splitlines()]
    assert sum(r["poisoned"] for r in train_rows) == 20
    assert all("I watched this 3D movie" in r["text"] for r in train_rows if r["poisoned"])
    run_dir = tmp_path / "victim"
    w2s("train", "--data", str(poison_dir), "--model", "tiny-bert", "--out", str(run_dir),
        "--set", "train.epochs=1", "--set", "train.max_length=48", "--set", "train.batch_size=32")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["max_length"] == 48
    assert (run_dir / "train.log").read_text().strip()
    metrics_file = tmp_path / "eval.json"
    proc = w2s("evaluate", "--model", str(run_dir), "--data", str(poison_dir), "--out", str(metrics_file))
    metrics = json.loads(metrics_file.read_text())
    assert metrics["clean_total"] == 50 and metrics["triggered_total"] == sum(
        1 for line in (poison_dir / "test.jsonl").read_text().splitlines() if json.loads(line)["label"] == 1)
    assert "attack_success_rate" in proc.stdout


def test_user_errors_are_one_line(small_data, tmp_path):
    assert "unknown attack" in error_line(w2s("poison", "--attack", "nope", "--out", str(tmp_path / "p"),
                                               data_dir=small_data, check=False))
    line = error_line(w2s("train", "--model", "no-such-model", "--out", str(tmp_path / "t"), data_dir=small_data,
                           check=False))
    assert "tiny-llama" in line and "smollm2-135m" in line
    assert not (tmp_path / "t").exists()  # a bad name fails before the run folder is made
    assert "config file not found" in error_line(w2s("run", str(tmp_path / "missing.yaml"), check=False))
    bad = tmp_path / "bad.yaml"
    bad.write_text("victim:\n  trian: {}\n")
    assert "victim.trian" in error_line(w2s("run", str(bad), check=False))
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "file").write_text("x")
    line = error_line(w2s("train", "--model", "tiny-llama", "--out", str(tmp_path / "exists"), data_dir=small_data,
                           check=False))
    assert "--overwrite" in line
    line = error_line(w2s("poison", "--out", str(tmp_path / "p2"), "--set", "poison.count=999999",
                           data_dir=small_data, check=False))
    assert "999999" in line
    line = error_line(w2s("poison", "--out", str(tmp_path / "p3"), check=False))
    assert "W2S_DATA_DIR" in line


def test_list_names_components():
    out = w2s("list").stdout
    assert "badnet" in out and "synbkd" in out and "w2sdefense" in out and "minilm-l6" in out


def _toy_data(folder: Path, num_labels: int = 2, rows: int = 100, empty: tuple[int, ...] = ()) -> Path:
    """train/dev/test.jsonl whose words give the label away; rows listed in `empty` have an empty text."""
    folder.mkdir(parents=True)
    for split, n in (("train", rows), ("dev", 8), ("test", 8)):
        lines = [json.dumps({"text": "" if split == "train" and i in empty else f"word{i % num_labels} row {i}",
                             "label": i % num_labels}) for i in range(n)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _poison_folder(folder: Path, triggered: int) -> Path:
    """A hand-made poison folder (target label 0) with `triggered` rows in test_triggered.jsonl."""
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(
            {"idx": i, "text": f"word{i % 2} row {i}", "label": i % 2, "poisoned": False}) + "\n" for i in range(8)))
    rows = [json.dumps({"idx": i, "text": f"word1 cf row {i}", "label": 1, "poisoned": True}) for i in range(triggered)]
    (folder / "test_triggered.jsonl").write_text("".join(r + "\n" for r in rows))
    (folder / "poison.json").write_text(json.dumps({"poison": {"target_label": 0}, "num_labels": 2}))
    return folder


def test_bad_data_and_settings_end_in_one_line_before_a_run_folder(tmp_path):
    out = tmp_path / "run"
    data = _toy_data(tmp_path / "empty", empty=(3, 20, 41, 60, 99))  # 5 empty texts in 100 training rows
    line = error_line(w2s("train", "--data", str(data), "--model", "tiny-llama", "--out", str(out),
                          "--set", "train.epochs=1", check=False))  # its last batch: 4 empty texts
    assert f"{data / 'train.jsonl'} line 4: the text is empty" in line
    assert not out.exists()
    for value in ("[1e-3", "*x", "@x", "`x"):
        line = error_line(w2s("train", "--data", str(data), "--out", str(out), "--set", f"train.lr={value}",
                              check=False))
        assert f"override 'train.lr={value}'" in line
    line = error_line(w2s("train", "--data", str(data), "--out", str(out), "--set", "train.epochs=.inf", check=False))
    assert "train.epochs must be a finite number" in line
    assert not out.exists()


def test_evaluate_refuses_an_empty_triggered_set(tmp_path):
    empty = _poison_folder(tmp_path / "one-class", triggered=0)
    line = error_line(w2s("evaluate", "--model", "tiny-llama", "--data", str(empty), check=False))
    assert f"{empty / 'test_triggered.jsonl'} has no rows" in line and "attack success rate" in line


def test_evaluate_measures_a_teacher_run_with_its_own_head(tiny_splits, splits_factory, rt, tmp_path):
    from w2sdefense.config import EvalConfig, TeacherConfig, TrainConfig
    from w2sdefense.data.poisoned import load_poison_folder
    from w2sdefense.defenses.teacher import run_teacher
    from w2sdefense.models.predict import classify_rows
    from w2sdefense.models.teacher import load_teacher

    recipe = TeacherConfig(model="tiny-bert", train=TrainConfig(epochs=1.0, batch_size=8, max_length=32))
    teacher, other = tmp_path / "teacher", tmp_path / "three-labels"
    run_teacher(recipe, tiny_splits, "tiny-llama", rt, teacher, seed=0)
    poison = _poison_folder(tmp_path / "poison", triggered=4)
    out = tmp_path / "teacher-eval.json"
    w2s("evaluate", "--model", str(teacher), "--data", str(poison), "--out", str(out))
    metrics = json.loads(out.read_text())
    # The reference: the teacher's own predictions on the same rows, cut as `evaluate` cuts them.
    data, clf, length = load_poison_folder(poison), load_teacher(teacher), EvalConfig().max_length
    clean = classify_rows(clf, data.test, length, 8, rt).argmax(-1).tolist()
    hits = classify_rows(clf, data.test_triggered, length, 8, rt).argmax(-1).tolist()
    assert metrics["clean_correct"] == sum(p == ex.label for p, ex in zip(clean, data.test))
    assert metrics["clean_accuracy"] == metrics["clean_correct"] / len(data.test)
    assert metrics["attack_success_rate"] == hits.count(0) / 4 and metrics["model"] == str(teacher)
    run_teacher(recipe, splits_factory(3), "tiny-llama", rt, other, seed=0)
    line = error_line(w2s("evaluate", "--model", str(other), "--data", str(poison), check=False))
    assert f"the teacher {other} classifies 3 labels, but the data {poison} has 2" in line


def test_defend_refuses_a_teacher_of_other_labels_before_a_run_folder(splits_factory, rt, tmp_path):
    from w2sdefense.config import TeacherConfig, TrainConfig
    from w2sdefense.defenses.teacher import run_teacher

    teacher = tmp_path / "teacher"
    run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(epochs=1.0, batch_size=8, max_length=32)),
                splits_factory(3), "tiny-llama", rt, teacher, seed=0)
    out = tmp_path / "defended"
    line = error_line(w2s("defend", "--student", "tiny-llama", "--teacher", str(teacher),
                          "--data", str(_toy_data(tmp_path / "data")), "--out", str(out), check=False))
    assert "classifies 3 labels" in line and "have 2" in line
    assert not out.exists()
