"""Shared fixtures: a CPU runtime, small synthetic splits, the real data folder."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from w2sdefense.config import RuntimeConfig
from w2sdefense.data.records import Example, Splits
from w2sdefense.runtime import make_runtime

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

_WORDS = {0: ["bad", "awful", "dull", "boring", "weak"], 1: ["good", "great", "fine", "lovely", "fun"],
          2: ["red", "blue", "green", "pink", "gray"], 3: ["cat", "dog", "cow", "owl", "fox"]}


def synthetic_examples(n: int, num_labels: int, seed: int) -> list[Example]:
    """Texts whose words reveal the label, so a tiny model can learn something in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % num_labels
        words = [rng.choice(_WORDS[label]) for _ in range(rng.randint(2, 8))]
        rows.append(Example(text=" ".join(words), label=label, idx=i))
    return rows


def make_splits(num_labels: int = 2, train: int = 64, held_out: int = 16) -> Splits:
    """Synthetic train/dev/test splits."""
    return Splits(train=synthetic_examples(train, num_labels, 0), dev=synthetic_examples(held_out, num_labels, 1),
                  test=synthetic_examples(held_out, num_labels, 2), num_labels=num_labels)


@pytest.fixture
def tiny_splits() -> Splits:
    """64 train / 16 dev / 16 test rows, 2 classes."""
    return make_splits()


@pytest.fixture
def splits_factory():
    """make_splits, for tests that need other sizes or class counts."""
    return make_splits


@pytest.fixture(scope="session")
def rt():
    """The CPU runtime (one Accelerator per process)."""
    return make_runtime(RuntimeConfig(device="cpu", num_threads=2))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip when this checkout has none beside it."""
    if not (SHARED_DATA / "sst2" / "train.jsonl").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
