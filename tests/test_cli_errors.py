"""Faults and hostile values through the CLI's main, in process: one `error:` line naming the path or setting,
exit code 2, no traceback, nothing half-written left."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from cli_helpers import run_cli

from w2sdefense import cli


def _main(monkeypatch, capsys, *args: str) -> str:
    """Run `w2sdefense ARGS` in this process; return its one error line (it must exit 2)."""
    monkeypatch.setattr(sys, "argv", ["w2sdefense", *args])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _data(folder: Path, rows: int = 24) -> Path:
    """train/dev/test.jsonl whose words give the label away."""
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = [json.dumps({"text": f"word{i % 2} row {i}", "label": i % 2}) for i in range(rows)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_read_only_output_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    data, ro = _data(tmp_path / "data"), tmp_path / "ro"
    real_mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):  # as on a disk mounted read-only
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    line = _main(monkeypatch, capsys, "poison", "--data", str(data), "--out", str(ro / "p"), "--set", "poison.count=2")
    assert line.startswith(f"error: {ro}") and "read-only file system" in line and "writable disk" in line
    assert not ro.exists()


def test_evaluate_refuses_an_unwritable_out_before_any_work(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    line = _main(monkeypatch, capsys, "evaluate", "--model", "tiny-llama", "--data", str(tmp_path / "no-such-poison"),
                 "--out", str(locked / "m.json"))
    assert f"cannot write {locked / 'm.json'}: {locked} is not writable" in line


def test_a_full_disk_at_the_lock_leaves_no_folder(tmp_path, monkeypatch, capsys):
    data, out = _data(tmp_path / "data"), tmp_path / "full" / "p"

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)  # the lock records our pid with os.pwrite
    line = _main(monkeypatch, capsys, "poison", "--data", str(data), "--out", str(out), "--set", "poison.count=2")
    assert line.startswith("error: no space left on device; free some space")
    assert not (tmp_path / "full").exists()


def _train_args(data: Path, out: Path) -> list[str]:
    """A 6-step tiny-llama run (3 batches an epoch) that saves its resumable state after every step."""
    return ["train", "--data", str(data), "--model", "tiny-llama", "--out", str(out), "--set", "train.epochs=2",
            "--set", "train.eval_every=1", "--set", "train.batch_size=8", "--set", "train.max_length=32"]


@pytest.mark.parametrize("writer", ["save_file", "torch.save"])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_state(tmp_path, monkeypatch, capsys, writer):
    import shutil

    import torch

    from w2sdefense.train import resume

    data, out = _data(tmp_path / "data"), tmp_path / "run"
    calls = {"n": 0}
    real = {"save_file": resume.save_file, "torch.save": torch.save}[writer]

    def fills_the_disk(obj, path, *args, **kwargs):  # the 2nd state save finds the disk full
        calls["n"] += 1
        if calls["n"] < 2:
            return real(obj, path, *args, **kwargs)
        if writer == "save_file":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 451776 vs 451728")

    if writer == "save_file":
        monkeypatch.setattr(resume, "save_file", fills_the_disk)
    else:  # torch reports a full disk in its own words: the free space says what happened
        monkeypatch.setattr(resume.torch, "save", fills_the_disk)
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096) if calls["n"] >= 2 else usage)
    line = _main(monkeypatch, capsys, *_train_args(data, out))
    assert line.startswith(f"error: {out / 'resume'}: no space left on device; free some space")
    assert json.loads((out / "resume" / "state.json").read_text())["progress"]["step"] == 1
    assert not (out / "resume.partial").exists() and not (out / "model.partial").exists()


def _poison_folder(folder: Path) -> Path:
    """A hand-made poison folder (target label 0) with 4 triggered test rows."""
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(
            {"idx": i, "text": f"word{i % 2} row {i}", "label": i % 2, "poisoned": False}) + "\n" for i in range(8)))
    (folder / "test_triggered.jsonl").write_text("".join(json.dumps(
        {"idx": i, "text": f"word1 cf row {i}", "label": 1, "poisoned": True}) + "\n" for i in (1, 3, 5, 7)))
    (folder / "poison.json").write_text(json.dumps({"poison": {"target_label": 0}, "num_labels": 2}))
    return folder


@pytest.mark.parametrize("damage", ["cut", "garbage header", "8 random bytes"])
def test_a_corrupt_safetensors_model_is_one_line(tmp_path, monkeypatch, capsys, damage):
    from w2sdefense.models.tiny import build_tiny

    model, tok = build_tiny("tiny-llama", 2)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes({"cut": raw[:1000], "garbage header": raw[:8] + b"{not json" + raw[17:],
                         "8 random bytes": os.urandom(8)}[damage])
    line = _main(monkeypatch, capsys, "evaluate", "--model", str(folder), "--data", str(_poison_folder(tmp_path / "p")))
    assert f"could not load model '{folder}' from {folder}: a weights file is damaged or not safetensors" in line


def test_epochs_beyond_counting_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    data, out = _data(tmp_path / "data"), tmp_path / "run"
    line = _main(monkeypatch, capsys, *_train_args(data, out), "--set", "train.epochs=1e308")
    assert "train.epochs=1e+308 (train: 3 steps an epoch) makes inf optimizer steps" in line
    assert not out.exists()


@pytest.mark.parametrize("command, seed", [("train", "-1"), ("train", str(10**23)), ("poison", str(2**32))])
def test_a_seed_outside_what_generators_take_is_one_line(tmp_path, monkeypatch, capsys, command, seed):
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    args = _train_args(data, out) if command == "train" else ["poison", "--data", str(data), "--out", str(out)]
    line = _main(monkeypatch, capsys, *args, "--set", f"seed={seed}")
    assert line == f"error: seed must be in 0..4294967295; got {seed}"
    assert not out.exists()


def test_a_linked_resume_folder_is_one_line_and_its_target_is_kept(tmp_path, monkeypatch, capsys):
    from w2sdefense.rundir import MARKER, MARKER_TEXT

    data, out, mine = _data(tmp_path / "data"), tmp_path / "run", tmp_path / "mine"
    mine.mkdir()
    (mine / "state.json").write_text("{}")
    (mine / "canary.txt").write_text("mine")
    out.mkdir()
    (out / MARKER).write_text(MARKER_TEXT)
    (out / "resume").symlink_to(mine)
    line = _main(monkeypatch, capsys, *_train_args(data, out))
    assert f"{out / 'resume'} is a link (to {mine})" in line and "--overwrite" in line
    assert sorted(p.name for p in mine.iterdir()) == ["canary.txt", "state.json"]
    assert (mine / "state.json").read_text() == "{}" and (out / "resume").is_symlink()


# pickle refusals and a damaged resumable state


class _NotATensor:
    """A pickled object torch's safe loader refuses (it would have to import this class to build it)."""


def test_a_pickle_the_safe_loader_refuses_is_one_line(tmp_path, monkeypatch, capsys):
    import torch

    from w2sdefense.models.tiny import build_tiny

    model, tok = build_tiny("tiny-llama", 2)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weight": _NotATensor()}, folder / "pytorch_model.bin")
    line = _main(monkeypatch, capsys, "evaluate", "--model", str(folder), "--data", str(_poison_folder(tmp_path / "p")))
    assert f"could not load model '{folder}' from {folder}:" in line and "pickled objects" in line


@pytest.mark.parametrize("damage", ["state.json", "optim.pt"])
def test_a_damaged_resumable_state_is_one_user_error(tmp_path, damage):
    import torch
    from safetensors.torch import save_file

    from w2sdefense.errors import UserError
    from w2sdefense.train.resume import load_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = tmp_path / "run" / "resume"
    state.mkdir(parents=True)
    save_file({k: v.detach().clone() for k, v in model.named_parameters()}, str(state / "trainable.safetensors"))
    torch.save({"optimizer": _NotATensor(), "scheduler": scheduler.state_dict()}, state / "optim.pt")
    (state / "state.json").write_text("{" if damage == "state.json" else json.dumps({"fingerprint": "fp"}))
    with pytest.raises(UserError) as refused:
        load_state(tmp_path / "run", model, optimizer, scheduler, "fp")
    assert str(refused.value).startswith(f"{state / damage}: ") and "--overwrite" in str(refused.value)


def test_a_saved_teacher_whose_encoder_is_a_refused_pickle_is_one_user_error(tmp_path):
    import torch

    from w2sdefense.errors import UserError
    from w2sdefense.models.teacher import TeacherClassifier
    from w2sdefense.models.tiny import build_tiny

    model, _ = build_tiny("tiny-bert", 2)
    folder = tmp_path / "teacher"
    model.base_model.save_pretrained(folder / "encoder")
    (folder / "encoder" / "model.safetensors").unlink()
    torch.save({"weight": _NotATensor()}, folder / "encoder" / "pytorch_model.bin")
    (folder / "teacher.json").write_text(json.dumps({"feature_dim": 64, "num_labels": 2}))
    with pytest.raises(UserError, match=rf"could not load the teacher {folder}: .*pickled objects"):
        TeacherClassifier.from_pretrained(folder)


# an adapter on a base of another architecture or other shapes


@pytest.mark.parametrize("base", ["tiny-bert", "a 32-wide llama"])
def test_an_adapter_on_a_base_it_does_not_fit_is_one_line(tmp_path, monkeypatch, capsys, base):
    from peft import LoraConfig, TaskType, get_peft_model

    from w2sdefense.models.tiny import build_tiny

    model, tok = build_tiny("tiny-llama", 2)
    adapter = tmp_path / "adapter"
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj", "v_proj"])
    get_peft_model(model, config).save_pretrained(adapter)
    base_name = "tiny-bert"
    if base != "tiny-bert":  # the same architecture at another width
        model.config.hidden_size, model.config.intermediate_size = 32, 64
        narrow = type(model)(model.config)
        base_name = str(tmp_path / "narrow")
        narrow.save_pretrained(base_name)
        tok.save_pretrained(base_name)
    settings = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": base_name}))
    line = _main(monkeypatch, capsys, "evaluate", "--model", str(adapter), "--data", str(_poison_folder(tmp_path / "p")))
    assert f"the adapter {adapter} does not fit its base {base_name}" in line
    if base == "tiny-bert":
        assert "(a bert model)" in line and "q_proj" in line
    else:
        assert "in the adapter but" in line and "in the base" in line


# --overwrite on a tool-made folder holding a file of the user's


def test_overwrite_refuses_a_tool_folder_holding_a_users_file(tmp_path, monkeypatch, capsys):
    from w2sdefense.rundir import prepare_run_dir

    data, out = _data(tmp_path / "data"), prepare_run_dir(tmp_path / "p", overwrite=False)
    (out / "train.jsonl").write_text("")
    (out / "NOTES.md").write_text("my notes")
    line = _main(monkeypatch, capsys, "poison", "--data", str(data), "--out", str(out), "--overwrite",
                 "--set", "poison.count=2")
    assert "NOTES.md" in line and "train.jsonl" not in line and "not among the files w2sdefense writes" in line
    assert (out / "NOTES.md").read_text() == "my notes" and (out / "train.jsonl").is_file()


# a kill between a checkpoint's renames


def test_an_unfinished_run_killed_mid_swap_names_the_checkpoint_that_exists(tmp_path, monkeypatch, capsys):
    from w2sdefense.rundir import prepare_run_dir

    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    (run / "resume").mkdir()
    (run / "resume" / "state.json").write_text("{}")
    for name in ("model.old", "model.partial"):  # model/ renamed away, the new one not yet in its place
        (run / name).mkdir()
        (run / name / "config.json").write_text("{}")
    line = _main(monkeypatch, capsys, "evaluate", "--model", str(run), "--data", str(_poison_folder(tmp_path / "p")))
    assert f"{run / 'model'} " not in line and str(run / "model.old") in line and "rerun" in line


def test_a_run_still_going_after_its_first_checkpoint_is_called_running_not_stopped(tmp_path):
    import subprocess

    from w2sdefense.errors import UserError
    from w2sdefense.models.loading import resolve_model_path
    from w2sdefense.rundir import LOCK_FILE, prepare_run_dir

    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    (run / "resume").mkdir()
    (run / "resume" / "state.json").write_text("{}")
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="still in progress") as running:
            resolve_model_path(str(run))
        assert "stopped" not in str(running.value) and "let it finish" in str(running.value)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(UserError, match="stopped before its last step"):  # nobody holds it now
        resolve_model_path(str(run))


# Ctrl-C outside the training loop, or pressed twice


def test_ctrl_c_outside_the_training_loop_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    from w2sdefense.attacks import poison as poisoning

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(poisoning, "poison_dataset", pressed)
    out = tmp_path / "p"
    monkeypatch.setattr(sys, "argv", ["w2sdefense", "poison", "--data", str(_data(tmp_path / "data")),
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: w2sdefense poison stopped") and "kept" in lines[0]
    assert not out.exists()


# a folder in use by another run


def test_a_folder_in_use_names_its_holder_before_saying_it_exists(tmp_path, monkeypatch, capsys):
    import fcntl

    from w2sdefense.rundir import LOCK_FILE, prepare_run_dir

    data, out = _data(tmp_path / "data"), prepare_run_dir(tmp_path / "p", overwrite=False)
    (out / "train.jsonl").write_text("")
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:  # another command's lock (flock locks of two open files conflict even in one process)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        line = _main(monkeypatch, capsys, "poison", "--data", str(data), "--out", str(out), "--set", "poison.count=2")
    finally:
        os.close(fd)
    assert line == (f"error: {out} is in use by another w2sdefense command (process 4242); wait for it to finish "
                    "or choose another output folder")


# evaluate on a run that has no model yet


def test_evaluate_on_a_run_without_a_model_yet_says_it_is_unfinished(tmp_path, monkeypatch, capsys):
    from w2sdefense.rundir import prepare_run_dir

    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    (run / "config.yaml").write_text("model: tiny-llama\n")
    (run / "train.log").write_text("")
    line = _main(monkeypatch, capsys, "evaluate", "--model", str(run), "--data", str(_poison_folder(tmp_path / "p")))
    assert f"{run} is an unfinished w2sdefense run with no model yet" in line and "Unrecognized" not in line


def test_evaluate_on_a_clean_folder_without_its_model_says_running_or_unfinished(tmp_path, monkeypatch, capsys):
    import fcntl

    from w2sdefense.rundir import LOCK_FILE, claim_run_dir

    with claim_run_dir(tmp_path / "c", False, stage_file="stage.json", command="clean") as out:
        (out / "config.yaml").write_text("model: tiny-llama\n")
        (out / "defense").mkdir()  # stopped in the defense: no model/ yet
    data = _poison_folder(tmp_path / "p")
    line = _main(monkeypatch, capsys, "evaluate", "--model", str(out), "--data", str(data))
    assert "unfinished `w2sdefense clean` folder" in line and "Unrecognized" not in line
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_TRUNC)
    try:  # a clean still running holds its folder's lock
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        line = _main(monkeypatch, capsys, "evaluate", "--model", str(out), "--data", str(data))
    finally:
        os.close(fd)
    assert "still in progress (in use by process 4242)" in line and "stopped" not in line


# train's warnings reach the terminal too


def test_warnings_logged_during_a_run_reach_stderr_and_the_log(tmp_path, capsys):
    import logging

    from w2sdefense.rundir import log_to

    with log_to(tmp_path / "train.log"):
        logging.getLogger("w2sdefense.train").warning("7 of 20 triggers lie beyond max_length=16")
        logging.getLogger("w2sdefense.train").info("step 1")
    err = capsys.readouterr().err
    assert "7 of 20 triggers lie beyond max_length=16" in err and "step 1" not in err
    assert "7 of 20 triggers" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("args, code, says", [
    ((), 2, "Usage: w2sdefense"),  # no arguments: the help, as a usage error
    (("-h",), 0, "Usage: w2sdefense"),
    (("clean", "-h"), 0, "--trigger"),
    (("--version",), 0, "w2sdefense 0."),
    (("frobnicate",), 2, "No such command 'frobnicate'"),
    (("clean", "--trigers", "mn"), 2, "No such option: --trigers"),
    (("run",), 2, "Missing argument 'config'"),
])
def test_usage_mistakes_and_help_end_with_clicks_message_and_no_traceback(args, code, says):
    proc = run_cli(*args, env={})
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert says in proc.stdout + proc.stderr
    assert len((proc.stdout + proc.stderr).splitlines()) < 60


@pytest.mark.parametrize("command", ["clean", "scan", "train", "evaluate", "poison"])
def test_help_names_what_each_shared_option_takes_and_gives_no_example_the_command_refuses(command):
    from cli_helpers import run_cli

    text = run_cli(command, "--help", env={"COLUMNS": "200"}).stdout
    assert "<list[str]>" not in text and "train.lr=2e-5" not in text
    assert "KEY=VALUE" in text and "DIR" in text
