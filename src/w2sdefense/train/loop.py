"""The one fine-tuning loop (full or LoRA): data, forward, loss, backward, step, log, eval, checkpoint.

Used to plant a backdoor (attacker), train clean baselines and the teacher, and, with a different
loss function, for weak-to-strong unlearning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup, set_seed

from w2sdefense.config import TrainConfig, to_dict
from w2sdefense.errors import Interrupted, UserError
from w2sdefense.models.predict import predict_logits
from w2sdefense.progress import progress_bar
from w2sdefense.fileio import recover_folder, write_folder
from w2sdefense.rundir import RESUME_DIR
from w2sdefense.runtime import Runtime, peak_memory_mb, reset_peak_memory
from w2sdefense.models.batching import Encoded, LengthGroupedBatches, ShardedBatches, make_loader, model_inputs
from w2sdefense.train.interrupt import stop_on_sigint
from w2sdefense.train.sharding import full_state_dict, is_sharded, shard_model
from w2sdefense.train.resume import discard_state, fingerprint, load_state, restore_rng, save_state

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
    epoch: int = 0
    batches_done: int = 0  # of the current epoch's batches (where a resumed run picks up)
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

    def as_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "terms": dict(self.terms)}

    @classmethod
    def restore(cls, saved: dict) -> _Progress:
        return cls(**{**saved, "terms": defaultdict(list, saved["terms"])})


def fit(model: torch.nn.Module, train: Encoded, dev: Encoded, cfg: TrainConfig, rt: Runtime,
        save: Callable[[torch.nn.Module, Path, dict], None], out_dir: Path, seed: int, pad_id: int,
        loss_fn: LossFn = cross_entropy_step, desc: str = "train", diagnose: Diagnose | None = None) -> dict:
    """Train `model`; save the checkpoint chosen by clean dev accuracy to out_dir/model; return metrics.

    A resumable state is kept in out_dir/resume (see resume.py): a run started again on the same
    folder continues from it, and ends as the uninterrupted run would have.
    """
    acc = rt.accelerator
    # Dropout draws from the global generator: seed it here, so the training stream does not depend on
    # what ran before (W2SDefense builds its teacher between the student and the loop; lora-ft does not).
    set_seed(seed)
    sampler = LengthGroupedBatches(train.lengths, cfg.batch_size, seed)
    # Batches are sharded here, not by accelerate: its splitting drops batches that are not full,
    # and length-grouped batches of different sizes occur anywhere in an epoch.
    loader = make_loader(train, ShardedBatches(sampler, acc.process_index, acc.num_processes), pad_id)
    fp = fingerprint(to_dict(cfg), seed, [train, dev], model, acc.num_processes)  # the texts as tokens, not lengths
    sharded = rt.fsdp and cfg.method == "full"
    if sharded:  # before the optimizer, which must hold the shards
        shard_model(model, rt)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    _configure_deepspeed(acc, cfg)
    model, optimizer = (model, acc.prepare(optimizer)) if sharded else acc.prepare(model, optimizer)
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
    total = _total_steps(cfg, steps_per_epoch, desc)
    # Stepped by hand once per optimizer step, so the count is right under any process count.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    recover_folder(out_dir / "model")
    resumable = _resumable(acc) and not sharded
    saved = load_state(out_dir, acc.unwrap_model(model), optimizer, scheduler, fp) if resumable else None
    progress, pending_rng = _Progress(), None
    if saved:
        progress, pending_rng = _Progress.restore(saved["progress"]), saved["rng"]
        log.info("resuming from step %d", progress.step)
        if rt.is_main:
            tqdm.write(f"{desc}: resuming from step {progress.step} of {total}")
        if progress.batches_done >= len(loader):  # saved after an epoch's last batch: start the next,
            progress.epoch, progress.batches_done = progress.epoch + 1, 0  # its order drawn after the save
            restore_rng(pending_rng)
            pending_rng = None

    def checkpoint() -> None:
        if resumable and rt.is_main:
            save_state(out_dir, acc.unwrap_model(model), optimizer, scheduler, progress, fp)
        acc.wait_for_everyone()

    reset_peak_memory(rt.device)
    start = time.perf_counter()
    bar = progress_bar(total=total, initial=progress.step, desc=desc, disable=not rt.is_main, unit="step")
    model.train()
    evaluate = lambda: _evaluate(model, dev, cfg, rt, save, out_dir, pad_id, progress, diagnose)  # noqa: E731
    with stop_on_sigint() as stop:
        while progress.step < total:
            sampler.set_epoch(progress.epoch)
            batches = iter(loader)  # draws a seed from the global generator: restore the saved one after
            if pending_rng is not None:
                restore_rng(pending_rng)
                pending_rng = None
            stopped = _run_epoch(model, batches, len(loader), optimizer, scheduler, cfg, rt, loss_fn, progress,
                                 bar, total, evaluate, checkpoint, stop)
            if stopped:
                bar.close()
                checkpoint()
                raise Interrupted(f"interrupted at step {progress.step} of {total}; the resumable state is in "
                                  f"{out_dir / RESUME_DIR}: run the same command again to continue")
            if not progress.history or progress.history[-1]["step"] != progress.step:
                evaluate()
                checkpoint()
            if progress.step < total:
                progress.epoch, progress.batches_done = progress.epoch + 1, 0
    bar.close()
    wall = time.perf_counter() - start
    if rt.is_main:
        discard_state(out_dir)
    return {
        "best_dev_accuracy": progress.best, "best_step": progress.best_step, "selected_step": progress.selected_step,
        "selected_dev_accuracy": progress.selected, "selection": cfg.select, "steps": progress.step,
        "epochs_run": progress.epoch + 1, "history": progress.history, "train_wall_time_s": wall,
        "train_examples_per_s": progress.seen / wall if wall else 0.0, "resumed_from_step": saved and
        saved["progress"]["step"], **peak_memory_mb(rt.device),
    }


_MAX_STEPS = 2**53  # beyond this a float step count is no longer exact (and no run gets there)


def _total_steps(cfg: TrainConfig, steps_per_epoch: int, desc: str) -> int:
    """Optimizer steps of the run: max_steps, else epochs x steps an epoch, refused when beyond counting."""
    if cfg.max_steps:
        return cfg.max_steps
    steps = cfg.epochs * steps_per_epoch
    if not steps < _MAX_STEPS:  # 1e308 epochs: an infinite float, which ceil cannot make an int
        raise UserError(f"train.epochs={cfg.epochs:g} ({desc}: {steps_per_epoch} steps an epoch) makes {steps:.3g} "
                        "optimizer steps, more than a run can count; give fewer epochs, or set train.max_steps")
    return max(1, math.ceil(steps))


def _resumable(acc) -> bool:
    """Resumable states are written for one process or DDP (sharded ZeRO/FSDP states are not)."""
    sharded = getattr(acc.state, "deepspeed_plugin", None) is not None or getattr(acc.state, "fsdp_plugin", None)
    if sharded:
        log.warning("no resumable state under DeepSpeed or FSDP: a killed run starts its stage again")
    return not sharded


def _configure_deepspeed(acc, cfg: TrainConfig) -> None:
    """DeepSpeed needs the per-process batch, which it cannot read from our own batch sharding."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = max(1, cfg.batch_size // acc.num_processes)
        plugin.deepspeed_config["gradient_accumulation_steps"] = cfg.grad_accum


def _run_epoch(model, batches, num_batches, optimizer, scheduler, cfg, rt, loss_fn, progress, bar, total,
               evaluate: Callable[[], None], checkpoint: Callable[[], None], stop) -> bool:
    """One pass over the epoch's batches (skipping those a resumed run already used) with gradient
    accumulation; stops at `total` optimizer steps. Returns True when Ctrl-C asked to stop."""
    acc = rt.accelerator
    for i, batch in enumerate(batches):
        if i < progress.batches_done:
            continue
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        batch["progress"] = torch.tensor(progress.step / total)  # share of the steps done (scheduled loss weights)
        sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == num_batches
        # FSDP2 has no no_sync (its shards reduce every backward): accumulation stays correct, only slower.
        with contextlib.nullcontext() if sync or is_sharded(model) else acc.no_sync(model):
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
        progress.batches_done = i + 1
        bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)  # first: the line update writes shows them
        bar.update(1)
        if cfg.eval_every and progress.step % cfg.eval_every == 0:
            evaluate()
            checkpoint()
        if progress.step >= total:
            return False
        if _stop_requested(stop, acc):
            return True
    return False


def _stop_requested(stop, acc) -> bool:
    """Ctrl-C reaches every process at slightly different moments: all stop at the same step."""
    if acc.num_processes == 1:
        return stop.requested
    flag = acc.reduce(torch.tensor([float(stop.requested)], device=acc.device), reduction="sum")
    return bool(flag.item())


def _global_mean(terms: dict[str, float], acc) -> dict[str, float]:
    """Loss terms averaged over processes (each holds an equal share of the batch)."""
    if acc.num_processes == 1 or not terms:
        return terms
    values = acc.reduce(torch.tensor(list(terms.values()), device=acc.device), reduction="mean")
    return dict(zip(terms, values.tolist()))


def _evaluate(model, dev: Encoded, cfg: TrainConfig, rt: Runtime, save, out_dir: Path, pad_id: int,
              progress: _Progress, diagnose: Diagnose | None = None) -> None:
    """Dev accuracy now; keep the checkpoint if the selection rule (clean dev accuracy only) says so."""
    accuracy = dev_accuracy(model, dev, pad_id, cfg.eval_batch_size, rt)
    record = {"epoch": progress.epoch, "step": progress.step, "dev_accuracy": accuracy, **progress.mean_terms()}
    if diagnose is not None:
        record.update(diagnose(model))  # logged only: selection below never reads it
    progress.history.append(record)
    log.info("step %d (epoch %d): %s", progress.step, progress.epoch,
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
    state_dict = full_state_dict(model) if is_sharded(model) else acc.get_state_dict(model)
    if rt.is_main:
        with write_folder(target) as tmp:
            save(acc.unwrap_model(model), tmp, state_dict)
    acc.wait_for_everyone()
