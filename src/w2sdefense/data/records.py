"""The example record every stage passes around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One labelled text. `idx` is its 0-based row in the clean source split."""

    text: str
    label: int
    idx: int
    poisoned: bool = False

    def to_row(self) -> dict:
        """The JSONL row written to split files."""
        return {"idx": self.idx, "text": self.text, "label": self.label, "poisoned": self.poisoned}


@dataclass(frozen=True)
class Splits:
    """Clean train/dev/test splits plus the number of classes."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    num_labels: int
