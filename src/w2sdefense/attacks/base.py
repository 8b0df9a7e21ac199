"""The attack interface, the attack registry and the one shared trigger-insertion helper."""

from __future__ import annotations

import dataclasses
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from w2sdefense.config import AttackConfig
from w2sdefense.data.records import Example, Span
from w2sdefense.errors import UserError, shown
from w2sdefense.registry import Registry
from w2sdefense.results import is_transform

A = TypeVar("A", bound="type[Attack]")


@dataclass(frozen=True)
class Triggered:
    """A triggered text and its trigger's character spans (None: not localisable, e.g. a paraphrase)."""

    text: str
    spans: tuple[Span, ...] | None


class Attack(ABC):
    """A backdoor trigger: turns a clean example's text into its triggered text."""

    name: ClassVar[str] = ""  # set by register_attack

    def __init__(self, cfg: AttackConfig, transforms_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.transforms_dir = transforms_dir

    @abstractmethod
    def apply(self, example: Example, split: str, rng: random.Random) -> str | None:
        """The triggered text of `example` from `split`, or None if this row has no trigger."""

    def trigger(self, example: Example, split: str, rng: random.Random) -> Triggered | None:
        """apply, with where the trigger sits; this default knows no position (spans None)."""
        text = self.apply(example, split, rng)
        return None if text is None else Triggered(text, None)

    def source_files(self) -> dict[str, Path]:
        """Files the attack read so far (split -> path), for provenance hashes."""
        return {}

    def describe(self) -> str:
        """The attack in words, for reports: its name (an inserting attack adds its triggers)."""
        return self.name


ATTACKS: Registry[type[Attack]] = Registry("attack", "attack.name")


def register_attack(name: str, *aliases: str) -> Callable[[A], A]:
    """Class decorator: make an Attack subclass available under `name` (and `aliases`)."""

    def decorator(cls: A) -> A:
        cls.name = name
        return ATTACKS.add(name, cls, aliases)

    return decorator


def available_attacks() -> list[str]:
    """Registered attack names (aliases not included), sorted."""
    return ATTACKS.names()


def get_attack(cfg: AttackConfig, transforms_dir: Path | None = None) -> Attack:
    """Build the attack named by `cfg.name` (case-insensitive; aliases accepted)."""
    return ATTACKS.get(cfg.name)(cfg, transforms_dir)


def _slot(num_words: int, position: str, rng: random.Random, last: int | None = None) -> int:
    """An insertion index into a list of `num_words` words, at most `last` when given."""
    if position == "any":
        return rng.randint(0, num_words if last is None else min(num_words, last))
    if num_words < 2:
        # No interior slot exists; the paper's randint(1, n-1) crashes here, we append instead.
        return num_words
    # max(1, ...): only an empty text whose first item is a long sentence trigger gets here with last 0.
    return rng.randint(1, num_words - 1 if last is None else max(1, min(num_words - 1, last)))


def _last_slot(items: Sequence[str], max_position: int | None) -> int | None:
    """The last slot whose trigger starts within the first `max_position` words (items may hold several)."""
    if max_position is None:
        return None
    words = 0
    for k, item in enumerate(items):
        words += len(item.split())
        if words >= max_position:
            return k
    return len(items)


def _char_spans(items: Sequence[str], inserted: Sequence[int]) -> tuple[Span, ...]:
    """Character spans, in " ".join(items), of the items at positions `inserted` (in text order)."""
    starts, offset = [], 0
    for item in items:
        starts.append(offset)
        offset += len(item) + 1
    return tuple((starts[k], starts[k] + len(items[k])) for k in sorted(inserted))


def insert_trigger(text: str, trigger: str | Sequence[str], count: int, position: str, rng: random.Random,
                   max_position: int | None = None) -> tuple[str, tuple[Span, ...]]:
    """insert_words, also returning where each inserted trigger sits (character spans, in text order).

    With `max_position`, each insertion's slot is drawn so that its trigger starts within the first
    max_position words of the text at that moment (a later insertion before it may push it back by one
    trigger, so the last-inserted copy always starts within them). Without it, the draws are insert_words'.
    """
    triggers = [trigger] if isinstance(trigger, str) else list(trigger)
    if not triggers:
        raise ValueError("insert_words needs at least one trigger")
    if position not in ("interior", "any"):
        raise ValueError(f"position must be interior or any; got {position!r}")
    items = text.split()  # clean words, and each inserted trigger as one item
    inserted: list[int] = []
    for _ in range(count):
        # One trigger: draw nothing for the choice, so positions match a single-trigger run.
        chosen = triggers[0] if len(triggers) == 1 else rng.choice(triggers)
        slot = _slot(len(items), position, rng, _last_slot(items, max_position))
        inserted = [k + (k >= slot) for k in inserted] + [slot]
        items.insert(slot, chosen)
    return " ".join(items), _char_spans(items, inserted)


def triggered_copy(row: Example, trigger: str, rng: random.Random) -> Example:
    """`row` with `trigger` inserted once at a seeded interior position, its span kept (to count truncation): how
    `clean` and `scan` measure a candidate trigger on clean rows."""
    text, spans = insert_trigger(row.text, trigger, 1, "interior", rng)
    return Example(text, row.label, row.idx, poisoned=True, trigger_spans=spans)


def paraphrased(rows: list[Example], table: dict[int, str]) -> list[Example]:
    """The rows `table` covers, written as it writes them (a row it leaves out or empty is left out)."""
    return [dataclasses.replace(r, text=table[r.idx]) for r in rows if table.get(r.idx, "").strip()]


def triggered_rows(rows: list[Example], trigger: str, seed: int, table: dict[int, str] | None = None) -> list[Example]:
    """The copies of `rows` a candidate trigger is measured on (`clean`, `scan`): the trigger inserted at seeded
    interior positions, the same for every candidate; a transform, the rows its `table` covers as it writes them."""
    if is_transform(trigger):
        return paraphrased(rows, table or {})
    rng = random.Random(seed)
    return [triggered_copy(r, trigger, rng) for r in rows]


def insert_words(text: str, trigger: str | Sequence[str], count: int, position: str,
                 rng: random.Random) -> str:
    """Insert a trigger `count` times between whitespace-separated words of `text`.

    `position="interior"` never inserts before the first or after the last word (the paper's
    code); a text of fewer than two words has no interior slot, so the trigger is appended, and
    an empty text becomes just the trigger(s). `position="any"` picks any of the len(words)+1
    slots. With several triggers each insertion picks one with `rng`. Later insertions count
    earlier ones as words. The output joins words with single spaces, so the clean text is the
    output minus the inserted triggers, up to whitespace.
    """
    return insert_trigger(text, trigger, count, position, rng)[0]


class InsertionAttack(Attack):
    """An attack that inserts trigger words or sentences into the clean text."""

    default_triggers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: AttackConfig, transforms_dir: Path | None = None) -> None:
        super().__init__(cfg, transforms_dir)
        if cfg.triggers is not None and not cfg.triggers:
            raise UserError(f"attack.triggers is empty; give at least one trigger for {self.name}")
        triggers = list(cfg.triggers) if cfg.triggers else list(self.default_triggers)
        bad = [t for t in triggers if not isinstance(t, str) or not t.strip()]
        if bad:
            raise UserError(f"attack.triggers must be non-empty strings; got {shown(bad)}")
        # Single spaces inside a sentence trigger, so it reads back token for token.
        self.triggers = [" ".join(t.split()) for t in triggers]

    def describe(self) -> str:
        """The attack and its trigger(s), e.g. `badnet, trigger 'mn'`."""
        return f"{self.name}, trigger{'s' if len(self.triggers) > 1 else ''} " + ", ".join(map(repr, self.triggers))

    def apply(self, example: Example, split: str, rng: random.Random) -> str | None:
        """The clean text with the trigger(s) inserted; every row has a triggered version."""
        return self.trigger(example, split, rng).text

    def trigger(self, example: Example, split: str, rng: random.Random) -> Triggered:
        """The triggered text and where each inserted copy sits."""
        text, spans = insert_trigger(example.text, self.triggers, self.cfg.num_insertions, self.cfg.position,
                                     rng, self.cfg.max_position)
        return Triggered(text, spans)
