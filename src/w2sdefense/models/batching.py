"""Tokenise once, group examples of similar length into batches, pad only to the batch's longest."""

from __future__ import annotations

import hashlib
import logging
import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from w2sdefense.data.records import Example
from w2sdefense.errors import UserError, shown
from w2sdefense.models.truncation import effective_max_length

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """A tokenised split: token ids per example (unpadded), labels and identities, in the split's order."""

    input_ids: list[list[int]]
    labels: list[int]
    ids: list[int] | None = None  # each example's identity (`Example.idx`); None: its position

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        """Token count of each example."""
        return [len(ids) for ids in self.input_ids]

    def head(self, n: int) -> Encoded:
        """The first `n` examples."""
        return Encoded(self.input_ids[:n], self.labels[:n], self.ids[:n] if self.ids is not None else None)


_ENCODED: OrderedDict[tuple, list[list[int]]] = OrderedDict()
_ENCODED_KEEP = 16  # splits remembered per process (a few MB each)
_WARNED: set[tuple[int, int]] = set()  # (asked, allowed) max_lengths already warned about


def _fingerprint(tokenizer) -> str:
    """A digest of the tokenizer's full definition (vocabulary, rules, special tokens)."""
    cached = getattr(tokenizer, "_w2s_fingerprint", None)
    if cached is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
        cached = hashlib.sha256(f"{text}|{tokenizer.padding_side}|{tokenizer.truncation_side}".encode()).hexdigest()
        tokenizer._w2s_fingerprint = cached
    return cached


def encode(tokenizer, examples: Sequence[Example], max_length: int) -> Encoded:
    """Tokenise texts (truncated to max_length, unpadded); a split seen before is not re-tokenised.

    Stages of one `run` share tokenizers and splits (every defense reads the same clean train
    split with the student's tokenizer), so the token ids are remembered per process. A max_length
    beyond the model's positions (tokenizer.model_max_length, see models.loading.limit_length) is cut
    to them with a warning, as the HF example scripts do.
    """
    allowed = effective_max_length(tokenizer, max_length)
    if allowed < max_length:
        if (max_length, allowed) not in _WARNED:
            _WARNED.add((max_length, allowed))
            log.warning("max_length=%d is more than the model's %d positions: using max_length=%d", max_length,
                        allowed, allowed)
        max_length = allowed
    texts = tuple(ex.text for ex in examples)
    key = (_fingerprint(tokenizer), max_length, texts)
    if key not in _ENCODED:
        ids = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"] if texts else []
        empty = next((ex for ex, row in zip(examples, ids) if not row), None)
        if empty is not None:  # a decoder has no token to pool (and a batch of them no width at all)
            raise UserError(f"{empty.located()}: the text gives no tokens (it is {shown(empty.text)}); "
                            "give the row a text or remove it")
        _ENCODED[key] = [list(row) for row in ids]
        while len(_ENCODED) > _ENCODED_KEEP:
            _ENCODED.popitem(last=False)
    _ENCODED.move_to_end(key)
    return Encoded(input_ids=_ENCODED[key], labels=[ex.label for ex in examples], ids=[ex.idx for ex in examples])


class _EncodedDataset(Dataset):
    def __init__(self, encoded: Encoded) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict:
        ids = self.encoded.ids
        return {"input_ids": self.encoded.input_ids[i], "label": self.encoded.labels[i], "position": i,
                "example_id": ids[i] if ids is not None else i}


class LengthGroupedBatches:
    """Shuffled batches of similar-length examples; a new order each epoch, fixed by (seed, epoch).

    Examples are shuffled, cut into mega-batches of `group` batches, sorted by length inside each
    mega-batch and cut into batches; the batches are then shuffled, so training order stays random
    while padding stays small.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.group = list(lengths), batch_size, seed, group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose order to produce."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches: longest first (memory peaks early), each padded to its own longest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def file_order_batches(n: int, batch_size: int) -> list[list[int]]:
    """Batches in file order (what a straightforward loop does)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


class ShardedBatches:
    """This process's share of each global batch: every `num_processes`-th example of it.

    All processes walk the same global batches in the same order, so one process and N processes
    take the same optimizer steps over the same examples (gradients are averaged by DDP). Strided
    shares keep the processes' padded lengths alike. A global batch smaller than the process count
    gives the processes without a share its first example again.
    """

    def __init__(self, batches, process_index: int = 0, num_processes: int = 1) -> None:
        self.batches, self.index, self.count = batches, process_index, num_processes

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.index::self.count] or batch[:1]


def make_collate(pad_id: int):
    """Collate dict rows into padded tensors (right padding to the longest row of the batch)."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"], dtype=torch.long)
            mask[i, : len(row["input_ids"])] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
            "position": torch.tensor([r["position"] for r in rows], dtype=torch.long),
            "example_id": torch.tensor([r.get("example_id", r["position"]) for r in rows], dtype=torch.long),
        }

    return collate


def make_loader(encoded: Encoded, batch_sampler, pad_id: int) -> DataLoader:
    """A DataLoader over an encoded split with the given batch sampler (list or sampler object)."""
    return DataLoader(_EncodedDataset(encoded), batch_sampler=batch_sampler, collate_fn=make_collate(pad_id))


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys a transformers model's forward takes."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
