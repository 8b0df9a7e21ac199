"""The poison folder: poisoned train, clean dev/test, the triggered test set, and poison.json.

Written by `w2sdefense poison` (attacks/), read by training, evaluation and the defenses; it lives
here, below all of them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from w2sdefense.data.loading import load_examples
from w2sdefense.data.records import Example
from w2sdefense.errors import UserError
from w2sdefense.fileio import write_json, write_jsonl
from w2sdefense.rundir import check_run_dir

SPLIT_FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "test_triggered.jsonl")
META_FILE = "poison.json"


@dataclass
class PoisonedData:
    """Poisoned train, clean dev/test, the triggered test set (original labels) and the counts."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    test_triggered: list[Example]
    num_labels: int
    summary: dict = field(default_factory=dict)


def write_poison_folder(out_dir: str | Path, data: PoisonedData, meta: Mapping,
                        overwrite: bool = False) -> Path:
    """Write the four split files and poison.json (meta plus counts) atomically."""
    out = Path(out_dir)
    check_run_dir(out, overwrite)
    splits = {"train.jsonl": data.train, "dev.jsonl": data.dev, "test.jsonl": data.test,
              "test_triggered.jsonl": data.test_triggered}
    for name, rows in splits.items():
        write_jsonl(out / name, (ex.to_row() for ex in rows))
    # Written last: a folder with poison.json is a complete one.
    write_json(out / META_FILE, {**meta, "num_labels": data.num_labels, "counts": data.summary})
    return out


def load_poison_folder(path: str | Path) -> PoisonedData:
    """Read a folder written by write_poison_folder back into PoisonedData."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"poison folder not found: {folder}")
    missing = [name for name in (*SPLIT_FILES, META_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} is not a complete poison folder: missing {', '.join(missing)}")
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        where = f"{folder / META_FILE} line {exc.lineno}"
        raise UserError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("num_labels"), int):
        raise UserError(f"{folder / META_FILE}: no integer num_labels")
    train, dev, test, triggered = (load_examples(folder / name) for name in SPLIT_FILES)
    check_pairing(folder, test, triggered)
    return PoisonedData(train=train, dev=dev, test=test, test_triggered=triggered,
                        num_labels=meta["num_labels"], summary=meta.get("counts", {}))


def check_pairing(folder: Path, test: list[Example], triggered: list[Example]) -> None:
    """Refuse triggered rows that do not map one to one onto clean test rows by idx: ASR-cc pairs each with its clean
    version, so a repeated or dangling idx would be counted silently wrong."""
    for name, rows in (("test.jsonl", test), ("test_triggered.jsonl", triggered)):
        seen: set[int] = set()
        for ex in rows:
            if ex.idx in seen:
                raise UserError(f"{folder / name}: idx {ex.idx} appears twice ({ex.located()}); each row needs its "
                                "own idx, the row number of its clean source")
            seen.add(ex.idx)
    clean = {ex.idx for ex in test}
    dangling = [ex for ex in triggered if ex.idx not in clean]
    if dangling:
        raise UserError(f"{folder / 'test_triggered.jsonl'}: {len(dangling)} triggered row(s) have no clean test row "
                        f"with their idx (the first: idx {dangling[0].idx}, {dangling[0].located()}); the folder's "
                        "test files do not belong together")


def target_label(poison_dir: str | Path) -> int:
    """The attack's target label, from the poison folder's poison.json."""
    return int(json.loads((Path(poison_dir) / META_FILE).read_text(encoding="utf-8"))["poison"]["target_label"])


def check_test_sets(folder: str | Path) -> None:
    """Refuse a poison folder whose clean or triggered test set is empty: a rate over 0 rows is no measurement."""
    sets = (("test.jsonl", "clean accuracy", "the poison folder's source data has no test rows"),
            ("test_triggered.jsonl", "attack success rate",
             "no test row could carry the trigger: every test row has the target label (one-class data), or the "
             "attack skipped them all; poison data whose test split has rows of other classes"))
    for name, metric, why in sets:
        path = Path(folder) / name
        if path.is_file():  # a missing file: load_poison_folder says the folder is incomplete
            with path.open("rb") as handle:
                if not any(line.strip() for line in handle):
                    raise UserError(f"{path} has no rows, so the {metric} would be over 0 rows: {why}")


def relearn_rows(train: list[Example], rows: int, poisoned: int, seed: int) -> list[Example]:
    """The re-learning test's rows: a seeded draw of `poisoned` triggered rows and `rows - poisoned` clean
    rows of the attacker's poisoned training split (in file order)."""
    marked = [e for e in train if e.poisoned]
    plain = [e for e in train if not e.poisoned]
    if poisoned > len(marked) or rows - poisoned > len(plain):
        raise UserError(f"relearn needs {poisoned} poisoned and {rows - poisoned} clean rows; the poisoned training "
                        f"split has {len(marked)} and {len(plain)}")
    rng = random.Random(seed)
    return sorted(rng.sample(marked, poisoned) + rng.sample(plain, rows - poisoned), key=lambda e: e.idx)
