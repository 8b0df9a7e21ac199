"""Causal language models with their LM head, for defenses that score text fluency (ONION's perplexity).

Any causal LM by name: the packaged `smollm2-135m` (its converted checkpoint keeps the LM head), a local
folder, a hub id, or `tiny-llama` (random weights, for tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedModel

from w2sdefense.errors import UserError
from w2sdefense.progress import progress_bar
from w2sdefense.models.loading import check_model_name, resolve_model_path
from w2sdefense.models.tiny import tiny_llama


@dataclass
class LanguageModel:
    model: PreTrainedModel
    tokenizer: object


def load_language_model(name: str, dtype: torch.dtype = torch.float32) -> LanguageModel:
    """A causal LM (frozen, eval mode) and its tokenizer, with a pad token set."""
    if name == "tiny-llama":
        clf, tok = tiny_llama(2)
        torch.manual_seed(0)  # the same random LM every time
        model = LlamaForCausalLM(clf.config)
    else:
        check_model_name(name)
        path = resolve_model_path(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"could not load the language model {name!r} (a causal LM with its head is needed): "
                            f"{str(exc).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(dtype).eval().requires_grad_(False)
    return LanguageModel(model, tok)


def perplexities(lm: LanguageModel, texts: list[str], batch_size: int, max_length: int,
                 device: torch.device, desc: str | None = None) -> list[float]:
    """exp(mean next-token NLL) of each text (padding excluded), batched by length; inf for < 2 tokens.
    With `desc`, a progress bar over the batches (ONION scores tens of thousands of texts)."""
    model, tok = lm.model.to(device), lm.tokenizer
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    result = [float("inf")] * len(texts)
    with torch.inference_mode():
        for start in progress_bar(range(0, len(order), batch_size), desc=desc, leave=False, disable=desc is None,
                                  unit="batch"):
            chunk = order[start:start + batch_size]
            enc = tok([texts[i] for i in chunk], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length).to(device)
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
            targets, mask = enc["input_ids"][:, 1:], enc["attention_mask"][:, 1:].float()
            if tok.padding_side == "left":  # the first real token of a left-padded row has no prediction
                mask = mask * enc["attention_mask"][:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
            counts = mask.sum(1)
            mean = (nll * mask).sum(1) / counts.clamp(min=1)
            for row, i in enumerate(chunk):
                if counts[row] > 0:
                    result[i] = float(torch.exp(mean[row]))
    return result
