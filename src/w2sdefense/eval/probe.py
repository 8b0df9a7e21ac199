"""A trigger probe: ASR over clean-correct rows on a fixed subset of triggered test rows, measured at
every dev evaluation of a training run and drawn against the step.

A diagnostic for whoever holds the triggered test set (the experimenter): checkpoint selection never
reads it, because a defender does not know the trigger.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from w2sdefense.config import EvalConfig
from w2sdefense.data.records import Example
from w2sdefense.eval.metrics import backdoor_metrics
from w2sdefense.models.predict import predict_logits
from w2sdefense.results import TrainingResult
from w2sdefense.runtime import Runtime
from w2sdefense.models.batching import encode


@dataclass(frozen=True)
class TriggerProbe:
    """Triggered test rows and their clean versions (same `idx`, same order), and the target label."""

    clean: list[Example]
    triggered: list[Example]
    target: int


def make_probe(test: list[Example], triggered: list[Example], target: int, rows: int, seed: int) -> TriggerProbe | None:
    """A seeded sample of `rows` triggered rows that have a clean version; None when rows is 0 or none pair."""
    clean_by_idx = {ex.idx: ex for ex in test}
    paired = [ex for ex in triggered if ex.idx in clean_by_idx]
    if rows <= 0 or not paired:
        return None
    picked = sorted(random.Random(seed).sample(range(len(paired)), min(rows, len(paired))))
    chosen = [paired[i] for i in picked]
    return TriggerProbe([clean_by_idx[ex.idx] for ex in chosen], chosen, target)


def probe_diagnostic(probe: TriggerProbe, cfg: EvalConfig, rt: Runtime) -> Callable[[object], Callable]:
    """A factory: given the trained model's tokenizer, the function a training loop calls at each evaluation."""

    def for_tokenizer(tokenizer) -> Callable[[torch.nn.Module], dict]:
        clean = encode(tokenizer, probe.clean, cfg.max_length)
        triggered = encode(tokenizer, probe.triggered, cfg.max_length)
        idx = [ex.idx for ex in probe.clean]

        def measure(model: torch.nn.Module) -> dict:
            pad = tokenizer.pad_token_id
            c = predict_logits(model, clean, pad, cfg.batch_size, rt, "probe clean", prepared=True)
            t = predict_logits(model, triggered, pad, cfg.batch_size, rt, "probe triggered", prepared=True)
            m = backdoor_metrics(c, clean.labels, idx, t, idx, probe.target)
            return {"probe_asr_cc": m.attack_success_rate_clean_correct, "probe_asr": m.attack_success_rate,
                    "probe_ca": m.clean_accuracy, "probe_rows": len(idx)}

        def as_if(model: torch.nn.Module) -> None:
            """Draw what `measure` draws from the run's random state (each prediction its data loader's seed), on
            one row each: a run that skips a dev read (train.eval_epochs false) trains as one that made it."""
            for rows, desc in ((clean, "probe clean"), (triggered, "probe triggered")):
                predict_logits(model, rows.head(1), tokenizer.pad_token_id, cfg.batch_size, rt, desc, prepared=True)

        measure.as_if = as_if
        return measure

    return for_tokenizer


def start_point(result: TrainingResult) -> dict | None:
    """The evaluation of the checkpoint a training run kept, as the step-0 point of a run that starts from it.

    A defense starts from the poisoned model the victim stage kept (a fresh LoRA adapter changes nothing until
    it trains), on the same dev rows and probe rows, so that stage's evaluation is the defense's step 0 for free.
    """
    kept = result.selected_step
    for h in result.history or []:
        if h.get("step") == kept and "probe_asr_cc" in h and "dev_accuracy" in h:
            return {**h, "step": 0}
    return None


def curve_points(history: list[dict], start: dict | None = None) -> list[dict]:
    """The evaluations a curve draws: those with a probe, after `start` (a `start_point`, at step 0) when it
    measured the same rows."""
    points = [h for h in history if "probe_asr_cc" in h]
    if points and start is not None and points[0]["step"] > 0 and start.get("probe_rows") == points[0]["probe_rows"]:
        points = [start, *points]
    return points


def write_curves(history: list[dict], path: Path, title: str, kept_step: int | None = None,
                 start: dict | None = None) -> bool:
    """Dev accuracy and probe ASR-cc against the step (and the kept checkpoint), as a PNG; False without a probe.

    `start`, when given, is drawn at step 0: the model the run started from (see `start_point`).
    """
    points = curve_points(history, start)
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in points]
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.plot(steps, [100 * h["dev_accuracy"] for h in points], marker="o", label="clean dev accuracy")
    # An ASR-cc over zero rows (None: no probe row's clean version right) is a gap in the line, not a 0.
    asr_cc = [float("nan") if h["probe_asr_cc"] is None else 100 * h["probe_asr_cc"] for h in points]
    ax.plot(steps, asr_cc, marker="s",
            label=f"ASR-cc on {points[0]['probe_rows']} triggered probe rows")
    if kept_step is not None:
        ax.axvline(kept_step, color="gray", ls="--", lw=1, label=f"kept checkpoint (step {kept_step})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("%")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
