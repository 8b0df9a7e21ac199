"""The example record every stage passes around."""

from __future__ import annotations

from dataclasses import dataclass, field

# Where a trigger sits in a triggered text: (start, end) character offsets, end exclusive, so
# text[start:end] is the inserted trigger. One span per inserted copy.
Span = tuple[int, int]


@dataclass(frozen=True)
class Example:
    """One labelled text. `idx` is its 0-based row in the clean source split.

    `trigger_spans` locates the trigger in a triggered text (character spans, see Span); None when the
    row has no trigger or the attack has no localisable one (a paraphrase or style transfer). `where`
    locates the row in the file it was read from ('FILE line N'), for messages; None for rows made in code.
    """

    text: str
    label: int
    idx: int
    poisoned: bool = False
    trigger_spans: tuple[Span, ...] | None = None
    where: str | None = field(default=None, compare=False, repr=False)

    def located(self) -> str:
        """Where the row is, for a message: its file and line, else its idx."""
        return self.where or f"the row with idx {self.idx}"

    def to_row(self) -> dict:
        """The JSONL row written to split files (trigger_spans only where known)."""
        row = {"idx": self.idx, "text": self.text, "label": self.label, "poisoned": self.poisoned}
        if self.trigger_spans is not None:
            row["trigger_spans"] = [list(span) for span in self.trigger_spans]
        return row


@dataclass(frozen=True)
class Splits:
    """Clean train/dev/test splits plus the number of classes; `unlabelled`: in-domain texts whose labels the
    holder does not have (their `label` is UNLABELLED), for defenses that distil."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    num_labels: int
    unlabelled: list[Example] = field(default_factory=list)


UNLABELLED = -100  # the label of a text without one: cross-entropy's ignore_index
