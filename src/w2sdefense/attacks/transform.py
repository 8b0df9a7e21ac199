"""Attacks whose triggered texts are precomputed transforms (paraphrases, style transfer)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar

from w2sdefense.attacks.base import Attack
from w2sdefense.config import AttackConfig
from w2sdefense.data.loading import load_transform
from w2sdefense.data.records import Example
from w2sdefense.errors import UserError


class TransformAttack(Attack):
    """Looks the triggered text up in `<transforms_dir>/<transform>/<split>.jsonl` by row idx."""

    default_transform: ClassVar[str] = ""

    def __init__(self, cfg: AttackConfig, transforms_dir: Path | None = None) -> None:
        super().__init__(cfg, transforms_dir)
        self.transform = cfg.transform or self.default_transform
        self._tables: dict[str, dict[int, str]] = {}
        self._files: dict[str, Path] = {}

    def transform_file(self, split: str) -> Path:
        """The transform file for `split` (it may not exist)."""
        if self.transforms_dir is None:
            raise UserError(
                f"attack {self.name} needs precomputed transforms, but no dataset folder is known: "
                f"set data.dataset to a folder holding transforms/{self.transform}/"
            )
        return self.transforms_dir / self.transform / f"{split}.jsonl"

    def _table(self, split: str) -> dict[int, str]:
        # Loaded per split on first use: a split that is never triggered needs no file.
        if split not in self._tables:
            path = self.transform_file(split)
            if not path.is_file():
                raise UserError(
                    f"attack {self.name}: transform file not found: {path} "
                    f"(attack.transform={self.transform!r})"
                )
            self._tables[split] = load_transform(path)
            self._files[split] = path
        return self._tables[split]

    def apply(self, example: Example, split: str, rng: random.Random) -> str | None:
        """The precomputed transform of this row, or None when the file does not cover it.

        An empty (or whitespace-only) transform counts as none: the transformer produced nothing, and a row
        without text would only fail later, when a model reads it.
        """
        text = self._table(split).get(example.idx)
        return text if text is not None and text.strip() else None

    def source_files(self) -> dict[str, Path]:
        """The transform files read so far, by split."""
        return dict(self._files)
