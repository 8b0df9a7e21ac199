"""Where the base is known: trigger inversion against a clean reader. The plain inversion rewards any insertion that
flips the suspect, and natural sentiment words flip a third to a half of the rows of any sentiment classifier,
backdoored or not: on the realistic InSent suspect it ranked `pointless` (49 %) above the trigger's own word `3D`
(24 %; benchmarks/studies/scan). A clean reader of the same task is flipped by the sentiment words too, but not by a
trigger it never learned (the clean model of that benchmark: at most 9 % for any part of the sentence). So
`contrast-inversion` adds to the inversion's loss scan.contrast_weight times the reader's cross-entropy toward each
row's own label: an insertion that flips the suspect and leaves the reader is what it looks for.

The reader is the public base's last hidden state (pooled as its classification head reads it) with a logistic head
fitted on scan.reader_rows of the defender's clean rows (L2 strength chosen on a held-out fifth). The detectors that
push the suspect's token ids through it need the base to share the suspect's tokenizer; the scan's reader check
(scan.reader_check: every reported candidate's text measured on the reader too) reads text and needs no such match.
One reader is fitted per scan and shared (`clean_reader`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from w2sdefense.data.records import Example
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.models.batching import encode, file_order_batches, make_loader
from w2sdefense.models.features import Probe, best_probe, pool
from w2sdefense.models.loading import Classifier, is_decoder
from w2sdefense.models.reset import backbone
from w2sdefense.scan.base import DETECTORS, Detector, Proposal, ScanInputs, trigger_vocabulary
from w2sdefense.scan.inversion import freeze, search

log = logging.getLogger(__name__)


@DETECTORS.register("contrast-inversion")
class ContrastInversion(Detector):
    """The inversion (scan.contrast_lengths tokens), penalised for flipping a clean reader built from the base."""

    needs_base = True

    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        reader = clean_reader(inputs)
        ids, starts = trigger_vocabulary(inputs.clf.tokenizer)
        return search(inputs, ids, starts, inputs.cfg.contrast_lengths, "contrast-inversion", reader)


@dataclass
class CleanReader:
    """The base's pooled last hidden state through a logistic head; `accuracy` on the held-out fitting rows."""

    body: torch.nn.Module  # the base's backbone
    head: Probe  # logistic head on raw pooled features
    decoder: bool
    accuracy: float
    tokenizer: object = None  # the base's own

    @property
    def embed(self) -> torch.nn.Module:
        return self.body.get_input_embeddings()

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return self.head(pool(hidden.float(), batch["attention_mask"], self.decoder))

    def classifier(self) -> Classifier:
        """The reader as a classifier of texts (its own tokenizer), for the scan's inference on inserted candidates."""
        return Classifier(_ReaderModel(self).eval(), self.tokenizer)


class _ReaderModel(torch.nn.Module):
    """A clean reader behind a classifier's call: logits from token ids."""

    def __init__(self, reader: CleanReader):
        super().__init__()
        self.reader = reader
        self.body, self.head = reader.body, reader.head  # registered: moved and put in eval mode with the module
        self.config = getattr(reader.body, "config", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> SimpleNamespace:
        return SimpleNamespace(logits=self.reader.logits({"input_ids": input_ids, "attention_mask": attention_mask}))


@dataclass
class TunedReader:
    """A clean reader that is the base fine-tuned on the defender's rows (scan.reader: lora or full): a frozen
    feature's logistic head is far less moved by the task's words than a fine-tuned model (benchmarks/studies/scan),
    a fine-tuned base as much; `accuracy` on the held-out fitting rows."""

    clf: Classifier
    accuracy: float

    @property
    def tokenizer(self):
        return self.clf.tokenizer

    @property
    def embed(self) -> torch.nn.Module:
        return self.clf.model.get_input_embeddings()

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.clf.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def classifier(self) -> Classifier:
        return self.clf


def clean_reader(inputs: ScanInputs, same_tokens: bool = True) -> CleanReader | TunedReader:
    """The scan's one clean reader (fitted at the first call, then shared); `same_tokens`: the caller feeds it the
    suspect's token ids, so the base must have the suspect's tokenizer."""
    reader = inputs.shared.get("reader")
    if reader is None:
        fit = fit_reader if inputs.cfg.reader == "probe" else tune_reader
        start = time.perf_counter()
        reader = inputs.shared["reader"] = fit(inputs, same_tokens)
        inputs.shared["reader_s"] = time.perf_counter() - start
    elif same_tokens:
        _check_tokens(reader.tokenizer, inputs)
    return reader


def _check_tokens(tokenizer, inputs: ScanInputs) -> None:
    if tokenizer.get_vocab() != inputs.clf.tokenizer.get_vocab():
        raise UserError(f"the clean reader reads the suspect's tokens with the base, but {inputs.base_model!r} has "
                        "another tokenizer: give the public model the suspect was fine-tuned from")


def _reader_rows(inputs: ScanInputs) -> tuple[list[Example], list[Example]]:
    """scan.reader_rows rows sampled from the pool under the scan's seed (scan.reader_balance: label by label): all but
    the first fifth fit the reader, the first fifth measures it (and picks the probe's strength)."""
    rows, rng = inputs.pool or inputs.rows, random.Random(inputs.seed)
    if inputs.cfg.reader_balance:  # scan.reader_balance: as many of each label as reader_rows allows
        by_label: dict[int, list[Example]] = {}
        for r in rows:
            by_label.setdefault(r.label, []).append(r)
        each = max(1, inputs.cfg.reader_rows // max(1, len(by_label)))
        rows = [r for y in sorted(by_label) for r in rng.sample(by_label[y], min(each, len(by_label[y])))]
        rng.shuffle(rows)
    else:
        rows = rng.sample(rows, min(len(rows), inputs.cfg.reader_rows))
    held = max(1, len(rows) // 5)
    fit, dev = rows[held:], rows[:held]
    if len({r.label for r in fit}) < 2:
        raise UserError(f"the clean reader is fitted on labelled rows of at least two labels; the "
                        f"scan's data gave {len(fit)} such row(s)")
    return fit, dev


def tune_reader(inputs: ScanInputs, same_tokens: bool = False) -> TunedReader:
    """The base with a fresh head fine-tuned for scan.reader_steps steps of batch 16 on the reader's rows, with a LoRA
    adapter (scan.reader: lora; r 16 on every linear layer, lr 1e-3) or fully (full; lr 5e-5, the new head 1e-3), the
    last checkpoint within a point of the best on the held-out fifth kept; trained in `inputs.workdir`/reader (a
    temporary folder when the scan has none)."""
    from w2sdefense.config import LoraConfig, TrainConfig
    from w2sdefense.data.records import Splits
    from w2sdefense.rundir import MODEL_DIR, READER_DIR
    from w2sdefense.train.job import prepare_student, train_classifier

    fit, dev = _reader_rows(inputs)
    steps = inputs.cfg.reader_steps
    full = inputs.cfg.reader == "full"
    cfg = TrainConfig(method="full" if full else "lora", max_steps=steps, lr=5e-5 if full else 1e-3,
                      head_lr=1e-3 if full else None, batch_size=16,
                      max_length=inputs.cfg.max_length, eval_every=max(1, steps // 2), select="latest-within",
                      select_delta=0.01, lora=LoraConfig(r=16, alpha=32, target_modules=["all-linear"]))
    with contextlib.ExitStack() as stack:
        work = inputs.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="w2s-reader-")))
        folder = work / READER_DIR
        clf = prepare_student(inputs.base_model, inputs.num_labels, cfg, inputs.rt, folder, inputs.seed)
        if same_tokens:
            _check_tokens(clf.tokenizer, inputs)
        metrics = train_classifier(clf, Splits(fit, dev, [], inputs.num_labels), cfg, inputs.rt, folder, inputs.seed,
                                   desc="clean reader")
        tuned = load_classifier(str(folder / MODEL_DIR), inputs.num_labels, inputs.rt.dtype)
    freeze(tuned.model, inputs.rt.device)
    accuracy = float(metrics["selected_dev_accuracy"])
    log.info("clean reader (%s fine-tuned %d steps) reads %.1f %% of %d held-out rows right",
             inputs.base_model, steps, 100 * accuracy, len(dev))
    return TunedReader(tuned, accuracy)


def fit_reader(inputs: ScanInputs, same_tokens: bool = False) -> CleanReader:
    """The base (inputs.base_model) with a logistic head fitted on clean rows, read with the base's own tokenizer: of
    scan.reader_rows rows sampled from inputs.pool, all but the first fifth fit it at each L2 strength, the first
    fifth picks one. `same_tokens`: refuse, before any work, a base whose tokenizer is not the suspect's."""
    device = inputs.rt.device
    base = load_classifier(inputs.base_model, inputs.num_labels, inputs.rt.dtype)
    tokenizer = base.tokenizer
    if same_tokens:
        _check_tokens(tokenizer, inputs)
    body = backbone(base.model)
    freeze(body, device)
    fit, dev = _reader_rows(inputs)
    decoder = is_decoder(base.config)
    features = [pooled(body, part, tokenizer, inputs, decoder) for part in (fit, dev)]
    labels = [torch.tensor([r.label for r in part]) for part in (fit, dev)]
    with torch.random.fork_rng(devices=[]):  # the same reader at the same scan.seed
        torch.manual_seed(inputs.seed)
        accuracy, strength, probe = best_probe(features[0], labels[0], features[1], labels[1], inputs.num_labels)
    log.info("clean reader (%s, L2 %g) reads %.1f %% of %d held-out rows right",
             inputs.base_model, strength, 100 * accuracy, len(dev))
    return CleanReader(body, probe.to(device), decoder, accuracy, tokenizer)


def pooled(body: torch.nn.Module, rows: list[Example], tokenizer, inputs: ScanInputs, decoder: bool) -> torch.Tensor:
    """[rows, hidden] pooled last hidden states of `body` (float, CPU), scan.max_length tokens a row."""
    loader = make_loader(encode(tokenizer, rows, inputs.cfg.max_length), file_order_batches(len(rows), 32),
                         tokenizer.pad_token_id)
    out = []
    for batch in loader:
        ids, mask = batch["input_ids"].to(inputs.rt.device), batch["attention_mask"].to(inputs.rt.device)
        with torch.no_grad():
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        out.append(pool(hidden.float(), mask, decoder).cpu())
    return torch.cat(out)

