"""Shared fixtures: a CPU runtime, small synthetic splits, a small SST-2-shaped data folder, the real data folder."""

from __future__ import annotations

import json
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


def write_sentiment_folder(root: Path, train: int = 320, dev: int = 72, test: int = 100) -> Path:
    """`root/sst2/{train,dev,test}.jsonl`: short review-like texts, label 1 positive, 0 negative (seeded).

    Shaped like the real SST-2 folder (the dataset name `sst2` under a data dir), small enough for an
    end-to-end command on tiny models, so those tests never depend on ../shared/data.
    """
    rng = random.Random(7)
    folder = root / "sst2"
    folder.mkdir(parents=True)
    subjects = ["the film", "this movie", "the plot", "the cast", "the ending", "the story"]
    for split, n in (("train", train), ("dev", dev), ("test", test)):
        rows = []
        for i in range(n):
            label = i % 2
            words = " and ".join(rng.sample(_WORDS[label], 2))
            rows.append({"text": f"{rng.choice(subjects)} is {words}", "label": label})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A data dir holding a small SST-2-shaped dataset (see write_sentiment_folder); pass it as W2S_DATA_DIR."""
    return write_sentiment_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, for the tests that check the real datasets and models; fails (never skips) without it."""
    if not (SHARED_DATA / "sst2" / "train.jsonl").is_file():
        pytest.fail(f"{SHARED_DATA} holds no sst2/train.jsonl: the real-data tests need the shared data folder "
                    "beside this checkout (deselect them with -m 'not real_data' on a machine without it)")
    return SHARED_DATA
