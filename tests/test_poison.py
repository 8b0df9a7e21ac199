"""The poisoning policy: selection, labels, counts, determinism, the poison folder, real data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from w2sdefense.attacks import (
    get_attack,
    load_poison_folder,
    poison_dataset,
    poison_splits,
    select_poison_rows,
    write_poison_folder,
)
from w2sdefense.config import AttackConfig, DataConfig, PoisonConfig
from w2sdefense.data import Example, Splits, load_split
from w2sdefense.errors import UserError
from w2sdefense.fileio import sha256_file

LABELS = [1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1]  # 5 negatives, 7 positives


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's data dir or cache."""
    monkeypatch.delenv("W2S_DATA_DIR", raising=False)
    monkeypatch.setenv("W2S_CACHE_DIR", str(tmp_path / "cache"))


def _rows(labels: list[int], prefix: str = "row") -> list[Example]:
    return [Example(f"{prefix} {i} text here", y, i) for i, y in enumerate(labels)]


def _splits(labels: list[int] = LABELS, num_labels: int = 2) -> Splits:
    return Splits(train=_rows(labels), dev=_rows([0, 1], "dev"), test=_rows(labels, "test"),
                  num_labels=num_labels)


def _write_dataset(folder: Path, labels: list[int] = LABELS) -> Path:
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        rows = [{"text": f"{split} {i} some words", "label": y} for i, y in enumerate(labels)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _poison(cfg: PoisonConfig, splits: Splits | None = None, seed: int = 0, **attack: object):
    return poison_splits(splits or _splits(), get_attack(AttackConfig(**attack)), cfg, seed)


# ------------------------------------------------------------------------------------------------
# Selection


def test_selection_modes() -> None:
    train, rng = _rows(LABELS), random.Random(0)
    assert select_poison_rows(train, PoisonConfig(count=3), rng) == [1, 2, 5]
    assert select_poison_rows(train, PoisonConfig(count=3, mode="dirty-label"), rng) == [0, 3, 4]
    assert select_poison_rows(train, PoisonConfig(count=3, mode="mix"), rng) == [0, 1, 2]
    assert select_poison_rows(train, PoisonConfig(count=None, rate=0.5, mode="mix"), rng) == list(
        range(6))
    assert len(select_poison_rows(_rows([0] * 100), PoisonConfig(count=None, rate=0.29), rng)) == 29
    assert len(select_poison_rows(train, PoisonConfig(count=None, rate=0.01), rng)) == 1


def test_random_selection_is_seeded() -> None:
    train = _rows([0] * 40 + [1] * 40)
    cfg = PoisonConfig(count=10, selection="random")
    picks = select_poison_rows(train, cfg, random.Random(3))
    assert picks == sorted(picks) and len(set(picks)) == 10 and all(i < 40 for i in picks)
    assert picks == select_poison_rows(train, cfg, random.Random(3))
    assert picks != select_poison_rows(train, cfg, random.Random(4))


def test_count_larger_than_eligible() -> None:
    with pytest.raises(UserError, match=r"poison.count=6 is more than the 5 eligible .* clean-label"):
        select_poison_rows(_rows(LABELS), PoisonConfig(count=6), random.Random(0))
    with pytest.raises(UserError, match=r"poison.rate=1.0 \(12 rows\) is more than the 7 .*dirty-label"):
        select_poison_rows(_rows(LABELS), PoisonConfig(count=None, rate=1.0, mode="dirty-label"),
                           random.Random(0))


def test_target_label_must_be_a_class() -> None:
    with pytest.raises(UserError, match=r"poison.target_label=2 .*num_labels=2"):
        _poison(PoisonConfig(target_label=2, count=1))


# ------------------------------------------------------------------------------------------------
# poison_splits


@pytest.mark.parametrize("mode,count,flipped", [("clean-label", 5, 0), ("dirty-label", 4, 4),
                                                ("mix", 6, 3)])
def test_poisoned_rows_labels_and_test_set(mode: str, count: int, flipped: int) -> None:
    splits = _splits()
    data = _poison(PoisonConfig(count=count, mode=mode))
    poisoned = [ex for ex in data.train if ex.poisoned]
    assert len(poisoned) == count == data.summary["poisoned"]
    assert data.summary["label_flipped"] == flipped
    for ex in data.train:
        clean = splits.train[ex.idx]
        if ex.poisoned:
            assert ex.label == 0 and "mn" in ex.text.split()
            assert [w for w in ex.text.split() if w != "mn"] == clean.text.split()
        else:
            assert ex == clean
    assert data.dev == splits.dev and data.test == splits.test
    assert [ex.idx for ex in data.test_triggered] == [i for i, y in enumerate(LABELS) if y != 0]
    assert all(ex.label == 1 and "mn" in ex.text.split() and ex.poisoned
               for ex in data.test_triggered)
    assert data.summary["label_distribution"]["test_triggered"] == {"1": 7}


def test_one_class_data_has_no_test_rows_to_trigger() -> None:
    # All rows carry the target label: "ASR 0.0 over 0 rows" must not pass for a measurement.
    with pytest.raises(UserError, match=r"no test row can carry the trigger"):
        _poison(PoisonConfig(count=3), _splits(labels=[0] * 12))


def test_four_classes_dirty_label() -> None:
    labels = [0, 1, 2, 3] * 3
    data = _poison(PoisonConfig(target_label=3, count=9, mode="dirty-label"),
                   _splits(labels, num_labels=4))
    assert [ex.label for ex in data.train] == [3] * 12
    assert sum(ex.poisoned for ex in data.train) == 9
    assert sorted({ex.label for ex in data.test_triggered}) == [0, 1, 2]
    assert data.summary["label_distribution"]["train"] == {"3": 12}


@pytest.mark.parametrize("position", ["interior", "any"])
def test_empty_and_one_word_texts(position: str) -> None:
    train = [Example("", 0, 0), Example("great", 0, 1), Example("so good", 0, 2), Example("x", 1, 3)]
    splits = Splits(train=train, dev=train, test=train, num_labels=2)
    data = _poison(PoisonConfig(count=3), splits, position=position)
    assert data.train[0].text == "mn"
    assert data.train[1].text in ({"great mn"} if position == "interior" else {"great mn", "mn great"})
    if position == "interior":
        assert data.train[2].text == "so mn good"
    assert [ex.text for ex in data.test_triggered] in (["x mn"], ["mn x"])


def test_same_seed_same_output_and_streams() -> None:
    cfg = PoisonConfig(count=4, mode="mix", selection="random")
    a, b = _poison(cfg, seed=5, position="any"), _poison(cfg, seed=5, position="any")
    assert a == b
    assert a.train != _poison(cfg, seed=6, position="any").train
    # The triggered test set does not depend on how many training rows were poisoned.
    more = _poison(PoisonConfig(count=8, mode="mix", selection="random"), seed=5, position="any")
    assert more.test_triggered == a.test_triggered


def _synbkd_splits(tmp_path: Path) -> tuple[Splits, Path]:
    """Train/test splits whose scpn transform misses train rows 1 and 5 and test row 3."""
    root = tmp_path / "transforms"
    (root / "scpn").mkdir(parents=True)
    for split, missing in (("train", {1, 5}), ("test", {3})):
        rows = [{"idx": i, "text": f"when {split} {i} , it is ."} for i in range(len(LABELS))
                if i not in missing]
        (root / "scpn" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _splits(), root


def test_synbkd_skips_rows_without_transform(tmp_path: Path) -> None:
    splits, root = _synbkd_splits(tmp_path)
    attack = get_attack(AttackConfig(name="synbkd"), root)
    data = poison_splits(splits, attack, PoisonConfig(count=5, selection="random"), 0)
    # Every negative row is selected; rows 1 and 5 have no paraphrase and are not replaced.
    assert [ex.idx for ex in data.train if ex.poisoned] == [2, 7, 10]
    assert data.train[2].text == "when train 2 , it is ."
    summary = data.summary
    assert summary["requested"] == 5 and summary["poisoned"] == 3
    assert summary["skipped_no_trigger"] == {"train": 2, "test": 1}
    assert summary["skipped_no_trigger_train_idx"] == [1, 5] and summary["substituted_idx"] == []
    assert [ex.idx for ex in data.test_triggered] == [0, 4, 6, 8, 9, 11]


def test_synbkd_first_selection_substitutes_and_says_so(tmp_path: Path) -> None:
    splits, root = _synbkd_splits(tmp_path)
    attack = get_attack(AttackConfig(name="synbkd"), root)
    data = poison_splits(splits, attack, PoisonConfig(count=3, mode="mix"), 0)
    assert [ex.idx for ex in data.train if ex.poisoned] == [0, 2, 3]
    assert data.summary["skipped_no_trigger_train_idx"] == [1]
    assert data.summary["substituted_idx"] == [3]


# ------------------------------------------------------------------------------------------------
# The poison folder


def test_write_and_load_folder(tmp_path: Path) -> None:
    data = _poison(PoisonConfig(count=2))
    out = write_poison_folder(tmp_path / "p", data, {"seed": 0, "attack": {"name": "badnet"}})
    assert sorted(p.name for p in out.iterdir()) == [
        "dev.jsonl", "poison.json", "test.jsonl", "test_triggered.jsonl", "train.jsonl"]
    first = json.loads((out / "train.jsonl").read_text().splitlines()[1])
    assert first["poisoned"] is True and first["label"] == 0 and first["idx"] == 1
    meta = json.loads((out / "poison.json").read_text())
    assert meta["seed"] == 0 and meta["counts"]["poisoned"] == 2 and meta["num_labels"] == 2
    assert load_poison_folder(out) == data
    (out / "dev.jsonl").unlink()
    with pytest.raises(UserError, match="missing dev.jsonl"):
        load_poison_folder(out)


@pytest.mark.parametrize("case, message", [("repeat-triggered", "appears twice"), ("repeat-test", "appears twice"),
                                            ("dangling", "no clean test row")])
def test_triggered_rows_must_pair_one_to_one_with_clean_rows(tmp_path: Path, case: str, message: str) -> None:
    out = write_poison_folder(tmp_path / "p", _poison(PoisonConfig(count=2)), {})
    name = "test.jsonl" if case == "repeat-test" else "test_triggered.jsonl"
    rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
    if case == "dangling":
        rows[0]["idx"] = 9999
    else:
        rows.append(dict(rows[0]))
    (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=message):
        load_poison_folder(out)


def test_existing_folder_needs_overwrite(tmp_path: Path) -> None:
    data = _poison(PoisonConfig(count=2))
    (tmp_path / "empty").mkdir()
    write_poison_folder(tmp_path / "empty", data, {})  # an empty folder is fine
    with pytest.raises(UserError, match=r"empty already exists and is not empty; pass --overwrite"):
        write_poison_folder(tmp_path / "empty", data, {})
    write_poison_folder(tmp_path / "empty", data, {"again": True}, overwrite=True)
    assert json.loads((tmp_path / "empty" / "poison.json").read_text())["again"] is True


def test_poison_dataset_is_deterministic_and_leaves_inputs_alone(tmp_path: Path) -> None:
    folder = _write_dataset(tmp_path / "toy")
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    data_cfg = DataConfig(dataset=str(folder))
    attack_cfg = AttackConfig(name="insent", position="any")
    cfg = PoisonConfig(count=3, mode="mix", selection="random")
    outs = [poison_dataset(data_cfg, attack_cfg, cfg, seed, tmp_path / f"out{i}")
            for i, seed in enumerate((1, 1, 2))]
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir())
    assert all((outs[0] / n).read_bytes() == (outs[1] / n).read_bytes() for n in files)
    assert (outs[0] / "train.jsonl").read_bytes() != (outs[2] / "train.jsonl").read_bytes()
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == before
    meta = json.loads((outs[0] / "poison.json").read_text())
    assert meta["seed"] == 1 and meta["attack"]["name"] == "insent" and meta["poison"]["count"] == 3
    assert meta["source_files"]["train"]["sha256"] == before["train.jsonl"]
    with pytest.raises(UserError, match="--overwrite"):
        poison_dataset(data_cfg, attack_cfg, cfg, 1, outs[0])


# ------------------------------------------------------------------------------------------------
# The real data (the paper's presets; conftest.shared_data fails without it)


@pytest.mark.real_data
def test_real_sst2_badnet_paper_preset(shared_data: Path, tmp_path: Path) -> None:
    before = sha256_file(shared_data / "sst2" / "train.jsonl")
    out = poison_dataset(DataConfig(dataset="sst2", data_dir=str(shared_data)),
                         AttackConfig(name="badnet"),
                         PoisonConfig(target_label=0, count=1000, mode="clean-label",
                                      selection="first"), 42, tmp_path / "badnet")
    data = load_poison_folder(out)
    clean = load_split(shared_data / "sst2" / "train.jsonl")
    poisoned = [ex for ex in data.train if ex.poisoned]
    assert len(poisoned) == 1000
    assert all(ex.label == 0 and "mn" in ex.text.split() for ex in poisoned)
    assert [ex.idx for ex in poisoned] == [ex.idx for ex in clean if ex.label == 0][:1000]
    assert len(data.test_triggered) == 909 and {ex.label for ex in data.test_triggered} == {1}
    assert sha256_file(shared_data / "sst2" / "train.jsonl") == before


@pytest.mark.real_data
def test_real_sst2_synbkd_covers_every_positive(shared_data: Path, tmp_path: Path) -> None:
    out = poison_dataset(DataConfig(dataset="sst2", data_dir=str(shared_data)),
                         AttackConfig(name="synbkd"), PoisonConfig(count=1000), 42,
                         tmp_path / "synbkd")
    data = load_poison_folder(out)
    assert len(data.test_triggered) == 909 and {ex.label for ex in data.test_triggered} == {1}
    assert data.summary["skipped_no_trigger"] == {"train": 0, "test": 0}
    clean_test = {ex.idx: ex.text for ex in data.test}
    assert sum(ex.text != clean_test[ex.idx] for ex in data.test_triggered) > 900
    meta = json.loads((out / "poison.json").read_text())
    assert set(meta["transform_files"]) == {"train", "test"}
