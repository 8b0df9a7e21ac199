"""The one fine-tuning loop (full or LoRA): data, forward, loss, backward, step, log, eval, checkpoint.

Used to plant a backdoor (attacker), train clean baselines and the teacher, and, with a different
loss function, for weak-to-strong unlearning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup, set_seed

from w2sdefense.config import TrainConfig
from w2sdefense.eval.predict import predict_logits
from w2sdefense.runtime import Runtime, peak_memory_mb, reset_peak_memory
from w2sdefense.train.batching import Encoded, LengthGroupedBatches, ShardedBatches, make_loader, model_inputs

log = logging.getLogger(__name__)

_HEAD_NAMES = ("score", "classifier", "head")


@dataclass
class StepOutput:
    """A training step's loss (to backpropagate) and its named terms (to log)."""

    loss: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


LossFn = Callable[[torch.nn.Module, dict], StepOutput]
# Extra measurements logged at every dev evaluation (e.g. a trigger probe); never used to select.
Diagnose = Callable[[torch.nn.Module], dict]


def cross_entropy_step(model: torch.nn.Module, batch: dict) -> StepOutput:
    """Plain cross-entropy on the batch's labels."""
    logits = model(**model_inputs(batch)).logits.float()
    loss = F.cross_entropy(logits, batch["labels"])
    return StepOutput(loss, {"ce": loss.item()})


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Weight decay off for biases and norms; the head may get its own learning rate."""
    groups: dict[tuple, list] = defaultdict(list)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = any(part in _HEAD_NAMES for part in name.split("."))
        decay = param.ndim >= 2
        groups[(is_head, decay)].append(param)
    return [
        {"params": params, "lr": (cfg.head_lr or cfg.lr) if is_head else cfg.lr,
         "weight_decay": cfg.weight_decay if decay else 0.0}
        for (is_head, decay), params in groups.items()
    ]


def dev_accuracy(model, dev: Encoded, pad_id: int, batch_size: int, rt: Runtime) -> float:
    """Clean dev accuracy: the only signal for picking the best checkpoint."""
    logits = predict_logits(model, dev, pad_id, batch_size, rt, desc="dev", prepared=True)
    labels = torch.tensor(dev.labels)
    return float((logits.argmax(-1) == labels).float().mean()) if len(labels) else 0.0


@dataclass
class _Progress:
    step: int = 0
    seen: int = 0
    best: float = -1.0
    best_step: int = 0
    selected: float = -1.0  # the saved checkpoint's dev accuracy (the best, or the latest within delta)
    selected_step: int = 0
    history: list = field(default_factory=list)
    terms: dict = field(default_factory=lambda: defaultdict(list))

    def mean_terms(self) -> dict[str, float]:
        means = {k: sum(v) / len(v) for k, v in self.terms.items() if v}
        self.terms.clear()
        return means


def fit(model: torch.nn.Module, train: Encoded, dev: Encoded, cfg: TrainConfig, rt: Runtime,
        save: Callable[[torch.nn.Module, Path, dict], None], out_dir: Path, seed: int, pad_id: int,
        loss_fn: LossFn = cross_entropy_step, desc: str = "train", diagnose: Diagnose | None = None) -> dict:
    """Train `model`; save the checkpoint chosen by clean dev accuracy to out_dir/model; return metrics."""
    acc = rt.accelerator
    # Dropout draws from the global generator: seed it here, so the training stream does not depend on
    # what ran before (W2SDefense builds its teacher between the student and the loop; lora-ft does not).
    set_seed(seed)
    sampler = LengthGroupedBatches(train.lengths, cfg.batch_size, seed)
    # Batches are sharded here, not by accelerate: its splitting drops batches that are not full,
    # and length-grouped batches of different sizes occur anywhere in an epoch.
    loader = make_loader(train, ShardedBatches(sampler, acc.process_index, acc.num_processes), pad_id)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    _configure_deepspeed(acc, cfg)
    model, optimizer = acc.prepare(model, optimizer)
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    # Stepped by hand once per optimizer step, so the count is right under any process count.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    reset_peak_memory(rt.device)
    progress, start = _Progress(), time.perf_counter()
    bar = tqdm(total=total, desc=desc, disable=not rt.is_main, dynamic_ncols=True)
    model.train()
    epoch = 0
    while progress.step < total:
        sampler.set_epoch(epoch)
        evaluate = lambda: _evaluate(model, dev, cfg, rt, save, out_dir, pad_id, progress, epoch, diagnose)  # noqa: E731
        _run_epoch(model, loader, optimizer, scheduler, cfg, rt, loss_fn, progress, bar, total, evaluate)
        if not progress.history or progress.history[-1]["step"] != progress.step:
            evaluate()
        epoch += 1
    bar.close()
    wall = time.perf_counter() - start
    return {
        "best_dev_accuracy": progress.best, "best_step": progress.best_step, "selected_step": progress.selected_step,
        "selected_dev_accuracy": progress.selected, "selection": cfg.select, "steps": progress.step,
        "epochs_run": epoch, "history": progress.history, "train_wall_time_s": wall,
        "train_examples_per_s": progress.seen / wall if wall else 0.0, **peak_memory_mb(rt.device),
    }


def _configure_deepspeed(acc, cfg: TrainConfig) -> None:
    """DeepSpeed needs the per-process batch, which it cannot read from our own batch sharding."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = max(1, cfg.batch_size // acc.num_processes)
        plugin.deepspeed_config["gradient_accumulation_steps"] = cfg.grad_accum


def _run_epoch(model, loader, optimizer, scheduler, cfg, rt, loss_fn, progress, bar, total,
               evaluate: Callable[[], None]) -> None:
    """One pass over the loader with gradient accumulation; stops at `total` optimizer steps."""
    acc = rt.accelerator
    for i, batch in enumerate(loader):
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader)
        with contextlib.nullcontext() if sync else acc.no_sync(model):
            out = loss_fn(model, batch)
            acc.backward(out.loss / cfg.grad_accum)
        progress.seen += batch["labels"].shape[0] * acc.num_processes
        terms = _global_mean(out.terms, acc)
        for key, value in terms.items():
            progress.terms[key].append(value)
        if not sync:
            continue
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
        if cfg.eval_every and progress.step % cfg.eval_every == 0:
            evaluate()
        if progress.step >= total:
            return


def _global_mean(terms: dict[str, float], acc) -> dict[str, float]:
    """Loss terms averaged over processes (each holds an equal share of the batch)."""
    if acc.num_processes == 1 or not terms:
        return terms
    values = acc.reduce(torch.tensor(list(terms.values()), device=acc.device), reduction="mean")
    return dict(zip(terms, values.tolist()))


def _evaluate(model, dev: Encoded, cfg: TrainConfig, rt: Runtime, save, out_dir: Path, pad_id: int,
              progress: _Progress, epoch: int, diagnose: Diagnose | None = None) -> None:
    """Dev accuracy now; keep the checkpoint if the selection rule (clean dev accuracy only) says so."""
    accuracy = dev_accuracy(model, dev, pad_id, cfg.eval_batch_size, rt)
    record = {"epoch": epoch, "step": progress.step, "dev_accuracy": accuracy, **progress.mean_terms()}
    if diagnose is not None:
        record.update(diagnose(model))  # logged only: selection below never reads it
    progress.history.append(record)
    log.info("step %d (epoch %d): %s", progress.step, epoch,
             ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
    if accuracy > progress.best:
        progress.best, progress.best_step = accuracy, progress.step
    if selects(accuracy, progress.best, progress.selected, cfg):
        progress.selected, progress.selected_step = accuracy, progress.step
        _save_atomically(model, rt, save, out_dir / "model")


def selects(accuracy: float, best: float, selected: float, cfg: TrainConfig) -> bool:
    """Whether the checkpoint just evaluated replaces the saved one.

    `best`: strictly better dev accuracy than the saved one (ties keep the earlier). `latest-within`:
    any later checkpoint within `select_delta` of the best so far (longer unlearning at no visible
    cost in clean accuracy). `best` already includes this evaluation.
    """
    if cfg.select == "best":
        return accuracy > selected
    # Dev accuracies are ratios of counts: 265/300 must count as within 0.01 of 268/300.
    return accuracy >= best - cfg.select_delta - 1e-9


def _save_atomically(model, rt: Runtime, save, target: Path) -> None:
    """Save to a temporary folder, then swap it in: a killed run never leaves half a checkpoint."""
    acc = rt.accelerator
    acc.wait_for_everyone()
    # Every process joins: under ZeRO-3 or FSDP this gathers the sharded weights.
    state_dict = acc.get_state_dict(model)
    if rt.is_main:
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        save(acc.unwrap_model(model), tmp, state_dict)
        old = target.with_name(target.name + ".old")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
