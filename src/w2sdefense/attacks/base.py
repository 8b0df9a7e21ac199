"""The attack interface, the attack registry and the one shared trigger-insertion helper."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, TypeVar

from w2sdefense.config import AttackConfig
from w2sdefense.data.records import Example
from w2sdefense.errors import UserError
from w2sdefense.registry import Registry

A = TypeVar("A", bound="type[Attack]")


class Attack(ABC):
    """A backdoor trigger: turns a clean example's text into its triggered text."""

    name: ClassVar[str] = ""  # set by register_attack

    def __init__(self, cfg: AttackConfig, transforms_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.transforms_dir = transforms_dir

    @abstractmethod
    def apply(self, example: Example, split: str, rng: random.Random) -> str | None:
        """The triggered text of `example` from `split`, or None if this row has no trigger."""

    def source_files(self) -> dict[str, Path]:
        """Files the attack read so far (split -> path), for provenance hashes."""
        return {}


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


def _slot(num_words: int, position: str, rng: random.Random) -> int:
    """An insertion index into a list of `num_words` words."""
    if position == "any":
        return rng.randint(0, num_words)
    if num_words < 2:
        # No interior slot exists; the paper's randint(1, n-1) crashes here, we append instead.
        return num_words
    return rng.randint(1, num_words - 1)


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
    triggers = [trigger] if isinstance(trigger, str) else list(trigger)
    if not triggers:
        raise ValueError("insert_words needs at least one trigger")
    if position not in ("interior", "any"):
        raise ValueError(f"position must be interior or any; got {position!r}")
    words = text.split()
    for _ in range(count):
        # One trigger: draw nothing for the choice, so positions match a single-trigger run.
        chosen = triggers[0] if len(triggers) == 1 else rng.choice(triggers)
        words.insert(_slot(len(words), position, rng), chosen)
    return " ".join(words)


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
            raise UserError(f"attack.triggers must be non-empty strings; got {bad!r}")
        # Single spaces inside a sentence trigger, so it reads back token for token.
        self.triggers = [" ".join(t.split()) for t in triggers]

    def apply(self, example: Example, split: str, rng: random.Random) -> str | None:
        """The clean text with the trigger(s) inserted; every row has a triggered version."""
        return insert_words(example.text, self.triggers, self.cfg.num_insertions,
                            self.cfg.position, rng)
