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
from w2sdefense.fileio import recover_folder, write_folder
from w2sdefense.models import Classifier, save_classifier
from w2sdefense.models.predict import predict_logits
from w2sdefense.progress import progress_bar, stop_bar
from w2sdefense.rundir import MODEL_DIR, RESUME_DIR
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


@dataclass
class FitTask:
    """What one run of the loop trains on and how: the encoded splits, the settings, the seed, the loss."""

    train: Encoded
    dev: Encoded
    cfg: TrainConfig
    seed: int
    loss_fn: LossFn = cross_entropy_step
    desc: str = "train"
    diagnose: Diagnose | None = None  # extra measurements logged at every dev evaluation


@dataclass
class _Loop:
    """The loop's state: the prepared model and its optimizer, the batches, how far it has come, where it saves."""

    clf: Classifier  # the model as loaded (its tokenizer saves with every checkpoint)
    model: torch.nn.Module  # the same model, prepared by accelerate
    task: FitTask
    rt: Runtime
    out_dir: Path
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: LengthGroupedBatches
    loader: object
    total: int  # optimizer steps in the whole run
    fp: str  # the resumable state's fingerprint
    resumable: bool
    progress: _Progress = field(default_factory=_Progress)
    bar: object = None
    stop: object = None  # the Ctrl-C request (interrupt.StopRequest), set while the loop runs

    def evaluate(self) -> None:
        """Dev accuracy now, the selection rule, then the resumable state."""
        _evaluate(self)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Write the resumable state (main process); every process waits for it."""
        acc = self.rt.accelerator
        if self.resumable and self.rt.is_main:
            save_state(self.out_dir, acc.unwrap_model(self.model), self.optimizer, self.scheduler, self.progress,
                       self.fp)
        acc.wait_for_everyone()


def fit(clf: Classifier, task: FitTask, rt: Runtime, out_dir: Path) -> dict:
    """Train `clf.model`; save the checkpoint chosen by clean dev accuracy to out_dir/model; return metrics.

    A resumable state is kept in out_dir/resume (see resume.py): a run started again on the same
    folder continues from it, and ends as the uninterrupted run would have.
    """
    if not task.cfg.eval_epochs and task.diagnose is not None and not hasattr(task.diagnose, "as_if"):
        raise ValueError("train.eval_epochs false with diagnostics that cannot replay a skipped read's draws (as_if)")
    loop = _build(clf, task, rt, out_dir)
    saved, pending_rng = _resume(loop)
    reset_peak_memory(rt.device)
    start = time.perf_counter()
    loop.bar = progress_bar(total=loop.total, initial=loop.progress.step, desc=task.desc, disable=not rt.is_main,
                            unit="step")
    loop.model.train()
    with stop_on_sigint() as loop.stop:
        _run_epochs(loop, pending_rng)
    loop.bar.close()
    wall = time.perf_counter() - start
    if rt.is_main:
        discard_state(out_dir)
    progress = loop.progress
    return {
        "best_dev_accuracy": progress.best, "best_step": progress.best_step, "selected_step": progress.selected_step,
        "selected_dev_accuracy": progress.selected, "selection": task.cfg.select, "steps": progress.step,
        "epochs_run": progress.epoch + 1, "history": progress.history, "train_wall_time_s": wall,
        "train_examples_per_s": progress.seen / wall if wall else 0.0, "resumed_from_step": saved and
        saved["progress"]["step"], **peak_memory_mb(rt.device),
    }


def _build(clf: Classifier, task: FitTask, rt: Runtime, out_dir: Path) -> _Loop:
    """Seed, batches, optimizer and schedule, the model prepared by accelerate: a loop at step 0."""
    acc, cfg = rt.accelerator, task.cfg
    # Dropout draws from the global generator: seed it here, so the training stream does not depend on
    # what ran before (W2SDefense builds its teacher between the student and the loop; lora-ft does not).
    set_seed(task.seed)
    sampler = LengthGroupedBatches(task.train.lengths, cfg.batch_size, task.seed)
    # Batches are sharded here, not by accelerate: its splitting drops batches that are not full,
    # and length-grouped batches of different sizes occur anywhere in an epoch.
    loader = make_loader(task.train, ShardedBatches(sampler, acc.process_index, acc.num_processes),
                         clf.tokenizer.pad_token_id)
    # The texts as tokens, not only their lengths: a resumed run must see the same rows.
    fp = fingerprint(to_dict(cfg), task.seed, [task.train, task.dev], clf.model, acc.num_processes)
    sharded = rt.fsdp and cfg.method == "full"
    if sharded:  # before the optimizer, which must hold the shards
        shard_model(clf.model, rt)
    optimizer = torch.optim.AdamW(_param_groups(clf.model, cfg), lr=cfg.lr)
    _configure_deepspeed(acc, cfg)
    model, optimizer = (clf.model, acc.prepare(optimizer)) if sharded else acc.prepare(clf.model, optimizer)
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
    total = _total_steps(cfg, steps_per_epoch, task.desc)
    # Stepped by hand once per optimizer step, so the count is right under any process count.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    recover_folder(out_dir / MODEL_DIR)
    return _Loop(clf, model, task, rt, out_dir, optimizer, scheduler, sampler, loader, total, fp,
                 _resumable(acc) and not sharded)


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


def _resume(loop: _Loop) -> tuple[dict | None, dict | None]:
    """Load the saved state, if any, into the loop; return it and the random-number states still to restore."""
    acc = loop.rt.accelerator
    if not loop.resumable:
        return None, None
    saved = load_state(loop.out_dir, acc.unwrap_model(loop.model), loop.optimizer, loop.scheduler, loop.fp)
    if not saved:
        return None, None
    progress = loop.progress = _Progress.restore(saved["progress"])
    log.info("resuming from step %d", progress.step)
    if loop.rt.is_main:
        tqdm.write(f"{loop.task.desc}: resuming from step {progress.step} of {loop.total}")
    if progress.batches_done >= len(loop.loader):  # saved after an epoch's last batch: start the next,
        progress.epoch, progress.batches_done = progress.epoch + 1, 0  # its order drawn after the save
        restore_rng(saved["rng"])
        return saved, None
    return saved, saved["rng"]


def _run_epochs(loop: _Loop, pending_rng: dict | None) -> None:
    """Epoch after epoch until `total` steps; each ends with an evaluation (with eval_every and not eval_epochs, only
    the last). Ctrl-C saves the state and stops."""
    progress, cfg = loop.progress, loop.task.cfg
    while progress.step < loop.total:
        loop.sampler.set_epoch(progress.epoch)
        batches = iter(loop.loader)  # draws a seed from the global generator: restore the saved one after
        if pending_rng is not None:
            restore_rng(pending_rng)
            pending_rng = None
        stopped = _run_epoch(loop, batches)
        # An epoch's last step is evaluated before anything else, also when Ctrl-C came in it: a resumed
        # run starts the next epoch and would never evaluate it.
        ended = not stopped or progress.batches_done >= len(loop.loader)
        due = cfg.eval_epochs or not cfg.eval_every or progress.step >= loop.total
        if ended and (not progress.history or progress.history[-1]["step"] != progress.step):
            if due:
                loop.evaluate()
            else:
                _as_if_read(loop)
        if stopped:
            stop_bar(loop.bar)
            loop.checkpoint()
            raise Interrupted(f"interrupted at step {progress.step} of {loop.total}; the resumable state is in "
                              f"{loop.out_dir / RESUME_DIR}: run the same command again to continue")
        if progress.step < loop.total:
            progress.epoch, progress.batches_done = progress.epoch + 1, 0


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


def _run_epoch(loop: _Loop, batches) -> bool:
    """One pass over the epoch's batches (skipping those a resumed run already used) with gradient
    accumulation; stops at `total` optimizer steps. Returns True when Ctrl-C asked to stop."""
    acc, cfg, progress, model = loop.rt.accelerator, loop.task.cfg, loop.progress, loop.model
    num_batches = len(loop.loader)
    for i, batch in enumerate(batches):
        if i < progress.batches_done:
            continue
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        # Share of the steps done (scheduled loss weights).
        batch["progress"] = torch.tensor(progress.step / loop.total)
        sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == num_batches
        # FSDP2 has no no_sync (its shards reduce every backward): accumulation stays correct, only slower.
        with contextlib.nullcontext() if sync or is_sharded(model) else acc.no_sync(model):
            out = loop.task.loss_fn(model, batch)
            acc.backward(out.loss / cfg.grad_accum)
        progress.seen += batch["labels"].shape[0] * acc.num_processes
        terms = _global_mean(out.terms, acc)
        for key, value in terms.items():
            progress.terms[key].append(value)
        if not sync:
            continue
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.batches_done = i + 1
        # The terms first: the line a log gets on update shows them.
        loop.bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
        loop.bar.update(1)
        if cfg.eval_every and progress.step % cfg.eval_every == 0:
            loop.evaluate()
        if progress.step >= loop.total:
            return False
        if _stop_requested(loop.stop, acc):
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


def _as_if_read(loop: _Loop) -> None:
    """Draw from the run's random state what a dev read draws (its data loader's seed, and what the run's diagnostics
    draw where they say how: `as_if`), on one row each: a run that skips its epochs' reads (eval_epochs false) trains
    exactly as one that made them, so runs made before the setting existed are reproduced."""
    predict_logits(loop.model, loop.task.dev.head(1), loop.clf.tokenizer.pad_token_id, loop.task.cfg.eval_batch_size,
                   loop.rt, desc="dev", prepared=True)
    if loop.task.diagnose is not None:
        loop.task.diagnose.as_if(loop.model)  # fit checked it has one


def _evaluate(loop: _Loop) -> None:
    """Dev accuracy now; keep the checkpoint if the selection rule (clean dev accuracy only) says so."""
    task, progress, model = loop.task, loop.progress, loop.model
    accuracy = dev_accuracy(model, task.dev, loop.clf.tokenizer.pad_token_id, task.cfg.eval_batch_size, loop.rt)
    record = {"epoch": progress.epoch, "step": progress.step, "dev_accuracy": accuracy, **progress.mean_terms()}
    if task.diagnose is not None:
        record.update(task.diagnose(model))  # logged only: selection below never reads it
    progress.history.append(record)
    log.info("step %d (epoch %d): %s", progress.step, progress.epoch,
             ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
    if accuracy > progress.best:
        progress.best, progress.best_step = accuracy, progress.step
    if selects(accuracy, progress.best, progress.selected, task.cfg):
        progress.selected, progress.selected_step = accuracy, progress.step
        _save_atomically(loop)


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


def _save_atomically(loop: _Loop) -> None:
    """Save to a temporary folder, then swap it in: a killed run never leaves half a checkpoint."""
    acc, target = loop.rt.accelerator, loop.out_dir / MODEL_DIR
    acc.wait_for_everyone()
    # Every process joins: under ZeRO-3 or FSDP this gathers the sharded weights.
    state_dict = full_state_dict(loop.model) if is_sharded(loop.model) else acc.get_state_dict(loop.model)
    if loop.rt.is_main:
        with write_folder(target) as tmp:
            save_classifier(Classifier(acc.unwrap_model(loop.model), loop.clf.tokenizer), tmp, state_dict)
    acc.wait_for_everyone()
