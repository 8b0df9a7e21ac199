"""Loading labelled splits: every file format, dataset resolution, the hub fallback and errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from w2sdefense.config import DataConfig
from w2sdefense.data import (
    Example,
    dataset_files,
    load_examples,
    load_split,
    load_splits,
    load_transform,
    resolve_data_dir,
    transforms_dir,
)
from w2sdefense.errors import UserError


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's data dir or cache."""
    monkeypatch.delenv("W2S_DATA_DIR", raising=False)
    monkeypatch.setenv("W2S_CACHE_DIR", str(tmp_path / "cache"))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _dataset(folder: Path, labels: dict[str, list[int]]) -> Path:
    """A dataset folder with train/dev/test.jsonl whose rows have the given labels."""
    for split, split_labels in labels.items():
        _jsonl(folder / f"{split}.jsonl",
               [{"text": f"{split} row {i}", "label": y} for i, y in enumerate(split_labels)])
    return folder


# ------------------------------------------------------------------------------------------------
# Formats


def test_jsonl_text_label_and_idx_is_row_number(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(  # a blank line is skipped; an empty text is data, not an error
        '{"text": "good film", "label": 1, "idx": 50}\n\n{"text": "", "label": 0, "idx": 7}\n'
    )
    assert load_split(path) == [Example("good film", 1, 0), Example("", 0, 1)]


@pytest.mark.parametrize("text_key,label_key", [("sentence", "labels"), ("sentences", "label")])
def test_jsonl_field_variants(tmp_path: Path, text_key: str, label_key: str) -> None:
    path = _jsonl(tmp_path / "a.jsonl", [{text_key: "x y", label_key: 2}, {text_key: "z", label_key: 0}])
    assert [(e.text, e.label) for e in load_split(path)] == [("x y", 2), ("z", 0)]


def test_explicit_fields(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", [{"review": "fine", "stars": 3, "text": "ignored"}])
    assert load_split(path, text_field="review", label_field="stars") == [Example("fine", 3, 0)]


def test_json_array(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([{"text": "a", "label": 0}, {"sentence": "b", "labels": 1}]))
    assert load_split(path) == [Example("a", 0, 0), Example("b", 1, 1)]


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert [e.text for e in load_split(path)] == ["a", "b"]


def test_csv_with_quotes_and_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    path.write_text('text,label\n"good, really",1\nbad,0\n"",0\n', encoding="utf-8")
    assert load_split(path) == [Example("good, really", 1, 0), Example("bad", 0, 1),
                                Example("", 0, 2)]


def test_tsv_keeps_quote_characters(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\n" a quoted start\t1\nplain\t0\n', encoding="utf-8")
    assert load_split(path) == [Example('" a quoted start', 1, 0), Example("plain", 0, 1)]


def test_four_classes(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "news", {"train": [0, 1, 2, 3, 1], "dev": [2, 0], "test": [3, 1]})
    splits = load_splits(DataConfig(dataset=str(folder)))
    assert splits.num_labels == 4
    assert [e.label for e in splits.train] == [0, 1, 2, 3, 1]


def test_load_transform_and_examples(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"idx": 3, "text": "p3"}, {"idx": 0, "text": "p0"}])
    assert load_transform(path) == {3: "p3", 0: "p0"}
    rows = _jsonl(tmp_path / "w.jsonl", [{"idx": 9, "text": "t", "label": 1, "poisoned": True}])
    assert load_examples(rows) == [Example("t", 1, 9, poisoned=True)]


# ------------------------------------------------------------------------------------------------
# Errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found: .*nope.jsonl"):
        load_split(tmp_path / "nope.jsonl")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("x\n")
    with pytest.raises(UserError, match=r"train.txt: unknown file type .txt; use one of .jsonl"):
        load_split(path)


def test_malformed_json_line_names_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 1\n')
    with pytest.raises(UserError, match=r"train.jsonl line 3: invalid JSON"):
        load_split(path)


def test_missing_column_lists_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("review,label\nok,1\n")
    with pytest.raises(UserError, match=r"train.csv line 2: no text column .*columns found: review, label"):
        load_split(path)
    path = _jsonl(tmp_path / "b.jsonl", [{"text": "a", "label": 0}, {"text": "b", "y": 1}])
    with pytest.raises(UserError, match=r"b.jsonl line 2: no label column .*columns found: text, y"):
        load_split(path)
    with pytest.raises(UserError, match=r"no text column 'body'"):
        load_split(path, text_field="body")


@pytest.mark.parametrize("bad", ["pos", 1.5, True, None, [1], "1_0", "\u0661"])  # int() reads the last two
def test_non_integer_label(tmp_path: Path, bad: object) -> None:
    path = _jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 0}, {"text": "y", "label": bad}])
    with pytest.raises(UserError, match=r"a.jsonl line 2: label must be an integer"):
        load_split(path)


def test_negative_label(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("text,label\nx,-1\n")
    with pytest.raises(UserError, match=r"a.csv line 2: label must be >= 0; got -1"):
        load_split(path)


def test_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv"
    path.write_text("text\tlabel\nx\t1\textra\n")
    with pytest.raises(UserError, match=r"a.tsv line 2: 3 fields, but the header has 2"):
        load_split(path)


def test_label_out_of_range(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "d", {"train": [0, 1], "dev": [0, 1], "test": [1, 5]})
    with pytest.raises(UserError, match=r"test.jsonl line 2: label 5 is outside 0..1 \(data.num_labels=2\)"):
        load_splits(DataConfig(dataset=str(folder), num_labels=2))


def test_a_label_beyond_the_others_names_its_file_and_line(tmp_path: Path) -> None:
    # One stray 5 in binary data would silently make 6 classes, four of them without a row.
    folder = _dataset(tmp_path / "d", {"train": [0, 1, 0, 5, 1], "dev": [0, 1], "test": [1, 0]})
    with pytest.raises(UserError, match=r"train.jsonl line 4: label 5, but no training row has label 2, 3 or 4; "
                                        r".*data.num_labels=6"):
        load_splits(DataConfig(dataset=str(folder)))
    assert load_splits(DataConfig(dataset=str(folder), num_labels=6)).num_labels == 6  # meant: allowed
    one_based = _dataset(tmp_path / "b", {"train": [1, 2, 2, 1], "dev": [1], "test": [2]})
    with pytest.raises(UserError, match=r"train.jsonl line 1: label 1, but no training row has label 0;"):
        load_splits(DataConfig(dataset=str(one_based)))


def test_a_label_only_in_test_names_its_file_and_line(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "d", {"train": [0, 1, 1], "dev": [0, 1], "test": [1, 0, 2]})
    with pytest.raises(UserError, match=r"test.jsonl line 3: label 2 is not a class of the training split "
                                        r"\(labels 0..1\).*data.num_labels=3"):
        load_splits(DataConfig(dataset=str(folder)))
    assert load_splits(DataConfig(dataset=str(folder), num_labels=3)).num_labels == 3


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_an_empty_text_names_its_file_and_line(tmp_path: Path, text: str) -> None:
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(100)]
    for i in (10, 30, 50, 70, 90):
        rows[i]["text"] = text
    folder = _dataset(tmp_path / "d", {"dev": [0, 1], "test": [0, 1]})
    _jsonl(folder / "train.jsonl", rows)
    with pytest.raises(UserError, match=r"train.jsonl line 11: the text is empty"):
        load_splits(DataConfig(dataset=str(folder)))
    assert len(load_split(folder / "train.jsonl")) == 100  # one file read as it is: empty texts are data


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv"])
def test_a_non_utf8_byte_names_its_line(tmp_path: Path, suffix: str) -> None:
    # Far past the first 8 KiB that Python decodes at once, so the byte offset alone would mislead.
    lines = [f"the text of row {i} is this long sentence" for i in range(400)]
    if suffix in (".jsonl", ".json"):
        body = [json.dumps({"text": t, "label": 0}) for t in lines]
        if suffix == ".json":
            body = ["["] + [row + "," for row in body[:-1]] + [body[-1], "]"]
    else:
        sep = "," if suffix == ".csv" else "\t"
        body = [f"text{sep}label"] + [f"{t}{sep}0" for t in lines]
    bad = 350
    raw = "\n".join(body).encode("utf-8").split(b"\n")
    raw[bad - 1] = raw[bad - 1].replace(b"long", b"l\xe9ng")  # Latin-1 e-acute
    path = tmp_path / f"train{suffix}"
    path.write_bytes(b"\n".join(raw) + b"\n")
    with pytest.raises(UserError, match=rf"train{suffix} line {bad}: not UTF-8 text \(byte 0xe9 at column \d+"):
        load_split(path)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "d", {"train": [0, 1], "dev": [], "test": [1]})
    with pytest.raises(UserError, match=r"dev.jsonl: the dev split has no rows"):
        load_splits(DataConfig(dataset=str(folder)))


def test_duplicate_transform_idx(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"idx": 1, "text": "a"}, {"idx": 1, "text": "b"}])
    with pytest.raises(UserError, match=r"t.jsonl line 2: idx 1 appears twice"):
        load_transform(path)


# ------------------------------------------------------------------------------------------------
# Dataset resolution


def test_named_dataset_under_data_dir_arg_and_env(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset(tmp_path / "data" / "toy", {"train": [0, 1, 0], "dev": [1], "test": [0, 1]})
    cfg = DataConfig(dataset="toy", data_dir=str(tmp_path / "data"))
    assert len(load_splits(cfg).train) == 3
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("W2S_DATA_DIR", str(tmp_path / "data"))
    assert resolve_data_dir(None) == tmp_path / "data"
    assert resolve_data_dir("elsewhere") == Path("elsewhere")
    assert dataset_files(DataConfig(dataset="toy"))["dev"] == tmp_path / "data" / "toy" / "dev.jsonl"
    assert transforms_dir(DataConfig(dataset="toy")) == tmp_path / "data" / "toy" / "transforms"


def test_folder_reads_any_format_and_explicit_files_override(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "d", {"train": [0, 1, 1], "dev": [0], "test": [1]})
    (folder / "dev.csv").write_text("text,label\ncsv row,1\n")  # beside dev.jsonl: data.dev_file says which
    (folder / "test.jsonl").unlink()
    (folder / "test.tsv").write_text("text\tlabel\ntsv row\t0\n")
    other = _jsonl(tmp_path / "other_train.jsonl", [{"text": "mine", "label": 1}] * 2)
    cfg = DataConfig(dataset=str(folder), train_file=str(other), dev_file=str(folder / "dev.jsonl"))
    files = dataset_files(cfg)
    assert files == {"train": other, "dev": folder / "dev.jsonl", "test": folder / "test.tsv"}
    splits = load_splits(cfg)
    assert [e.text for e in splits.train] == ["mine", "mine"]
    assert splits.test == [Example("tsv row", 0, 0)]


def test_max_rows_and_num_labels_inference(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "d", {"train": [0, 0, 1, 2], "dev": [0, 0], "test": [0, 0, 0]})
    splits = load_splits(DataConfig(dataset=str(folder), max_train=2, max_dev=1, max_test=3))
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (2, 1, 3)
    assert splits.num_labels == 3  # from the full train split, not the first two rows
    folder = _dataset(tmp_path / "one", {"train": [0], "dev": [0], "test": [0]})
    assert load_splits(DataConfig(dataset=str(folder))).num_labels == 2


def test_all_explicit_files_ignore_dataset_name(tmp_path: Path) -> None:
    _dataset(tmp_path / "f", {"train": [0, 1], "dev": [1], "test": [0]})
    cfg = DataConfig(dataset="sst2", hub_fallback=False, train_file=str(tmp_path / "f/train.jsonl"),
                     dev_file=str(tmp_path / "f/dev.jsonl"), test_file=str(tmp_path / "f/test.jsonl"))
    assert len(load_splits(cfg).train) == 2
    assert transforms_dir(cfg) == tmp_path / "f" / "transforms"
    assert transforms_dir(DataConfig(dataset=None, train_file="x.jsonl")) is None


def test_missing_dataset_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    cfg = DataConfig(dataset="sst2", data_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError) as err:
        load_splits(cfg)
    message = str(err.value)
    assert str(tmp_path / "empty" / "sst2") in message
    assert "--data-dir" in message and "W2S_DATA_DIR" in message and "data.train_file" in message
    assert "`datasets` package is not installed" in message
    with pytest.raises(UserError, match="no data dir is set") as err:
        load_splits(DataConfig(dataset="olid"))
    assert "hub" not in str(err.value)


def test_sst2_hub_fallback_caches_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(name: str) -> dict:
        calls.append(name)
        return {split: [{"text": f"{split} {i}", "label": i % 2, "label_text": "x"} for i in range(3)]
                for split in ("train", "validation", "test")}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    splits = load_splits(DataConfig(dataset="sst2"))
    assert calls == ["SetFit/sst2"]
    assert [e.text for e in splits.dev] == ["validation 0", "validation 1", "validation 2"]
    cached = tmp_path / "cache" / "datasets" / "sst2"
    assert json.loads((cached / "train.jsonl").read_text().splitlines()[1]) == {"text": "train 1", "label": 1}
    monkeypatch.setitem(sys.modules, "datasets", None)  # the second load needs no hub
    assert load_splits(DataConfig(dataset="sst2")).train == splits.train
    assert calls == ["SetFit/sst2"]


def test_hub_failure_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str) -> None:
        raise ConnectionError("no network\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(UserError, match=r"could not load SetFit/sst2 \(ConnectionError: no network\)"):
        load_splits(DataConfig(dataset="sst2"))
    with pytest.raises(UserError, match="not found") as err:
        load_splits(DataConfig(dataset="sst2", hub_fallback=False))
    assert "hub" not in str(err.value)


def test_one_split_in_two_formats_is_refused_naming_both(tmp_path: Path) -> None:
    for split in ("train", "dev", "test"):
        _jsonl(tmp_path / f"{split}.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    (tmp_path / "train.csv").write_text("text,label\na,1\nb,0\n")  # the same rows, labels flipped
    with pytest.raises(UserError, match=rf"^{tmp_path}: the train split is in 2 files \(train.jsonl, train.csv\); "
                                        r"keep one, or set data.train_file to the one meant$"):
        dataset_files(DataConfig(dataset=str(tmp_path)))
    chosen = dataset_files(DataConfig(dataset=str(tmp_path), train_file=str(tmp_path / "train.csv")))
    assert chosen["train"] == tmp_path / "train.csv"


def test_a_config_that_does_not_match_its_weights_is_one_error(tmp_path):
    import json

    from w2sdefense.errors import UserError
    from w2sdefense.models import load_classifier
    from w2sdefense.models.tiny import build_tiny

    model, tok = build_tiny("tiny-bert", 2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(UserError, match="config.json does not match its weights"):
        load_classifier(str(tmp_path), 2)


def test_a_model_folder_without_a_tokenizer_says_so(tmp_path):
    from w2sdefense.errors import UserError
    from w2sdefense.models import load_classifier
    from w2sdefense.models.tiny import build_tiny

    model, _ = build_tiny("tiny-bert", 2)
    model.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="holds no tokenizer files"):
        load_classifier(str(tmp_path), 2)
