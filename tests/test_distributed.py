"""Two processes (torchrun, gloo on CPU) write the same files and metrics as one process.

torchrun, not `accelerate launch --cpu --num_processes 2`: on a 2-core machine the latter starts a
single process (accelerate 1.15). Inside, accelerate sees torchrun's two processes as MULTI_CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from w2sdefense.fileio import write_jsonl

CLI = str(Path(sys.executable).with_name("w2sdefense"))
TOLERANCE = 1e-4  # per-step loss terms: float reduction order differs between 1 and 2 processes
COMMON = ["--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.lr=0.005",
          "--set", "train.max_length=32", "--set", "train.warmup_ratio=0", "--set", "runtime.num_threads=1"]


def _data(folder: Path, splits) -> Path:
    for name in ("train", "dev", "test"):
        write_jsonl(folder / f"{name}.jsonl", ({"text": e.text, "label": e.label} for e in getattr(splits, name)))
    return folder


def _launch(args: list[str], procs: int) -> None:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
              "--no-python"] if procs > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*prefix, CLI, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".log")}


def _assert_same_metrics(one: dict, two: dict) -> None:
    assert one["steps"] == two["steps"] and one["best_step"] == two["best_step"]
    assert one["best_dev_accuracy"] == pytest.approx(two["best_dev_accuracy"], abs=1e-9)
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in a:
            if key in ("epoch", "step", "dev_accuracy"):
                assert a[key] == b[key], key
            else:
                assert a[key] == pytest.approx(b[key], rel=TOLERANCE, abs=TOLERANCE), key


def test_train_and_defend_match_single_process(tmp_path, splits_factory):
    data = _data(tmp_path / "data", splits_factory(train=64, held_out=16))
    runs = {}
    for procs in (1, 2):
        root = tmp_path / f"p{procs}"
        _launch(["train", "--data", str(data), "--model", "tiny-llama", "--out", str(root / "victim"), *COMMON], procs)
        _launch(["teacher", "--data", str(data), "--student", str(root / "victim"), "--model", "tiny-bert",
                 "--out", str(root / "teacher"), *[c.replace("train.", "teacher.train.") for c in COMMON]], procs)
        _launch(["defend", "--data", str(data), "--student", str(root / "victim"), "--teacher", str(root / "teacher"),
                 "--out", str(root / "w2s"), "--set", "defense.train.lora.r=4", "--set", "defense.train.lora.dropout=0",
                 *[c.replace("train.", "defense.train.") for c in COMMON]], procs)
        runs[procs] = root
    for stage in ("victim", "teacher", "w2s"):
        one, two = runs[1] / stage, runs[2] / stage
        assert _files(one) == _files(two), stage
        _assert_same_metrics(json.loads((one / "metrics.json").read_text()),
                             json.loads((two / "metrics.json").read_text()))


def test_crow_runs_under_two_processes_as_under_one(tmp_path, splits_factory):
    # CROW hooks the input embeddings of the model inside the DDP wrapper and runs two forwards per step.
    data = _data(tmp_path / "data", splits_factory(train=64, held_out=16))
    runs = {}
    for procs in (1, 2):
        root = tmp_path / f"p{procs}"
        _launch(["train", "--data", str(data), "--model", "tiny-llama", "--out", str(root / "victim"), *COMMON], procs)
        _launch(["defend", "--data", str(data), "--student", str(root / "victim"), "--defense", "crow",
                 "--out", str(root / "crow"), "--set", "defense.train.lora.r=4", "--set", "defense.train.lora.dropout=0",
                 *[c.replace("train.", "defense.train.") for c in COMMON]], procs)
        runs[procs] = json.loads((root / "crow" / "metrics.json").read_text())
    one, two = runs[1], runs[2]
    assert one["steps"] == two["steps"] and one["history"][0]["consistency_adv"] > 0
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["dev_accuracy"] == b["dev_accuracy"]
        # Each process averages the consistency over its own shard's tokens (a mean of shard means), so
        # the gradients, and the trajectory, differ slightly from one process's.
        for key in ("ce", "consistency", "consistency_adv"):
            assert a[key] == pytest.approx(b[key], rel=5e-2), key


def test_full_fine_tuning_sharded_with_fsdp_matches_one_process(tmp_path, splits_factory):
    # runtime.fsdp: torch's fully_shard over gloo (accelerate's FSDP plugin is GPU-only); the student and
    # the teacher (an encoder inside the projection module) each train sharded, and save whole weights.
    from safetensors.torch import load_file

    data = _data(tmp_path / "data", splits_factory(train=64, held_out=16))
    runs = {}
    for procs in (1, 2):
        root = tmp_path / f"p{procs}"
        shard = ["--set", "runtime.fsdp=true"]
        _launch(["train", "--data", str(data), "--model", "tiny-llama", "--out", str(root / "victim"), *COMMON,
                 *shard], procs)
        _launch(["teacher", "--data", str(data), "--student", str(root / "victim"), "--model", "tiny-bert",
                 "--out", str(root / "teacher"), *[c.replace("train.", "teacher.train.") for c in COMMON], *shard],
                procs)
        runs[procs] = root
    for stage in ("victim", "teacher"):
        one, two = runs[1] / stage, runs[2] / stage
        # No resume/ state is kept under FSDP, and none is left after a finished run either way.
        assert _files(one) == _files(two), stage
        _assert_same_metrics(json.loads((one / "metrics.json").read_text()),
                             json.loads((two / "metrics.json").read_text()))
        for weights in sorted((one / "model").rglob("*.safetensors")):
            a, b = load_file(weights), load_file(two / "model" / weights.relative_to(one / "model"))
            assert a.keys() == b.keys(), weights
            for key in a:
                assert torch.allclose(a[key], b[key], atol=1e-4), (weights.name, key)
    log = (runs[2] / "victim" / "train.log").read_text()
    assert "FSDP: 2 blocks sharded across 2 processes" in log
