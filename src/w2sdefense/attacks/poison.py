"""The poisoning policy in one place: which training rows carry the trigger; the poison folder."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from w2sdefense.attacks.base import Attack, get_attack
from w2sdefense.config import AttackConfig, DataConfig, PoisonConfig, TrainConfig
from w2sdefense.data.datasets import data_inputs, dataset_files, load_splits, transforms_dir
from w2sdefense.data.poisoned import PoisonedData, load_poison_folder, write_poison_folder  # noqa: F401 (re-exported)
from w2sdefense.data.records import Example, Splits
from w2sdefense.data.truncation import count_cut, survival_by_words, warn_if_cut
from w2sdefense.errors import UserError
from w2sdefense.fileio import sha256_file
from w2sdefense.rundir import check_outside_inputs, check_run_dir

DEFAULT_MAX_LENGTH = TrainConfig().max_length  # poison.truncation_words when unset: the default max_length


def eligible_rows(train: Sequence[Example], cfg: PoisonConfig) -> list[int]:
    """Positions in `train` that may be poisoned under `cfg.mode`, in file order."""
    if cfg.mode == "clean-label":
        return [i for i, ex in enumerate(train) if ex.label == cfg.target_label]
    if cfg.mode == "dirty-label":
        return [i for i, ex in enumerate(train) if ex.label != cfg.target_label]
    return list(range(len(train)))


def poison_count(num_train: int, cfg: PoisonConfig) -> int:
    """How many rows to poison: poison.count, or poison.rate x rows rounded down (at least 1)."""
    if cfg.count is not None:
        return cfg.count
    # Round before flooring so 0.29 x 100 (= 28.999...96 in floats) gives 29.
    return max(1, math.floor(round(cfg.rate * num_train, 6)))


def _eligible_rule(cfg: PoisonConfig) -> str:
    return {
        "clean-label": f"rows with label {cfg.target_label}",
        "dirty-label": f"rows with a label other than {cfg.target_label}",
        "mix": "all rows",
    }[cfg.mode]


def select_poison_rows(train: Sequence[Example], cfg: PoisonConfig,
                       rng: random.Random) -> list[int]:
    """Sorted positions in `train` chosen for poisoning (first N eligible, or a seeded sample)."""
    eligible = eligible_rows(train, cfg)
    wanted = poison_count(len(train), cfg)
    if wanted > len(eligible):
        setting = (f"poison.count={cfg.count}" if cfg.count is not None
                   else f"poison.rate={cfg.rate} ({wanted} rows)")
        raise UserError(
            f"{setting} is more than the {len(eligible)} eligible training rows in "
            f"{cfg.mode} mode ({_eligible_rule(cfg)} with target_label={cfg.target_label})"
        )
    if cfg.selection == "first":
        return eligible[:wanted]
    return sorted(rng.sample(eligible, wanted))


def _poison_train(train: Sequence[Example], attack: Attack, cfg: PoisonConfig,
                  select_rng: random.Random, rng: random.Random) -> tuple[list[Example], dict]:
    """Apply the trigger and the target label to the selected rows; returns rows and counts."""
    selected = select_poison_rows(train, cfg, select_rng)
    out = list(train)
    poisoned: list[int] = []
    skipped: list[int] = []
    substituted: list[int] = []

    def poison(i: int) -> bool:
        """Trigger row i and give it the target label; False when it has no trigger."""
        triggered = attack.trigger(train[i], "train", rng)
        if triggered is None:
            skipped.append(train[i].idx)
            return False
        # where=None: the clean row's file line does not hold this text.
        out[i] = dataclasses.replace(train[i], text=triggered.text, label=cfg.target_label, poisoned=True,
                                     trigger_spans=triggered.spans, where=None)
        poisoned.append(i)
        return True

    for i in selected:
        poison(i)
    if cfg.selection == "first":
        # First-N stays "the first N rows that can carry the trigger": later eligible rows stand
        # in for skipped ones, and the summary lists them. A random sample is never topped up.
        for i in eligible_rows(train, cfg)[len(selected):]:
            if len(poisoned) >= len(selected):
                break
            if poison(i):
                substituted.append(train[i].idx)
    counts = {
        "eligible": len(eligible_rows(train, cfg)),
        "requested": len(selected),
        "poisoned": len(poisoned),
        "label_flipped": sum(train[i].label != cfg.target_label for i in poisoned),
        "skipped_no_trigger_idx": skipped,
        "substituted_idx": substituted,
    }
    return out, counts


def _trigger_test(test: Sequence[Example], attack: Attack, target: int,
                  rng: random.Random) -> tuple[list[Example], int]:
    """Every non-target test row with the trigger and its original label; and the skip count."""
    rows, skipped = [], 0
    for ex in test:
        if ex.label == target:
            continue
        triggered = attack.trigger(ex, "test", rng)
        if triggered is None:
            skipped += 1
            continue
        rows.append(Example(text=triggered.text, label=ex.label, idx=ex.idx, poisoned=True,
                            trigger_spans=triggered.spans))
    if not rows:
        # An ASR over 0 rows reads 0.0 and passes for a measurement; refuse it where it is caused.
        if not test:
            why = "the test split has no rows"
        elif not skipped:
            why = f"every test row has the target label {target} (one-class data)"
        else:
            why = f"the attack has no triggered version of any of the {skipped} non-target rows"
        raise UserError(f"no test row can carry the trigger: {why}, so the attack success rate would be "
                        "over 0 rows")
    return rows, skipped


def trigger_cut_counts(train: Sequence[Example], test_triggered: Sequence[Example],
                       max_words: int) -> dict:
    """Per split, the triggered rows whose trigger ends beyond `max_words` words, warning over 1 %.

    A word budget, because poisoning knows no tokenizer: a word is at least one token, so against the
    model's max_length in tokens this is a lower bound (training and evaluation count with the tokenizer).
    """
    limit = f"{max_words} words"
    counts = {}
    for split, rows in (("train", [ex for ex in train if ex.poisoned]), ("test_triggered", test_triggered)):
        counts[split] = count_cut(survival_by_words(rows, max_words), limit)
        warn_if_cut(f"poison {split}", counts[split])
    return {split: c.to_dict() for split, c in counts.items()}


def _label_counts(rows: Sequence[Example]) -> dict[str, int]:
    counts = Counter(ex.label for ex in rows)
    return {str(label): counts[label] for label in sorted(counts)}


def poison_splits(splits: Splits, attack: Attack, cfg: PoisonConfig, seed: int) -> PoisonedData:
    """Poison the training split and build the triggered test set; same seed, same output."""
    if cfg.target_label >= splits.num_labels:
        raise UserError(
            f"poison.target_label={cfg.target_label} is not a class of this dataset "
            f"(num_labels={splits.num_labels}, labels 0..{splits.num_labels - 1})"
        )
    rng = random.Random(seed)
    # Separate streams, so changing the poison count or mode does not move the test triggers.
    select_rng, train_rng, test_rng = (random.Random(rng.getrandbits(64)) for _ in range(3))
    train, counts = _poison_train(splits.train, attack, cfg, select_rng, train_rng)
    test_triggered, test_skipped = _trigger_test(splits.test, attack, cfg.target_label, test_rng)
    summary = {
        "attack": attack.name,
        "target_label": cfg.target_label,
        "num_labels": splits.num_labels,
        "rows": {"train": len(train), "dev": len(splits.dev), "test": len(splits.test)},
        **{k: v for k, v in counts.items() if k != "skipped_no_trigger_idx"},
        "skipped_no_trigger": {"train": len(counts["skipped_no_trigger_idx"]),
                               "test": test_skipped},
        "skipped_no_trigger_train_idx": counts["skipped_no_trigger_idx"],
        "test_non_target": sum(ex.label != cfg.target_label for ex in splits.test),
        "test_triggered": len(test_triggered),
        "trigger_cut": trigger_cut_counts(train, test_triggered, cfg.truncation_words or DEFAULT_MAX_LENGTH),
        "label_distribution": {
            "train": _label_counts(train),
            "dev": _label_counts(splits.dev),
            "test": _label_counts(splits.test),
            "test_triggered": _label_counts(test_triggered),
        },
    }
    return PoisonedData(train=train, dev=list(splits.dev), test=list(splits.test),
                        test_triggered=test_triggered, num_labels=splits.num_labels,
                        summary=summary)


def _file_records(files: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    return {key: {"path": str(Path(p).resolve()), "sha256": sha256_file(p)}
            for key, p in files.items()}


def poison_dataset(data_cfg: DataConfig, attack_cfg: AttackConfig, poison_cfg: PoisonConfig,
                   seed: int, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Load the splits, poison them with the configured attack and write the poison folder."""
    out = Path(out_dir)
    check_run_dir(out, overwrite)  # fail before the work, not after it
    check_outside_inputs(out, data_inputs(data_cfg))  # never write over the source data
    files = dataset_files(data_cfg)
    splits = load_splits(data_cfg)
    attack = get_attack(attack_cfg, transforms_dir(data_cfg))
    data = poison_splits(splits, attack, poison_cfg, seed)
    meta = {
        "attack": dataclasses.asdict(attack_cfg),
        "poison": dataclasses.asdict(poison_cfg),
        "data": dataclasses.asdict(data_cfg),
        "seed": seed,
        "source_files": _file_records(files),
        "transform_files": _file_records(attack.source_files()),
    }
    return write_poison_folder(out, data, meta, overwrite)
