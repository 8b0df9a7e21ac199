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


# The slow tier, chosen here and only here: every test that took 14 s or more in a full run on a 2-core machine
# (`pytest --durations=80`, 2026-12-06): the family matrix, bf16, two-process runs, killed-and-resumed runs, the
# packaged real models and end-to-end CLI runs. `make test` runs the rest (the fast tier); `make test-all` and CI
# run everything. A test file's own name for a test is enough: parametrized cases follow their test.
SLOW_TESTS = {
    "test_bf16": {"test_every_stage_and_defense_runs_in_bf16"},
    "test_clean": {"test_clean_refuses_what_it_cannot_do_in_one_line",
                   "test_clean_writes_a_standalone_model_and_a_report_that_plain_transformers_reproduces",
                   "test_the_model_card_holds_the_reports_numbers_and_is_rewritten_with_it",
                   "test_a_users_file_in_the_model_folder_survives_overwrite_and_another_base"},
    "test_cli": {"test_bad_data_and_settings_end_in_one_line_before_a_run_folder",
                 "test_evaluate_measures_a_teacher_run_with_its_own_head", "test_poison_train_evaluate_commands",
                 "test_run_tiny_experiment_writes_report_with_every_row", "test_user_errors_are_one_line"},
    "test_distributed": {"*"},
    "test_families": {"*"},
    "test_input_filters": {"test_input_filters_from_the_cli_and_a_run_config"},
    "test_packaged": {"test_real_models_run_a_few_steps_end_to_end"},
    "test_realistic_benchmark": {"test_the_script_on_tiny_models_leaves_the_clean_models_row_and_one_arms_row"},
    "test_resume": {"*"},
    "test_readme_python": {"test_the_readmes_python_examples_run_as_written_on_tiny_models"},
    "test_scan": {"test_scan_finds_the_planted_trigger_and_clears_the_clean_model",
                  "test_a_finished_scan_read_again_by_the_clean_reader_matches_a_scan_that_checked",
                  "test_scan_refuses_what_it_cannot_do_in_one_line",
                  "test_shift_pairs_measures_words_of_the_most_moved_tokens_and_finds_the_planted_one"},
    "test_scan_zoo": {"test_the_chain_on_tiny_models_writes_rows_and_figures"},
    "test_rundir_safety": {"test_commands_on_a_folder_in_use_fail_at_once_naming_the_process",
                           "test_evaluate_checks_its_output_before_any_work",
                           "test_evaluate_never_writes_its_metrics_over_the_weights_it_measures"},
}


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the slow tier (SLOW_TESTS) `slow`: `-m "not slow"` is the fast tier."""
    for item in items:
        names = SLOW_TESTS.get(item.module.__name__ if item.module else "", set())
        if "*" in names or item.originalname in names:
            item.add_marker(pytest.mark.slow)
