"""Length-grouped batching: coverage, determinism, padding saved; collation and encoding."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from w2sdefense.data.records import Example
from w2sdefense.models.tiny import byte_tokenizer
from w2sdefense.models.batching import (
    Encoded,
    LengthGroupedBatches,
    encode,
    file_order_batches,
    make_collate,
    make_loader,
    sorted_batches,
)


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


def _padding(batches: list[list[int]], lengths: list[int]) -> int:
    """Pad tokens when each batch is padded to its own longest row."""
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def _epoch(sampler: LengthGroupedBatches, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def _tokenizer():
    return byte_tokenizer(["<pad>", "<s>", "</s>"], pad_token="<pad>", bos_token="<s>", eos_token="</s>")


# ------------------------------------------------------------------------------------------------
# LengthGroupedBatches


@pytest.mark.parametrize("n, batch_size, group", [(500, 16, 50), (103, 8, 3), (7, 16, 50), (1, 1, 1)])
def test_every_index_once_per_epoch(n: int, batch_size: int, group: int) -> None:
    sampler = LengthGroupedBatches(_lengths(n), batch_size, seed=1, group=group)
    for epoch in range(3):
        batches = _epoch(sampler, epoch)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert len(batches) == len(sampler) == -(-n // batch_size)
        assert all(1 <= len(b) <= batch_size for b in batches)


def test_len_counts_batches() -> None:
    assert len(LengthGroupedBatches(_lengths(33), 8, seed=0, group=2)) == 5
    assert len(LengthGroupedBatches(_lengths(32), 8, seed=0)) == 4


def test_same_seed_and_epoch_same_batches() -> None:
    lengths = _lengths(300)
    a = LengthGroupedBatches(lengths, 16, seed=5, group=4)
    b = LengthGroupedBatches(lengths, 16, seed=5, group=4)
    assert _epoch(a, 2) == _epoch(b, 2)
    assert _epoch(a, 2) == _epoch(a, 2)  # iterating again replays the epoch


def test_different_epoch_or_seed_changes_order() -> None:
    lengths = _lengths(300)
    sampler = LengthGroupedBatches(lengths, 16, seed=5, group=4)
    assert _epoch(sampler, 0) != _epoch(sampler, 1)
    assert _epoch(sampler, 0) != _epoch(LengthGroupedBatches(lengths, 16, seed=6, group=4), 0)


def test_batches_sorted_descending_inside() -> None:
    lengths = _lengths(400, seed=3)
    for batch in _epoch(LengthGroupedBatches(lengths, 16, seed=0, group=5), 0):
        inside = [lengths[i] for i in batch]
        assert inside == sorted(inside, reverse=True)


def test_grouping_at_least_halves_padding() -> None:
    lengths = _lengths(500, seed=4)
    file_order = _padding(file_order_batches(len(lengths), 16), lengths)
    for group in (50, 5):  # one mega-batch covering all rows, and several small ones
        grouped = _padding(_epoch(LengthGroupedBatches(lengths, 16, seed=0, group=group), 0), lengths)
        assert 2 * grouped <= file_order, (group, grouped, file_order)


def test_grouped_batches_are_not_file_order() -> None:
    lengths = _lengths(200, seed=2)
    batches = _epoch(LengthGroupedBatches(lengths, 10, seed=0, group=2), 0)
    assert batches != file_order_batches(200, 10)
    # The batches themselves are shuffled: not in descending order of their longest row.
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest, reverse=True)


# ------------------------------------------------------------------------------------------------
# sorted_batches / file_order_batches


def test_sorted_batches_cover_all_longest_first() -> None:
    lengths = [3, 9, 1, 9, 4, 7, 2]
    batches = sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(7))
    flat_lengths = [lengths[i] for b in batches for i in b]
    assert flat_lengths == [9, 9, 7, 4, 3, 2, 1]
    assert sorted_batches([], 4) == []


def test_file_order_batches() -> None:
    assert file_order_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert file_order_batches(0, 2) == []


# ------------------------------------------------------------------------------------------------
# collate and loader


def test_collate_pads_right_with_pad_id() -> None:
    collate = make_collate(pad_id=7)
    rows = [
        {"input_ids": [1, 2], "label": 1, "position": 4},
        {"input_ids": [3, 4, 5, 6], "label": 0, "position": 0},
        {"input_ids": [8], "label": 1, "position": 9},
    ]
    out = collate(rows)
    assert out["input_ids"].tolist() == [[1, 2, 7, 7], [3, 4, 5, 6], [8, 7, 7, 7]]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert out["labels"].tolist() == [1, 0, 1]
    assert out["position"].tolist() == [4, 0, 9]
    assert all(t.dtype == torch.long for t in out.values())


def test_collate_pad_id_equal_to_a_real_token_is_masked_by_length() -> None:
    out = make_collate(pad_id=0)([{"input_ids": [0, 5], "label": 0, "position": 0},
                                  {"input_ids": [5, 5, 5], "label": 1, "position": 1}])
    assert out["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_loader_positions_are_dataset_indices() -> None:
    ids = [[i] * (1 + i % 5) for i in range(23)]  # token value = index, so rows are recognisable
    encoded = Encoded(input_ids=ids, labels=[i % 2 for i in range(23)])
    sampler = LengthGroupedBatches(encoded.lengths, 4, seed=0, group=2)
    seen = []
    for batch, indices in zip(make_loader(encoded, sampler, pad_id=99), _epoch(sampler, 0)):
        assert batch["position"].tolist() == indices
        for row, i in enumerate(indices):
            n = len(ids[i])
            assert batch["input_ids"][row, :n].tolist() == ids[i]
            assert batch["attention_mask"][row].sum().item() == n
            assert batch["labels"][row].item() == i % 2
        seen += indices
    assert sorted(seen) == list(range(23))


# ------------------------------------------------------------------------------------------------
# encode


def test_encode_bytes_and_truncation() -> None:
    tok = _tokenizer()
    examples = [Example("hello world", 1, 0), Example("hi", 0, 1), Example("héllo", 1, 2)]
    full = encode(tok, examples, max_length=64)
    assert full.lengths == [11, 2, 6]  # one token per UTF-8 byte; é is two bytes
    assert full.labels == [1, 0, 1] and len(full) == 3
    short = encode(tok, examples, max_length=5)
    assert short.lengths == [5, 2, 5]
    assert short.input_ids[0] == full.input_ids[0][:5]
    assert tok.decode(short.input_ids[0]) == "hello"
    assert short.input_ids[1] == full.input_ids[1]


def test_encode_with_specials_keeps_them_when_truncating() -> None:
    tok = byte_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pad_token="[PAD]",
                         unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    out = encode(tok, [Example("abcdefgh", 0, 0)], max_length=5)
    assert out.lengths == [5]
    assert out.input_ids[0][0] == tok.cls_token_id and out.input_ids[0][-1] == tok.sep_token_id
    assert tok.decode(out.input_ids[0][1:-1]) == "abc"


def test_encode_empty() -> None:
    out = encode(_tokenizer(), [], max_length=8)
    assert out.input_ids == [] and out.labels == [] and len(out) == 0


def test_a_row_without_tokens_is_named_by_its_file_and_line(tmp_path) -> None:
    from w2sdefense.data.loading import load_examples
    from w2sdefense.errors import UserError

    path = tmp_path / "test_triggered.jsonl"  # idx 251 on line 2: the message must say line 2, not row 252
    path.write_text(json.dumps({"idx": 7, "text": "ok", "label": 1}) + "\n"
                    + json.dumps({"idx": 251, "text": "", "label": 1}) + "\n")
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))} line 2: the text gives no tokens"):
        encode(_tokenizer(), load_examples(path), max_length=8)
    with pytest.raises(UserError, match=r"^the row with idx 3: the text gives no tokens"):
        encode(_tokenizer(), [Example("", 0, 3)], max_length=8)  # a row made in code has no file
