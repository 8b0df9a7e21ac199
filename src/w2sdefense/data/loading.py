"""Reading labelled split files (JSONL, JSON, CSV, TSV, Parquet, `datasets` folders) and transform files."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from w2sdefense.data.records import Example
from w2sdefense.errors import UserError, cut, shown
from w2sdefense.fileio import utf8_error

FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
ARROW_STATE = "state.json"  # marks a folder written by datasets' Dataset.save_to_disk
HUB_EXTRA = "pip install 'w2sdefense[hub]'"
TEXT_FIELDS = ("text", "sentence", "sentences")
LABEL_FIELDS = ("label", "labels")


def iter_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield (location, row) for every data row of a file; location reads 'FILE line N' ('row N' for
    Parquet files and folders saved with `datasets`' save_to_disk, which have no lines)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        if (path / ARROW_STATE).is_file():
            yield from _saved_dataset_rows(path)
            return
        if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk: one subfolder per split
            names = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
            raise UserError(f"{path} holds the splits {', '.join(names)}; give the folder as data.dataset, "
                            "or one split's subfolder as a file")
        raise UserError(f"{path} is a folder, not a data file (a split saved with datasets' save_to_disk "
                        f"holds {ARROW_STATE})")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        kind = suffix or "(no extension)"
        raise UserError(f"{path}: unknown file type {kind}; use one of {', '.join(FORMATS)}")
    try:
        if suffix == ".parquet":
            yield from _parquet_rows(path)
        elif suffix == ".jsonl":
            yield from _jsonl_rows(path)
        elif suffix == ".json":
            yield from _json_rows(path)
        else:
            yield from _delimited_rows(path, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError:
        raise UserError(f"{path} {utf8_error(path)}") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue  # a trailing or stray blank line is not a row
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UserError(
                    f"{path} line {line_no}: expected a JSON object, got {type(row).__name__}"
                )
            yield f"{path} line {line_no}", row


def _table_rows(path: Path, table: Any) -> Iterator[tuple[str, dict]]:
    """Rows of an Arrow table (or a `datasets.Dataset`), located as 'PATH row N' (1-based)."""
    for i, row in enumerate(table.to_pylist() if hasattr(table, "to_pylist") else table, 1):
        yield f"{path} row {i}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow ({HUB_EXTRA})") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for a damaged or non-Parquet file
        raise UserError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    yield from _table_rows(path, table)


def _saved_dataset_rows(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"{path}: reading a folder saved with save_to_disk needs `datasets` ({HUB_EXTRA})") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(f"{path}: not a readable save_to_disk folder ({_first_line(exc)})") from None
    yield from _table_rows(path, loaded)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _json_rows(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Many published ".json" splits (the paper's among them) are really JSON Lines.
            yield from _jsonl_rows(path)
            return
        raise UserError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path} item {i}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} item {i}", row


def _delimited_rows(path: Path, delimiter: str) -> Iterator[tuple[str, dict]]:
    # TSV exports (GLUE, StyleAttack) leave quote characters unescaped inside texts: read them
    # literally; CSV follows the usual quoting rules.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path}: empty file; expected a header row")
            header = [name.strip() for name in header]
            for fields in reader:
                if not fields:
                    continue
                where = f"{path} line {reader.line_num}"
                if len(fields) != len(header):
                    raise UserError(
                        f"{where}: {len(fields)} fields, but the header has {len(header)}"
                    )
                yield where, dict(zip(header, fields))
        except csv.Error as exc:
            raise UserError(f"{path} line {reader.line_num}: malformed row ({exc})") from None


def _field(row: Mapping, explicit: str | None, candidates: Sequence[str], kind: str,
           where: str) -> str:
    """The name of the row's `kind` column: the explicit one, else the first candidate present."""
    found = cut(", ".join(map(str, row))) or "(none)"
    if explicit is not None:
        if explicit in row:
            return explicit
        raise UserError(f"{where}: no {kind} column {shown(explicit)}; columns found: {found}")
    for name in candidates:
        if name in row:
            return name
    raise UserError(
        f"{where}: no {kind} column (looked for {', '.join(candidates)}); columns found: {found}"
    )


_DIGITS = re.compile(r"[+-]?[0-9]+")


def parse_label(value: Any, where: str) -> int:
    """A class label as a non-negative int; integer strings (CSV cells) are converted."""
    label: int | None = None
    if isinstance(value, bool):
        label = None  # true/false is a malformed label, not 1/0
    elif isinstance(value, int):
        label = value
    elif isinstance(value, float) and value.is_integer():
        label = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        # Not int(): it reads "1_0" as 10 and other scripts' digits as numbers, a value not in the file.
        label = int(value.strip())
    if label is None:
        raise UserError(f"{where}: label must be an integer; got {shown(value)}")
    if label < 0:
        raise UserError(f"{where}: label must be >= 0; got {label}")
    return label


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: text must be a string; got {shown(value)}")
    return value


def load_split(path: str | Path, text_field: str | None = None,
               label_field: str | None = None) -> list[Example]:
    """Read one labelled split; idx is the 0-based row number (any idx column is ignored)."""
    return [example for _, example in read_split(path, text_field, label_field)]


def read_split(path: str | Path, text_field: str | None = None,
               label_field: str | None = None) -> list[tuple[str, Example]]:
    """load_split, each row with its location ('FILE line N') for messages about it."""
    rows = []
    for where, row in iter_rows(path):
        text_key = _field(row, text_field, TEXT_FIELDS, "text", where)
        label_key = _field(row, label_field, LABEL_FIELDS, "label", where)
        rows.append((where, Example(
            text=_text(row[text_key], where),
            label=parse_label(row[label_key], where),
            idx=len(rows),
            **_trigger_marks(row, where),  # a poison folder given as data (`train --data`) keeps them
            where=where,
        )))
    return rows


def load_examples(path: str | Path) -> list[Example]:
    """Read a split file written by this tool (Example.to_row rows), keeping idx, poisoned and trigger_spans."""
    examples = []
    for where, row in iter_rows(path):
        for key in ("idx", "text", "label"):
            if key not in row:
                raise UserError(f"{where}: missing {key!r}; columns found: {cut(', '.join(map(str, row)))}")
        examples.append(Example(
            text=_text(row["text"], where),
            label=parse_label(row["label"], where),
            idx=_index(row["idx"], where),
            **_trigger_marks(row, where),
            where=where,
        ))
    return examples


def _trigger_marks(row: Mapping, where: str) -> dict:
    """The row's `poisoned` flag and `trigger_spans` (Example.to_row columns), defaults when absent."""
    poisoned = row.get("poisoned", False)
    if isinstance(poisoned, str):
        poisoned = poisoned.strip().lower() in ("true", "1")
    return {"poisoned": bool(poisoned), "trigger_spans": _spans(row.get("trigger_spans"), where)}


def _spans(value: Any, where: str) -> tuple[tuple[int, int], ...] | None:
    """A row's trigger_spans ([[start, end], ...] character offsets), or None when absent."""
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in s)
        and 0 <= s[0] <= s[1] for s in value)
    if not ok:
        raise UserError(f"{where}: trigger_spans must be a list of [start, end] character offsets; got {shown(value)}")
    return tuple((s[0], s[1]) for s in value)


def _index(value: Any, where: str) -> int:
    try:
        return parse_label(value, where)
    except UserError:
        raise UserError(f"{where}: idx must be a non-negative integer; got {shown(value)}") from None


def load_transform(path: str | Path) -> dict[int, str]:
    """Read a transform file of {"idx", "text"} rows into {clean row idx: transformed text}."""
    table: dict[int, str] = {}
    for where, row in iter_rows(path):
        for key in ("idx", "text"):
            if key not in row:
                raise UserError(f"{where}: missing {key!r}; columns found: {cut(', '.join(map(str, row)))}")
        idx = _index(row["idx"], where)
        if idx in table:
            raise UserError(f"{where}: idx {idx} appears twice")
        table[idx] = _text(row["text"], where)
    return table


def read_texts(path: str | Path, text_field: str | None = None) -> list[str]:
    """Texts without labels: a .txt file one a line (blank lines skipped), or any data file `--data` reads
    (JSONL, CSV, Parquet, ...) by its text column."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"unlabelled texts file not found: {path}")
    if path.suffix == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text (one text a line)") from None
        texts = [line.strip() for line in lines if line.strip()]
    else:
        texts = [_text(row[_field(row, text_field, TEXT_FIELDS, "text", where)], where)
                 for where, row in iter_rows(path)]
    if not texts:
        raise UserError(f"{path} holds no text")
    return texts
