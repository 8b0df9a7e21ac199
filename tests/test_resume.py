"""Resuming inside a stage: a run killed part-way and started again ends exactly as an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import CLI, REPO, error_line, run_cli
from w2sdefense.config import LoraConfig, TrainConfig
from w2sdefense.errors import Interrupted
from w2sdefense.fileio import recover_folder, replace_folder
from w2sdefense.train.job import prepare_student, train_classifier
from w2sdefense.train.loop import cross_entropy_step

# Three epochs of 8 batches; LoRA dropout makes the run depend on the random-number state.
CFG = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.1), epochs=3.0, lr=5e-3, batch_size=8,
                  max_length=32, warmup_ratio=0.1, eval_every=5)


class Killed(Exception):
    pass


def _killing_loss(calls_before_kill: int):
    """Cross-entropy that dies (like a killed process) when the training loop asks for batch n+1."""
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] > calls_before_kill:
            raise Killed
        return cross_entropy_step(model, batch)

    return loss


def _train(splits, rt, out: Path, loss_fn=cross_entropy_step, cfg: TrainConfig = CFG) -> dict:
    clf = prepare_student("tiny-llama", 2, cfg, rt, out, seed=3)
    return train_classifier(clf, splits, cfg, rt, out, seed=3, loss_fn=loss_fn)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model" / "adapter_model.safetensors"))


@pytest.mark.parametrize("killed_after, resumed_from", [(13, 10), (9, 8)])
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_splits, rt, tmp_path, killed_after, resumed_from):
    # 13: the last state is mid-epoch (step 10); 9: it is the end of epoch 1 (step 8), the next epoch's
    # batch order and random draws must follow it as they would have.
    whole = _train(tiny_splits, rt, tmp_path / "whole")
    with pytest.raises(Killed):
        _train(tiny_splits, rt, tmp_path / "cut", _killing_loss(killed_after))
    state = json.loads((tmp_path / "cut" / "resume" / "state.json").read_text())
    assert state["progress"]["step"] == resumed_from
    resumed = _train(tiny_splits, rt, tmp_path / "cut")
    assert resumed["resumed_from_step"] == resumed_from and whole["resumed_from_step"] is None
    for key in ("steps", "best_dev_accuracy", "selected_step", "epochs_run"):
        assert resumed[key] == whole[key], key
    assert resumed["history"] == whole["history"]  # dev accuracy and mean loss terms at every evaluation
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut" / "resume").exists()  # a finished run keeps no resumable state


def _ctrl_c_loss(at_call: int):
    """Cross-entropy that presses Ctrl-C (a real SIGINT to this process) while computing batch `at_call`."""
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            signal.raise_signal(signal.SIGINT)
        return cross_entropy_step(model, batch)

    return loss


def test_without_epoch_evaluations_dev_is_read_every_eval_every_steps_and_at_the_last_killed_or_not(tiny_splits, rt,
                                                                                                     tmp_path):
    last = dataclasses.replace(CFG, select="latest-within", select_delta=0.99)  # keeps the last step
    quiet = dataclasses.replace(last, eval_epochs=False)
    whole = _train(tiny_splits, rt, tmp_path / "whole", cfg=quiet)
    assert [h["step"] for h in whole["history"]] == [5, 10, 15, 20, 24]  # not 8 and 16, the epochs' ends
    epochs = _train(tiny_splits, rt, tmp_path / "epochs", cfg=last)
    assert [h["step"] for h in epochs["history"]] == [5, 8, 10, 15, 16, 20, 24]
    # a skipped read draws what a read draws: the same checkpoint is the same weights
    assert whole["selected_step"] == epochs["selected_step"] == 24
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "epochs")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Killed):
        _train(tiny_splits, rt, tmp_path / "cut", _killing_loss(9), cfg=quiet)  # states are saved as dev is read
    resumed = _train(tiny_splits, rt, tmp_path / "cut", cfg=quiet)
    assert resumed["resumed_from_step"] == 5 and resumed["history"] == whole["history"]


def test_a_skipped_read_also_draws_what_the_trigger_probe_draws(tiny_splits, rt, tmp_path):
    """`run` measures a trigger probe at every dev read: a run without the epochs' reads trains the same weights."""
    from w2sdefense.config import EvalConfig
    from w2sdefense.eval.probe import make_probe, probe_diagnostic

    test = tiny_splits.test
    probe = make_probe(test, [dataclasses.replace(r, text=r.text + " cf") for r in test], 0, 8, seed=1)
    diagnostics = probe_diagnostic(probe, EvalConfig(), rt)
    last = dataclasses.replace(CFG, select="latest-within", select_delta=0.99)
    runs = {}
    for name, cfg in (("epochs", last), ("quiet", dataclasses.replace(last, eval_epochs=False))):
        clf = prepare_student("tiny-llama", 2, cfg, rt, tmp_path / name, seed=3)
        runs[name] = train_classifier(clf, tiny_splits, cfg, rt, tmp_path / name, seed=3, diagnostics=diagnostics)
    assert [h["step"] for h in runs["quiet"]["history"]] == [5, 10, 15, 20, 24]
    assert all("probe_asr_cc" in h for h in runs["quiet"]["history"])
    a, b = _weights(tmp_path / "epochs"), _weights(tmp_path / "quiet")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_in_an_epochs_last_step_keeps_that_epochs_evaluation(tiny_splits, rt, tmp_path):
    # Batch 8 is epoch 1's last (8 batches, eval_every=5): its step is evaluated only as the epoch ends, and
    # a run resumed there starts epoch 2, so the stop must not skip that evaluation.
    whole = _train(tiny_splits, rt, tmp_path / "whole")
    assert 8 in [h["step"] for h in whole["history"]] and 8 % CFG.eval_every
    with pytest.raises(Interrupted, match="interrupted at step 8 of 24"):
        _train(tiny_splits, rt, tmp_path / "cut", _ctrl_c_loss(8))
    state = json.loads((tmp_path / "cut" / "resume" / "state.json").read_text())
    assert [h["step"] for h in state["progress"]["history"]] == [5, 8]
    resumed = _train(tiny_splits, rt, tmp_path / "cut")
    assert resumed["resumed_from_step"] == 8
    assert resumed["history"] == whole["history"]
    assert (resumed["selected_step"], resumed["best_dev_accuracy"]) == (whole["selected_step"],
                                                                        whole["best_dev_accuracy"])
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_bar_stopped_by_ctrl_c_ends_with_stopped_not_done(tiny_splits, rt, tmp_path, capsys):
    # stderr is captured (not a terminal), as in a log: the bar's last line is printed right before "interrupted".
    with pytest.raises(Interrupted, match="interrupted at step 3 of 24"):
        _train(tiny_splits, rt, tmp_path / "cut", _ctrl_c_loss(3))
    lines = [line for line in capsys.readouterr().err.splitlines() if ": step " in line]
    assert lines[-1].split(",")[0].endswith("step 3/24") and lines[-1].endswith("; stopped"), lines
    assert not any(line.endswith("; done") for line in lines), lines


def test_swap_killed_between_renames_recovers_the_complete_copy(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "w").write_text("old")
    new = tmp_path / "model.partial"
    new.mkdir()
    (new / "w").write_text("new")
    target.rename(tmp_path / "model.old")  # killed here: model.old and model.partial, no model/
    recover_folder(target)
    assert (target / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    again = tmp_path / "model.partial"
    again.mkdir()
    (again / "w").write_text("newer")
    replace_folder(again, target)
    assert (target / "w").read_text() == "newer" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# The command line: a tiny-model `train` killed with SIGKILL, or stopped with Ctrl-C, then run again.

def _data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    words = {1: ["good", "great", "fine", "lovely"], 0: ["bad", "awful", "dull", "poor"]}
    for split, n in (("train", 96), ("dev", 24), ("test", 24)):
        rows = [{"text": f"{words[i % 2][i % 4]} film number {i}", "label": i % 2} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--model", "tiny-llama", "--out", str(out), "--set", "train.method=lora",
            "--set", "train.epochs=40", "--set", "train.batch_size=8", "--set", "train.eval_every=4",
            "--set", "train.max_length=32", "--set", "train.lr=0.005", "--set", "train.lora.dropout=0.1"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([CLI, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "W2S_DATA_DIR": "/nonexistent"})


def _wait_for_state(out: Path, proc: subprocess.Popen, past_step: int = 0) -> int:
    """Wait until `out` holds a resumable state past `past_step`; return its step."""
    state = out / "resume" / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run finished before it could be stopped"
        try:
            step = json.loads(state.read_text())["progress"]["step"]
        except (OSError, ValueError):
            step = 0
        if step > past_step:
            return step
        time.sleep(0.02)
    raise AssertionError("no resumable state appeared")


def _history(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["history"]


def test_cli_train_killed_with_sigkill_resumes_and_matches(tmp_path):
    data = _data(tmp_path)
    whole = run_cli(*_train_args(data, tmp_path / "whole"), env={})
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    proc = _start(_train_args(data, out))
    _wait_for_state(out, proc, past_step=40)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "metrics.json").exists()
    # The half-trained folder cannot be mistaken for a finished model.
    refused = run_cli("defend", "--student", str(out), "--defense", "lora-ft", "--data", str(data), "--out",
                      str(tmp_path / "defended"), env={})
    assert "unfinished training run" in error_line(refused)
    assert not (tmp_path / "defended").exists()
    again = run_cli(*_train_args(data, out), env={})  # the same command, no flag
    assert again.returncode == 0, again.stderr
    assert "resuming from step" in again.stderr + again.stdout
    assert "resuming from step" in (out / "train.log").read_text()
    assert _history(out) == _history(tmp_path / "whole")
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_ctrl_c_stops_cleanly_and_resume_continues(tmp_path):
    data = _data(tmp_path)
    out = tmp_path / "run"
    proc = _start(_train_args(data, out))
    step = _wait_for_state(out, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted at step") and "run the same command again" in line, line
    stopped = json.loads((out / "resume" / "state.json").read_text())["progress"]["step"]
    assert stopped >= step
    resumed = run_cli(*_train_args(data, out), "--resume", env={})
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {stopped}" in resumed.stdout + resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] == stopped


def test_cli_resume_refusals(tmp_path):
    data = _data(tmp_path)
    out = tmp_path / "run"
    nothing = run_cli(*_train_args(data, out), "--resume", env={})
    assert "nothing to resume" in error_line(nothing)
    assert not out.exists()
    proc = _start(_train_args(data, out))
    _wait_for_state(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    other = run_cli(*_train_args(data, out), "--set", "train.lr=0.001", env={})
    assert "other settings" in error_line(other)
    assert (out / "resume" / "state.json").is_file()  # the refused command left the state alone


def test_run_continues_its_unfinished_stage(small_data, tmp_path):
    out = tmp_path / "run"
    args = ["run", "configs/tiny-badnet.yaml", "--out", str(out), "--set", "defenses=[]", "--set", "clean_model=false",
            "--set", "victim.train.epochs=20", "--set", "victim.train.eval_every=10"]
    env = {"W2S_DATA_DIR": str(small_data)}
    proc = subprocess.Popen([CLI, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    _wait_for_state(out / "victim", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted at step" in stderr, stderr
    stopped = json.loads((out / "victim" / "resume" / "state.json").read_text())["progress"]["step"]
    poison_stamp = (out / "poison" / "stage.json").stat().st_mtime_ns
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert "==> victim (continuing where it was stopped)" in again.stdout
    assert "==> poison" not in again.stdout and (out / "poison" / "stage.json").stat().st_mtime_ns == poison_stamp
    metrics = json.loads((out / "victim" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == stopped and metrics["steps"] == 20 * 19
    assert (out / "report.json").is_file() and not (out / "victim" / "resume").exists()


def test_cli_train_killed_before_its_first_state_starts_over_with_the_same_command(tmp_path):
    data = _data(tmp_path)
    rows = (data / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(rows * 40) + "\n")  # a long first epoch: no state before its end
    out = tmp_path / "cut"
    args = _train_args(data, out)
    args[args.index("train.eval_every=4")] = "train.eval_every=100000"
    args[args.index("train.epochs=40")] = "train.epochs=1"
    proc = _start(args)
    deadline = time.monotonic() + 300
    while not (out / "train.log").is_file():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)  # into training, long before its end
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert (out / "config.yaml").is_file() and not (out / "resume" / "state.json").exists()
    assert not (out / "metrics.json").exists()
    again = run_cli(*args, env={})  # the same command, no flag
    assert again.returncode == 0, again.stderr
    assert "stopped before its first saved state; starting it over" in again.stderr
    assert (out / "metrics.json").is_file()
    # Other settings on that folder are still refused, and a user's file in it is never replaced.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused = run_cli(*_train_args(data, other), env={})
    assert "--overwrite" in error_line(refused) and (other / "notes.txt").read_text() == "mine"


def test_a_run_resumed_on_edited_texts_of_the_same_lengths_is_refused(tiny_splits, rt, tmp_path):
    import dataclasses

    from w2sdefense.errors import UserError

    with pytest.raises(Killed):
        _train(tiny_splits, rt, tmp_path / "cut", _killing_loss(13))
    # Same token lengths, same labels, other texts (the probe's a<->e swap): the old state must not continue.
    swap = str.maketrans("ae", "ea")
    edited = dataclasses.replace(tiny_splits, train=[dataclasses.replace(ex, text=ex.text.translate(swap))
                                                     for ex in tiny_splits.train])
    assert [len(a.text) for a in edited.train] == [len(b.text) for b in tiny_splits.train]
    assert edited.train != tiny_splits.train
    with pytest.raises(UserError, match="holds an unfinished run with other settings, data or model"):
        _train(edited, rt, tmp_path / "cut")
