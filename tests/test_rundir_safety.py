"""The tool never deletes or rewrites what it did not make: inputs, foreign folders, locked runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from w2sdefense.attacks import get_attack, poison_splits, write_poison_folder
from w2sdefense.config import AttackConfig, ExperimentConfig, PoisonConfig, from_dict
from w2sdefense.data import Example, Splits
from w2sdefense.errors import UserError
from cli_helpers import error_line, run_cli
from w2sdefense.fileio import sha256_file, write_json
from w2sdefense.pipeline import run_experiment
from w2sdefense.rundir import (LOCK_FILE, MARKER, check_outside_inputs, check_outside_models, claim_run_dir,
                               prepare_run_dir)

TINY_TRAIN = ("--set", "train.epochs=1", "--set", "train.max_length=16", "--set", "train.batch_size=8")


def w2s(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script (no data dir: every test names its data)."""
    return run_cli(*args, env={"W2S_DATA_DIR": "/nonexistent", "W2S_CACHE_DIR": "/nonexistent"})


def make_dataset(folder: Path, rows: int = 24) -> Path:
    """A two-class dataset folder (train/dev/test.jsonl) whose words give the label away."""
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = [json.dumps({"text": f"{'good fine' if i % 2 else 'bad dull'} {split} {i}", "label": i % 2})
                 for i in range(rows)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` and its hash."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def poison_dir(tmp_path: Path) -> Path:
    """A small poison folder written in process (badnet, target 0)."""
    rows = [Example(f"{'good fine' if i % 2 else 'bad dull'} row {i}", i % 2, i) for i in range(16)]
    splits = Splits(train=rows, dev=rows[:8], test=rows[:8], num_labels=2)
    data = poison_splits(splits, get_attack(AttackConfig(name="badnet"), None), PoisonConfig(count=2), 0)
    return write_poison_folder(tmp_path / "pdir", data, {"poison": {"target_label": 0}})


def experiment(out: Path, data: Path) -> ExperimentConfig:
    """A tiny experiment (poison and victim only) on `data`."""
    train = {"epochs": 1, "max_length": 16, "batch_size": 8}
    return from_dict(ExperimentConfig, {
        "name": "safety", "output_dir": str(out), "data": {"dataset": str(data)}, "poison": {"count": 2},
        "victim": {"model": "tiny-llama", "train": train}, "eval": {"max_length": 16}})


# ------------------------------------------------------------------------------------------------
# 1. Outputs that overlap an input; folders the tool did not make


def test_train_refuses_an_out_folder_that_contains_its_data(tmp_path):
    runs = tmp_path / "runs"
    data = make_dataset(runs / "p")
    (runs / "notes.txt").write_text("mine")
    before = snapshot(runs)
    line = error_line(w2s("train", "--data", str(data), "--model", "tiny-bert", "--out", str(runs), "--overwrite",
                          *TINY_TRAIN))
    assert f"contains the data folder {data}" in line
    assert snapshot(runs) == before


def test_poison_refuses_to_write_over_its_source_data(tmp_path):
    data = make_dataset(tmp_path / "ds")
    before = snapshot(data)
    line = error_line(w2s("poison", "--data", str(data), "--out", str(data), "--overwrite",
                          "--set", "poison.count=2"))
    assert "is the data folder" in line
    assert snapshot(data) == before


def test_defend_refuses_an_out_folder_that_contains_the_student(tmp_path):
    data = make_dataset(tmp_path / "ds")
    student = tmp_path / "runs" / "victim"
    student.mkdir(parents=True)
    (student / "weights.bin").write_text("not really")
    line = error_line(w2s("defend", "--student", str(student), "--data", str(data), "--out", str(tmp_path / "runs"),
                          "--overwrite", "--defense", "lora-ft"))
    assert "--student" in line and (student / "weights.bin").is_file()


@pytest.mark.parametrize("command", ["poison", "train", "teacher", "defend", "evaluate", "run"])
def test_every_command_refuses_an_out_that_holds_its_config_file(tmp_path, poison_dir, command):
    data = make_dataset(tmp_path / "ds")
    work = tmp_path / "work"
    work.mkdir()
    config = work / "settings.yaml"
    config.write_text("# every setting comes from the command line\n")
    (tmp_path / "student").mkdir()
    args = {
        "poison": ["poison", "--config", str(config), "--data", str(data), "--set", "poison.count=2"],
        "train": ["train", "--config", str(config), "--data", str(data), "--model", "tiny-bert", *TINY_TRAIN],
        "teacher": ["teacher", "--config", str(config), "--data", str(data), "--student", "tiny-llama", "--model",
                    "tiny-bert", "--set", "teacher.train.epochs=1", "--set", "teacher.train.max_length=16"],
        "defend": ["defend", "--config", str(config), "--data", str(data), "--student", str(tmp_path / "student"),
                   "--defense", "lora-ft"],
        "evaluate": ["evaluate", "--config", str(config), "--model", "tiny-bert", "--data", str(poison_dir)],
        "run": ["run", str(config), "--set", f"data.dataset={data}", "--set", "poison.count=2",
                "--set", "victim.model=tiny-llama", "--set", "victim.train.epochs=1",
                "--set", "victim.train.max_length=16"],
    }[command]
    out = config if command == "evaluate" else work  # evaluate writes a file
    line = error_line(w2s(*args, "--out", str(out), "--overwrite"))
    assert "config" in line and str(config) in line
    assert config.read_text().startswith("# every setting")
    assert sorted(p.name for p in work.iterdir()) == ["settings.yaml"]


def test_outputs_inside_an_input_are_refused_and_neighbours_are_not(tmp_path):
    data = make_dataset(tmp_path / "ds")
    with pytest.raises(UserError, match=r"lies inside the --data .*ds"):
        check_outside_inputs(data / "poisoned", {"--data": data})
    with pytest.raises(UserError, match=r"is the --model"):
        check_outside_inputs(tmp_path / "x" / ".." / "ds", {"--model": data})
    check_outside_inputs(tmp_path / "ds2", {"--data": data, "--model": "tiny-llama"})  # a name, not a path


def test_overwrite_replaces_only_folders_the_tool_made(tmp_path):
    stage = prepare_run_dir(tmp_path / "stage", overwrite=False)
    assert (stage / MARKER).is_file()
    (stage / "old.bin").write_text("stale")
    prepare_run_dir(stage, overwrite=True)  # a stage folder the tool made is redone
    assert sorted(p.name for p in stage.iterdir()) == [MARKER]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match=r"was not made by w2sdefense .*never deleted, not even with --overwrite"):
        prepare_run_dir(mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_run_overwrite_keeps_a_folder_the_tool_did_not_make(tmp_path, rt):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.md").write_text("keep me")
    with pytest.raises(UserError, match="not made by w2sdefense"):
        run_experiment(experiment(out, data), overwrite=True, rt=rt)
    assert sorted(p.name for p in out.iterdir()) == ["notes.md"]


def test_run_refuses_an_out_folder_that_contains_its_data(tmp_path, rt):
    data = make_dataset(tmp_path / "runs" / "ds")
    before = snapshot(tmp_path / "runs")
    with pytest.raises(UserError, match=r"contains the .*data"):
        run_experiment(experiment(tmp_path / "runs", data), overwrite=True, rt=rt)
    assert snapshot(tmp_path / "runs") == before


def test_run_never_replaces_a_foreign_folder_where_a_stage_goes(tmp_path, rt):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "exp"
    (out / "victim").mkdir(parents=True)
    (out / "victim" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not made by w2sdefense"):
        run_experiment(experiment(out, data), rt=rt)
    assert (out / "victim" / "notes.txt").read_text() == "mine"


def test_a_foreign_folder_refused_as_output_names_the_command_that_refused_it(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for command in ("clean", "run"):
        with pytest.raises(UserError, match=f"so `{command}` will neither re-use nor replace it"):
            with claim_run_dir(mine, overwrite=False, stage_file="stage.json", command=command):
                pass
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_run_reuses_finished_stages_copied_from_another_run(tmp_path):
    out = tmp_path / "exp"
    (out / "teacher" / "model").mkdir(parents=True)
    write_json(out / "teacher" / "stage.json", {"name": "teacher", "key": "abc"})
    (out / "run.log").write_text("an older run\n")
    with claim_run_dir(out, overwrite=False, stage_file="stage.json") as folder:
        assert (folder / MARKER).is_file() and (folder / "teacher" / MARKER).is_file()
    assert (out / "teacher" / "stage.json").is_file() and (out / "run.log").read_text() == "an older run\n"


# ------------------------------------------------------------------------------------------------
# 2. One command per folder at a time


def test_a_locked_folder_refuses_a_second_claim_until_released(tmp_path):
    with claim_run_dir(tmp_path / "run", overwrite=False) as folder:
        (folder / "metrics.json").write_text("in progress")
        with pytest.raises(UserError, match=rf"in use by .*process {os.getpid()}"):
            with claim_run_dir(folder, overwrite=True):
                pass
        assert (folder / "metrics.json").read_text() == "in progress"
    with claim_run_dir(folder, overwrite=True):
        assert not (folder / "metrics.json").exists()


def test_commands_on_a_folder_in_use_fail_at_once_naming_the_process(tmp_path):
    data = make_dataset(tmp_path / "ds")
    config = tmp_path / "exp.yaml"
    config.write_text(f"data: {{dataset: {data}}}\npoison: {{count: 2}}\n")
    with claim_run_dir(tmp_path / "busy", overwrite=False) as folder:
        (folder / "checkpoint").write_text("in progress")
        line = error_line(w2s("train", "--data", str(data), "--model", "tiny-bert", "--out", str(folder),
                              "--overwrite", *TINY_TRAIN))
        assert f"process {os.getpid()}" in line
        line = error_line(w2s("run", str(config), "--out", str(folder)))
        assert f"process {os.getpid()}" in line
        assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, LOCK_FILE, "checkpoint"])


@pytest.mark.parametrize("target", ["a file of the user's", "a name nothing has yet"])
def test_a_lock_that_is_a_link_is_refused_and_what_it_names_is_left_alone(tmp_path, target):
    mine = tmp_path / "notes.txt"
    if target == "a file of the user's":
        mine.write_text("my notes\n")
    out = tmp_path / "out"
    out.mkdir()
    lock = out / LOCK_FILE
    lock.symlink_to(mine)
    with pytest.raises(UserError, match="is not a regular file"):
        with claim_run_dir(out, overwrite=False):
            pytest.fail("a folder whose lock is a link was claimed")
    data = make_dataset(tmp_path / "ds")
    line = error_line(w2s("poison", "--data", str(data), "--out", str(out), "--overwrite", "--set", "poison.count=2"))
    assert f"{lock} is not a regular file" in line
    if target == "a file of the user's":
        assert mine.read_text() == "my notes\n"  # not truncated, no pid written into it
    else:
        assert not mine.exists()  # not created through the link
    assert lock.is_symlink() and [p.name for p in out.iterdir()] == [LOCK_FILE]


def test_a_folder_in_the_locks_place_is_refused_in_one_line(tmp_path):
    out = tmp_path / "out"
    (out / LOCK_FILE).mkdir(parents=True)
    with pytest.raises(UserError, match="is not a regular file"):
        with claim_run_dir(out, overwrite=False):
            pytest.fail("a folder whose lock is a folder was claimed")
    assert (out / LOCK_FILE).is_dir()


# ------------------------------------------------------------------------------------------------
# 3. A failed command leaves no folder it made


def test_a_failed_block_removes_only_what_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with claim_run_dir(tmp_path / "a" / "b" / "c", overwrite=False):
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(UserError):
        with claim_run_dir(existing, overwrite=False):
            raise UserError("bad setting")
    assert existing.is_dir()
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with claim_run_dir(run, overwrite=False, stage_file="stage.json"):
            write_json(run / "poison" / "stage.json", {"key": "k"})
            raise RuntimeError("the victim stage crashed")
    assert (run / "poison" / "stage.json").is_file()  # a finished stage is kept for the rerun


def test_a_failed_command_leaves_no_output_folder(tmp_path):
    data = make_dataset(tmp_path / "ds")
    empty_model = tmp_path / "no-weights"
    empty_model.mkdir()
    proc = w2s("train", "--data", str(data), "--model", str(empty_model), "--out", str(tmp_path / "out"),
               *TINY_TRAIN)
    assert proc.returncode != 0
    assert not (tmp_path / "out").exists()
    line = error_line(w2s("poison", "--data", str(data), "--out", str(tmp_path / "p"), "--set", "poison.count=999"))
    assert "999" in line and not (tmp_path / "p").exists()


# ------------------------------------------------------------------------------------------------
# 4. evaluate --out


def test_evaluate_checks_its_output_before_any_work(tmp_path, poison_dir):
    run = prepare_run_dir(tmp_path / "victim", overwrite=False)
    write_json(run / "metrics.json", {"best_dev_accuracy": 0.9})
    before = (run / "metrics.json").read_bytes()
    base = ("evaluate", "--model", "tiny-bert", "--data", str(poison_dir), "--set", "eval.max_length=16")
    line = error_line(w2s(*base, "--out", str(run / "metrics.json"), "--overwrite"))
    assert "metrics.json" in line and "run folder" in line
    assert (run / "metrics.json").read_bytes() == before
    (tmp_path / "reports").mkdir()
    line = error_line(w2s(*base, "--out", str(tmp_path / "reports")))
    assert "is a folder" in line
    old = tmp_path / "eval.json"
    old.write_text("{}")
    assert "--overwrite" in error_line(w2s(*base, "--out", str(old)))
    assert old.read_text() == "{}"
    proc = w2s(*base, "--out", str(old), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(old.read_text())["clean_total"] == 8
    # A metrics file of its own beside a run's records is fine, and may be replaced.
    for flags in ((), ("--overwrite",)):
        proc = w2s(*base, "--out", str(run / "eval.json"), *flags)
        assert proc.returncode == 0, proc.stderr
    assert (run / "metrics.json").read_bytes() == before


def test_an_output_file_inside_the_model_read_is_refused_and_one_beside_it_is_not(tmp_path):
    run = prepare_run_dir(tmp_path / "victim", overwrite=False)
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    for out in (run / "model" / "model.safetensors", run / "model" / "eval.json", run / "base" / "eval.json"):
        with pytest.raises(UserError, match=r"lies inside the model folder .* \(--model\), which this command reads"):
            check_outside_models(out, {"--model": str(run)})
    check_outside_models(run / "eval.json", {"--model": str(run)})  # beside the model, as the README shows
    check_outside_models(tmp_path / "eval.json", {"--model": str(run)})
    # A checkpoint folder given itself: none of its files, and the run around it is fine.
    with pytest.raises(UserError, match="lies inside the model folder"):
        check_outside_models(run / "model" / "eval.json", {"--model": str(run / "model")})
    check_outside_models(run / "eval.json", {"--model": str(run / "model")})
    check_outside_models(tmp_path / "tiny-bert" / "eval.json", {"--model": "tiny-bert", "--student": None})
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(b"weights")
    with pytest.raises(UserError, match=r"is the model .* \(--model\), which this command reads"):
        check_outside_models(weights, {"--model": str(weights)})
    # A run folder the tool did not mark still counts as one when it holds model/.
    legacy = tmp_path / "legacy"
    (legacy / "model").mkdir(parents=True)
    check_outside_models(legacy / "eval.json", {"--model": str(legacy)})
    with pytest.raises(UserError, match="lies inside the model folder"):
        check_outside_models(legacy / "model" / "model.safetensors", {"--model": str(legacy)})


def test_evaluate_never_writes_its_metrics_over_the_weights_it_measures(tmp_path, poison_dir):
    run = prepare_run_dir(tmp_path / "victim", overwrite=False)
    weights = run / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"the run's weights")
    base = ("evaluate", "--data", str(poison_dir), "--set", "eval.max_length=16", "--overwrite")
    line = error_line(w2s(*base, "--model", str(run), "--out", str(weights)))
    assert f"lies inside the model folder {run} (--model)" in line
    # The model behind an input filter is read too (the filter's record names it).
    flt = prepare_run_dir(tmp_path / "strip", overwrite=False)
    write_json(flt / "filter.json", {"defense": "strip", "student": str(run), "settings": {}, "state": {}})
    line = error_line(w2s(*base, "--model", str(flt), "--out", str(weights)))
    assert f"lies inside the model folder {run} (the model behind the filter)" in line
    assert "run folder" in error_line(w2s(*base, "--model", str(flt), "--out", str(flt / "filter.json")))
    assert weights.read_bytes() == b"the run's weights"
    assert json.loads((flt / "filter.json").read_text())["student"] == str(run)


# ------------------------------------------------------------------------------------------------
# 5. File modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664)])
def test_saved_weights_honour_the_umask(tmp_path, umask, mode):
    # safetensors writes its files 0600 whatever the umask: a saved model and a checkpoint follow it.
    import torch
    from safetensors.torch import save_file

    from w2sdefense.fileio import write_folder
    from w2sdefense.models import Classifier, save_classifier
    from w2sdefense.models.tiny import build_tiny

    old = os.umask(umask)
    try:
        save_classifier(Classifier(*build_tiny("tiny-llama", num_labels=2)), tmp_path / "model")
        with write_folder(tmp_path / "state") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "w.safetensors"))
    finally:
        os.umask(old)
    weights = [*(tmp_path / "model").glob("*.safetensors"), tmp_path / "state" / "w.safetensors"]
    assert len(weights) >= 2
    assert {p.stat().st_mode & 0o777 for p in weights} == {mode}


def test_run_and_clean_reuse_only_their_own_folders_and_never_a_train_run(tmp_path):
    from w2sdefense.errors import UserError as Refused
    from w2sdefense.rundir import claim_run_dir, marker_command, prepare_run_dir

    finished = tmp_path / "exp"
    with claim_run_dir(finished, False, stage_file="stage.json", command="run") as folder:
        prepare_run_dir(folder / "victim", True)  # a stage folder, as `run` makes it
        (folder / "victim" / "stage.json").write_text("{}")
        (folder / "report.json").write_text('{"rows": []}')
    assert marker_command(finished) == "run"
    with claim_run_dir(finished, False, stage_file="stage.json", command="run"):
        pass  # its own command continues it
    with pytest.raises(Refused, match="made by `w2sdefense run`; `clean` re-uses only its own folders"):
        with claim_run_dir(finished, False, stage_file="stage.json", command="clean"):
            pass
    assert (finished / "report.json").read_text() == '{"rows": []}'
    trained = tmp_path / "train-run"
    with claim_run_dir(trained, False) as folder:  # `train`'s folder: no stage, a config of its own
        (folder / "config.yaml").write_text("lr: 1\n")
    for command in ("clean", "run"):
        with pytest.raises(Refused, match="another w2sdefense command"):
            with claim_run_dir(trained, False, stage_file="stage.json", command=command):
                pass
    assert (trained / "config.yaml").read_text() == "lr: 1\n"
    with claim_run_dir(finished, True, stage_file="stage.json", command="clean"):
        pass  # --overwrite replaces it, as asked
    assert marker_command(finished) == "clean" and not (finished / "report.json").exists()


# ------------------------------------------------------------------------------------------------
# 6. A shipped folder (`clean`'s model/): no bookkeeping inside, and a user's file in it is never deleted


def test_a_shipped_folder_holds_no_bookkeeping_and_never_loses_a_users_file(tmp_path):
    from w2sdefense.rundir import CARD_FILE, check_card, not_the_tools, seal_card, shipped_complete, writing_shipped

    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    model = run / "model"
    with writing_shipped(model) as folder:
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"weights")
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    card = model / CARD_FILE
    card.write_text(seal_card("---\ntags: [w2sdefense]\n---\n\n# Cleaned classifier\n"))
    assert not_the_tools(run) == []  # the tool's files and its card: --overwrite may replace them
    (model / "NOTES.md").write_text("mine")
    assert not_the_tools(run) == ["model/NOTES.md"]
    with pytest.raises(UserError, match="model/NOTES.md is not among the files w2sdefense writes"):
        with claim_run_dir(run, overwrite=True, stage_file="stage.json", command="clean"):
            pytest.fail("--overwrite went ahead over a user's file")
    with pytest.raises(UserError, match="holds NOTES.md, which w2sdefense did not write"):
        with writing_shipped(model):
            pytest.fail("the folder was replaced over a user's file")
    assert (model / "NOTES.md").read_text() == "mine" and (model / "config.json").read_text() == "{}"
    # The tool's card, edited, is the user's: never written over, and it holds the folder like any file of theirs.
    (model / "NOTES.md").unlink()
    card.write_text(card.read_text().replace("# Cleaned classifier", "# My classifier"))
    with pytest.raises(UserError, match="is not the model card w2sdefense wrote"):
        check_card(model)
    assert not_the_tools(run) == ["model/README.md"]
    card.unlink()
    with writing_shipped(model) as folder:  # only what the tool wrote is left: replaced whole
        (folder / "config.json").write_text('{"new": true}')
    assert sorted(p.name for p in model.iterdir()) == ["config.json"] and not_the_tools(run) == []
    assert shipped_complete(model)
    model.rename(tmp_path / "published")  # moved away: its records beside it no longer make it finished
    assert not shipped_complete(model)


def test_an_older_model_folder_counts_as_the_tools_only_what_came_before_its_stage_record(tmp_path):
    from w2sdefense.rundir import not_the_tools, not_written

    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    model = prepare_run_dir(run / "model", overwrite=False)  # as `clean` made it before its records moved out
    (model / "config.json").write_text("{}")
    write_json(model / "stage.json", {"name": "model (merged, standalone)", "key": "k"})
    (model / "NOTES.md").write_text("mine")
    done = (model / "stage.json").stat().st_mtime_ns
    os.utime(model / "config.json", ns=(done - 10**9, done - 10**9))  # saved before the record was written
    os.utime(model / "NOTES.md", ns=(done + 10**9, done + 10**9))  # put there afterwards
    assert not_written(model) == ["NOTES.md"] and not_the_tools(run) == ["model/NOTES.md"]
    with pytest.raises(UserError, match="model/NOTES.md is not among the files w2sdefense writes"):
        with claim_run_dir(run, overwrite=True, stage_file="stage.json", command="clean"):
            pytest.fail("--overwrite went ahead over a user's file")
    assert (model / "NOTES.md").read_text() == "mine"


@pytest.mark.parametrize("name", ["train.log", ".w2sdefense", "run.log", "curves.png"])
def test_evaluate_out_never_replaces_a_run_folders_log_or_marker(tmp_path, name):
    from w2sdefense.rundir import check_output_file, prepare_run_dir

    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    (run / "train.log").write_text("the run's log\n")
    (run / "run.log").write_text("log\n")
    (run / "curves.png").write_bytes(b"png")
    with pytest.raises(UserError, match="never replaces"):
        check_output_file(run / name, overwrite=True)
    assert check_output_file(run / "eval.json", overwrite=True) == run / "eval.json"  # beside the run: allowed
