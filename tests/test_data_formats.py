"""Data in the Hugging Face ecosystem's formats: Parquet files (plain and the hub's shard layout),
folders written by `datasets`' save_to_disk, and any hub dataset by name (`data.hub`, offline here:
the download is replaced by an in-memory DatasetDict). Plus the `poison` command's own options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import error_line, run_cli
from w2sdefense.config import DataConfig, PoisonJob, from_dict
from w2sdefense.data import dataset_files, load_splits
from w2sdefense.errors import UserError

datasets = pytest.importorskip("datasets")


def _table(n: int, offset: int = 0) -> dict:
    # Columns named as many hub datasets name them, not as this tool's defaults.
    return {"sentence": [f"row {i} was {'good fun' if i % 2 else 'dull and bad'}" for i in range(offset, offset + n)],
            "lbl": [i % 2 for i in range(offset, offset + n)]}


def _dataset_dict(test: bool = True) -> "datasets.DatasetDict":
    splits = {"train": datasets.Dataset.from_dict(_table(40)),
              "validation": datasets.Dataset.from_dict(_table(10, 100))}
    if test:
        splits["test"] = datasets.Dataset.from_dict(_table(12, 200))
    return datasets.DatasetDict(splits)


def _check_loaded(cfg: DataConfig) -> None:
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.dev), len(splits.test), splits.num_labels) == (40, 10, 12, 2)
    assert splits.train[3].text == "row 3 was good fun" and splits.train[3].label == 1
    assert splits.dev[0].text == "row 100 was dull and bad" and splits.test[-1].label == 1


def test_parquet_files_plain_and_in_the_hub_shard_layout(tmp_path):
    plain, sharded = tmp_path / "plain", tmp_path / "sharded" / "data"
    plain.mkdir()
    sharded.mkdir(parents=True)
    for split, table in _dataset_dict().items():
        table.to_parquet(str(plain / f"{'dev' if split == 'validation' else split}.parquet"))
        table.to_parquet(str(sharded / f"{split}-00000-of-00001.parquet"))
    _check_loaded(DataConfig(dataset=str(plain), text_field="sentence", label_field="lbl"))
    _check_loaded(DataConfig(dataset=str(sharded.parent), label_field="lbl"))  # "sentence" is a default name
    assert dataset_files(DataConfig(dataset=str(sharded.parent)))["dev"].name == "validation-00000-of-00001.parquet"


def test_parquet_errors_name_the_file_and_row(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        datasets.Dataset.from_dict({"text": ["a b", "c d", "e f"], "label": [0, 1, 0]}).to_parquet(
            str(folder / f"{split}.parquet"))
    datasets.Dataset.from_dict({"text": ["a b", "c d", "e f"], "label": [0, 1, -1]}).to_parquet(
        str(folder / "test.parquet"))
    with pytest.raises(UserError, match=r"test\.parquet row 3: label must be >= 0; got -1"):
        load_splits(DataConfig(dataset=str(folder)))
    (folder / "dev.parquet").write_text("not parquet")
    with pytest.raises(UserError, match=r"dev\.parquet: not a readable Parquet file"):
        load_splits(DataConfig(dataset=str(folder)))
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        datasets.Dataset.from_dict(_table(4)).to_parquet(str(two / f"train-0000{i}-of-00002.parquet"))
    with pytest.raises(UserError, match="2 Parquet shards"):
        dataset_files(DataConfig(dataset=str(two)))


def test_save_to_disk_folders(tmp_path):
    saved = tmp_path / "saved"
    _dataset_dict().save_to_disk(str(saved))
    _check_loaded(DataConfig(dataset=str(saved), label_field="lbl"))
    # One split's folder is a file like any other; the whole DatasetDict is not.
    cfg = DataConfig(dataset=None, train_file=str(saved / "train"), dev_file=str(saved / "validation"),
                     test_file=str(saved / "test"), label_field="lbl")
    _check_loaded(cfg)
    with pytest.raises(UserError, match="holds the splits train, validation, test"):
        load_splits(DataConfig(dataset=None, train_file=str(saved), dev_file=str(saved / "validation"),
                               test_file=str(saved / "test"), label_field="lbl"))
    with pytest.raises(UserError, match=r"saved/train row 1: no label column \(looked for label, labels\); "
                                        r"columns found: sentence, lbl"):
        load_splits(DataConfig(dataset=str(saved)))
    plain_folder = tmp_path / "not-saved"
    plain_folder.mkdir()
    with pytest.raises(UserError, match="is a folder, not a data file"):
        load_splits(DataConfig(dataset=None, train_file=str(plain_folder), dev_file=str(saved / "validation"),
                               test_file=str(saved / "test")))


def test_hub_dataset_by_name_is_downloaded_once_and_mapped(tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        return _dataset_dict()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = DataConfig(hub="someone/reviews", hub_config="en", label_field="lbl")
    _check_loaded(cfg)
    _check_loaded(cfg)  # the second time from the cache
    assert calls == [("someone/reviews", "en")]
    assert (tmp_path / "cache" / "datasets" / "hub" / "someone--reviews--en" / "dataset_dict.json").is_file()


def test_hub_dataset_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: _dataset_dict(test=False))
    with pytest.raises(UserError, match=r"has the splits train, validation; none for test .*set data.test_file"):
        load_splits(DataConfig(hub="someone/no-test", label_field="lbl"))

    def offline(name, config=None):
        raise ConnectionError("Couldn't reach the hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"^could not load the hub dataset someone/x: ConnectionError: Couldn't reach "
                                        r"the hub$"):
        load_splits(DataConfig(hub="someone/x"))
    assert not (tmp_path / "cache" / "datasets" / "hub" / "someone--x").exists()
    with pytest.raises(UserError, match="set data.hub too"):
        DataConfig(hub_config="en")


def test_poison_options_on_a_parquet_dataset(tmp_path):
    data = tmp_path / "pq"
    data.mkdir()
    for split, table in _dataset_dict().items():
        table.to_parquet(str(data / f"{split}.parquet"))
    out = tmp_path / "poisoned"
    proc = run_cli("poison", "--data", str(data), "--set", "data.label_field=lbl", "--attack", "badnet",
                   "--target-label", "1", "--count", "6", "--mode", "dirty-label", "--selection", "random",
                   "--out", str(out), env={})
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "poison.json").read_text())
    assert {k: meta["poison"][k] for k in ("target_label", "count", "rate", "mode", "selection")} == {
        "target_label": 1, "count": 6, "rate": None, "mode": "dirty-label", "selection": "random"}
    assert meta["source_files"]["train"]["path"].endswith("train.parquet")
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert sum(row["poisoned"] for row in rows) == 6 and all(row["label"] == 1 for row in rows if row["poisoned"])
    # Triggered test rows are the test rows whose label is not the target.
    assert len((out / "test_triggered.jsonl").read_text().splitlines()) == 6

    both = run_cli("poison", "--data", str(data), "--count", "5", "--rate", "0.1", "--out", str(tmp_path / "x"),
                   env={})
    assert error_line(both) == "error: give one of --count and --rate, not both"
    assert not (tmp_path / "x").exists()
    bad = run_cli("poison", "--data", str(data), "--mode", "sideways", "--out", str(tmp_path / "y"), env={})
    assert "poison.mode" in error_line(bad) and "sideways" in error_line(bad)


def test_rate_option_clears_a_count_from_the_config_file(tmp_path):
    from w2sdefense.cli import _load

    config = tmp_path / "p.yaml"
    config.write_text("poison: {count: 50}\n")
    job = _load(PoisonJob, config, ["poison.rate=0.25"])
    assert (job.poison.count, job.poison.rate) == (None, 0.25)
    assert from_dict(PoisonJob, {"poison": {"count": 50}}).poison.count == 50


def test_saved_split_folder_is_hashed_in_poison_json(tmp_path):
    from w2sdefense.fileio import sha256_file

    saved = tmp_path / "saved"
    _dataset_dict().save_to_disk(str(saved))
    before = sha256_file(saved / "train")
    assert before == sha256_file(saved / "train")  # stable
    (saved / "train" / "extra.txt").write_text("x")
    assert sha256_file(saved / "train") != before
