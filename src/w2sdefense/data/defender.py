"""The defender's own clean data in the realistic protocol: rows the attacker never saw.

The attacker trains on the first `data.max_train` rows of the train split. The rows past them are cut into
two disjoint pools, the first half for labelled rows and the second for unlabelled texts; the defender gets a
seeded draw of `rows` from the first and `unlabelled` from the second. Rows keep their place in the full train
file as `idx`, so a row's identity is the same in every draw and never collides with an attacker row.
"""

from __future__ import annotations

import dataclasses
import random

from w2sdefense.config import DataConfig, DefenderConfig
from w2sdefense.data.datasets import load_splits
from w2sdefense.data.records import UNLABELLED, Example, Splits
from w2sdefense.errors import UserError


@dataclasses.dataclass(frozen=True)
class Pools:
    """The train rows past the attacker's, cut in two: labelled candidates, then unlabelled candidates."""

    labelled: list[Example]
    unlabelled: list[Example]


def defender_pools(full_train: list[Example], attacker_rows: int) -> Pools:
    """The two pools of rows the attacker never saw (its rows are the first `attacker_rows`)."""
    rest = full_train[attacker_rows:]
    half = (len(rest) + 1) // 2
    return Pools(labelled=rest[:half], unlabelled=rest[half:])


def draw_defender_rows(pools: Pools, cfg: DefenderConfig, seed: int) -> tuple[list[Example], list[Example]]:
    """`cfg.rows` labelled rows and `cfg.unlabelled` texts (labels removed), each a seeded draw from its pool."""
    for what, want, pool in (("defender.rows", cfg.rows, pools.labelled),
                             ("defender.unlabelled", cfg.unlabelled, pools.unlabelled)):
        if want and want > len(pool):
            raise UserError(f"{what}={want} is more than the {len(pool)} rows of its pool (the train rows past "
                            "data.max_train, cut in half: labelled first, unlabelled second); lower it or "
                            "data.max_train")
    rng = random.Random(seed)
    labelled = sorted(rng.sample(pools.labelled, cfg.rows or 0), key=lambda e: e.idx)
    texts = sorted(random.Random(seed + 1).sample(pools.unlabelled, cfg.unlabelled), key=lambda e: e.idx)
    return labelled, [dataclasses.replace(e, label=UNLABELLED) for e in texts]


def defender_splits(data: DataConfig, cfg: DefenderConfig, seed: int, attacker: Splits) -> Splits:
    """The splits the defender trains on: the attacker's own (`cfg.rows` unset) or its own draw."""
    if cfg.rows is None:
        return attacker
    if data.max_train is None:
        raise UserError("defender.rows needs data.max_train: the attacker's rows are the first data.max_train "
                        "train rows, the defender's are drawn from the rest")
    full = load_splits(dataclasses.replace(data, max_train=None))
    labelled, texts = draw_defender_rows(defender_pools(full.train, data.max_train), cfg,
                                         seed if cfg.seed is None else cfg.seed)
    return dataclasses.replace(attacker, train=labelled, unlabelled=texts)
