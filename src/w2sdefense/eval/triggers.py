"""A candidate trigger's ASR-cc toward each label when the target is unknown (`clean`, `scan`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from w2sdefense.config import DataConfig
from w2sdefense.data.datasets import transforms_dir
from w2sdefense.data.loading import load_transform
from w2sdefense.errors import UserError, shown
from w2sdefense.eval.metrics import backdoor_metrics
from w2sdefense.results import TRANSFORM, LabelMeasure, TriggerMeasure


def transform_file(data: DataConfig, name: str, split: str) -> Path | None:
    """`<data>/transforms/<name>/<split>.jsonl`, the file `poison` reads (None: no dataset folder is known)."""
    folder = transforms_dir(data)
    return None if folder is None else folder / name / f"{split}.jsonl"


def transform_table(data: DataConfig, trigger: str, split: str) -> dict[int, str]:
    """The paraphrases a `transform:NAME` candidate stands for on `split` ({row idx: text}); refused in one line
    where the data has none."""
    name = trigger.removeprefix(TRANSFORM)
    path = transform_file(data, name, split)
    if path is None or not path.is_file():
        where = "no dataset folder is known" if path is None else f"{path} not found"
        raise UserError(f"{trigger}: a paraphrase transform of the {split} rows, but {where} (one {{idx, text}} row "
                        "each, idx the row's number in the split file, as `poison` reads them)")
    return load_transform(path)


def measure_toward(trigger: str, clean: torch.Tensor, labels: Sequence[int], idx: Sequence[int],
                   logits: torch.Tensor, targets: Iterable[int], trig_labels: Sequence[int] | None = None,
                   trig_idx: Sequence[int] | None = None) -> TriggerMeasure:
    """ASR-cc of `trigger` toward each of `targets` (over the rows of other labels whose clean version is classified
    correctly), and the highest with its label. `logits` are of the triggered rows, in the order of `labels`; or, with
    `trig_labels` and `trig_idx`, of triggered copies of some of the rows (a transform that covers only some)."""
    trig_labels = labels if trig_labels is None else trig_labels
    trig_idx = idx if trig_idx is None else trig_idx
    by_label = {}
    for target in targets:
        keep = [i for i, y in enumerate(trig_labels) if y != target]
        m = backdoor_metrics(clean, labels, idx, logits[keep], [trig_idx[i] for i in keep], target,
                             what=f"ASR-cc of trigger {shown(trigger)} toward label {target}")
        by_label[str(target)] = LabelMeasure(m.attack_success_rate_clean_correct, m.triggered_clean_correct_total)
    # An ASR-cc over no row (no correct clean prediction of another label) is no number: never the highest.
    top = max(by_label, key=lambda k: -1.0 if by_label[k].asr_cc is None else by_label[k].asr_cc)
    return TriggerMeasure(trigger, by_label[top].asr_cc, int(top), by_label)
