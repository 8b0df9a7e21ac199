"""`w2sdefense train`: fine-tune a classifier (full or LoRA) on a dataset or poisoned folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from peft import PeftModel
from transformers import set_seed

from w2sdefense.config import TrainConfig
from w2sdefense.data.records import Example, Splits
from w2sdefense.models import (
    Classifier,
    count_parameters,
    ensure_base_on_disk,
    load_classifier,
    merge_adapter,
    wrap_lora,
)
from w2sdefense.results import TrainingResult, write_result
from w2sdefense.rundir import BASE_DIR, MERGED_DIR, METRICS_FILE, MODEL_DIR
from w2sdefense.runtime import Runtime
from w2sdefense.models.batching import encode
from w2sdefense.models.truncation import cut_by_tokens
from w2sdefense.train.loop import Diagnose, FitTask, LossFn, cross_entropy_step, fit

# Given the model's tokenizer, the per-evaluation diagnostic (see eval/probe.py).
Diagnostics = Callable[[object], Diagnose]

log = logging.getLogger(__name__)


def prepare_student(model_name: str, num_labels: int, cfg: TrainConfig, rt: Runtime, out_dir: Path,
                    seed: int, modify: Callable[[Classifier], None] | None = None) -> Classifier:
    """Load the model and, for LoRA, wrap it with a fresh adapter (its base saved if built in code).

    The seed is set here, right before anything random is drawn (a new head, the adapter's
    initialisation), so every defense that builds the same student gets the same starting weights
    whatever it ran before (NAD trains its self-teacher first; W2SDefense builds the student before
    loading its teacher, and fit() seeds again for the loop). `modify` changes the loaded weights in
    place before any adapter (fine-pruning's surgery, a reset toward the base); the changed model is
    then the base.
    """
    set_seed(seed)
    clf = load_classifier(model_name, num_labels, rt.dtype)
    if isinstance(clf.model, PeftModel):
        # A LoRA-trained model (e.g. a LoRA-poisoned victim) is folded into plain weights first; the
        # fresh adapter's base is then that merged model, saved below, not the original base.
        clf = Classifier(clf.model.merge_and_unload(), clf.tokenizer)
        clf.model.config._name_or_path = ""
    if modify is not None:
        modify(clf)
        clf.model.config._name_or_path = ""  # no longer the weights on disk: a LoRA base is saved anew
        set_seed(seed)  # the adapter starts as it would without the surgery
    if rt.gradient_checkpointing:
        # Non-reentrant checkpointing also works when the embeddings are frozen (LoRA).
        clf.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "lora":
        ensure_base_on_disk(clf, out_dir / BASE_DIR, write=rt.is_main)
        clf = wrap_lora(clf, cfg.lora)
    if cfg.method == "full":
        for param in clf.model.parameters():
            param.requires_grad_(True)
    return clf


def limit(rows: list[Example], n: int | None) -> list[Example]:
    """The first n rows (all when n is None)."""
    return rows if n is None else rows[:n]


def record_stage(stage: str, metrics: dict, start: float, out_dir: Path, rt: Runtime,
                 kind: type[TrainingResult] = TrainingResult) -> TrainingResult:
    """What a training stage (train, teacher, a defense) records in its folder, written once by the function
    that runs the whole stage: its metrics and one time, `wall_time_s`, the stage's work from loading to
    saving (since `start`). (`train_wall_time_s` inside is the training loop alone; evaluation has its own
    `eval_wall_time_s`.)"""
    result = kind.from_json({**metrics, "stage": stage, "wall_time_s": time.perf_counter() - start})
    return write_result(Path(out_dir) / METRICS_FILE, result, rt.is_main)


def train_classifier(clf: Classifier, splits: Splits, cfg: TrainConfig, rt: Runtime, out_dir: Path,
                     seed: int, loss_fn: LossFn = cross_entropy_step, desc: str = "train",
                     diagnostics: Diagnostics | None = None) -> dict:
    """Fine-tune `clf` on splits.train, select by clean dev accuracy, write model/; returns the metrics
    (the stage that called it records them, once: record_stage)."""
    rows = limit(splits.train, cfg.max_train_rows)
    train = encode(clf.tokenizer, rows, cfg.max_length)
    dev = encode(clf.tokenizer, splits.dev, cfg.max_length)
    # Counted (and warned about) before training: a poisoned row whose trigger the tokenizer cuts off
    # teaches the target label without the trigger.
    poisoned = [ex for ex in rows if ex.poisoned]
    cut = cut_by_tokens(clf.tokenizer, poisoned, cfg.max_length, f"{desc} poisoned rows")[1] if poisoned else None
    params = count_parameters(clf.model)
    log.info("%s: %d train / %d dev rows, %d of %d parameters trainable", desc, len(train), len(dev),
             params["trainable_params"], params["total_params"])
    task = FitTask(train, dev, cfg, seed, loss_fn, desc, diagnostics(clf.tokenizer) if diagnostics else None)
    metrics = fit(clf, task, rt, out_dir)
    metrics.update(params, train_rows=len(train))
    if cut is not None:
        metrics["trigger_cut"] = cut.to_dict()
    if rt.is_main and cfg.merge and cfg.method == "lora":
        merge_adapter(out_dir / MODEL_DIR, out_dir / MERGED_DIR, splits.num_labels)
    rt.accelerator.wait_for_everyone()
    return metrics


def run_train(model_name: str, splits: Splits, cfg: TrainConfig, rt: Runtime, out_dir: Path, seed: int,
              diagnostics: Diagnostics | None = None) -> TrainingResult:
    """Load, wrap and train a classifier; the whole `train` stage, recorded in metrics.json."""
    start = time.perf_counter()
    clf = prepare_student(model_name, splits.num_labels, cfg, rt, out_dir, seed)
    metrics = train_classifier(clf, splits, cfg, rt, out_dir, seed, diagnostics=diagnostics)
    return record_stage("train", metrics, start, out_dir, rt)
