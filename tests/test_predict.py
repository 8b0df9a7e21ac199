"""The one inference loop (models/predict.py): every row once, in input order, as a row-by-row forward gives."""

from __future__ import annotations

import torch

from w2sdefense.data.records import Example
from w2sdefense.models import load_classifier
from w2sdefense.models.batching import encode
from w2sdefense.models.predict import classify_rows, run_inference

TEXTS = ["good", "a dull and weak film", "fine fun", "awful", "the plot is great and the cast is lovely", "bad bad"]


def _rows() -> list[Example]:
    return [Example(text=t, label=i % 2, idx=i) for i, t in enumerate(TEXTS)]


def test_logits_are_the_row_by_row_forward_in_input_order_and_the_mode_is_kept(rt):
    clf = load_classifier("tiny-bert", 2)
    clf.model.train()  # dropout on: inference must switch it off, then put the mode back
    logits = classify_rows(clf, _rows(), 32, 4, rt)  # length-sorted batches of 4 and 2, padded
    assert clf.model.training
    clf.model.eval()
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            ids = clf.tokenizer(text, truncation=True, max_length=32)["input_ids"]
            one = clf.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            assert torch.allclose(logits[i], one.logits[0].float(), atol=1e-5), text


def test_run_inference_visits_every_row_once_with_gradients_off(rt):
    clf = load_classifier("tiny-bert", 2)
    encoded = encode(clf.tokenizer, _rows(), 32)
    seen, grads = [], []

    def visit(inputs: dict, positions: torch.Tensor) -> None:
        seen.extend(positions.tolist())
        grads.append(torch.is_grad_enabled())
        assert inputs["input_ids"].shape[0] == len(positions)

    run_inference(clf.model, encoded, clf.tokenizer.pad_token_id, 4, rt, visit)
    assert sorted(seen) == list(range(len(TEXTS))) and grads == [False, False]


def test_non_finite_outputs_are_one_clear_error_not_a_lost_rows_claim(rt):
    import pytest
    import torch

    from w2sdefense.data.records import Example
    from w2sdefense.errors import UserError
    from w2sdefense.models import Classifier
    from w2sdefense.models.predict import classify_rows
    from w2sdefense.models.tiny import build_tiny

    model, tok = build_tiny("tiny-llama", 2)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    rows = [Example("a fine text", 1, i) for i in range(5)]
    with pytest.raises(UserError, match="not finite .* on 5 of 5 rows"):
        classify_rows(Classifier(model, tok), rows, 16, 4, rt)
