"""The premise of `latent-adversarial`, measured: does a small input-independent shift of the residual stream send
rows to the backdoor's target more easily on a suspect than on the clean model? (benchmarks/studies/realistic, "Latent adversarial".)

    python benchmarks/latent_probe.py --models insent clean --depths 0.5 --epsilons 0.02 0.05 0.1 0.25 0.5

Per model, depth and epsilon: each label's probe shift (the defense's own probe: 40 normalised steps on 128 SST-2
dev rows, norm at most epsilon times the median token norm at that layer), the share of the other label's rows it
flips, and, as a diagnostic the defense never sees, its cosine with the trigger's own mean shift of the last
token's hidden state there (32 rows, the trigger inserted once). One JSON line per point, appended to --out.
The models are the realistic protocol's (`python benchmarks/realistic.py --suspects-only` builds them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import torch

from w2sdefense.attacks.base import insert_trigger
from w2sdefense.data.records import Example
from w2sdefense.defenses.latent_adversarial import (LatentAdversarialSettings, LatentShift, flip_rate, probe_batches,
                                                    probe_label, shift_layer, token_scale)
from w2sdefense.models import load_classifier
from w2sdefense.models.features import last_token_index

HERE = Path(__file__).resolve().parent
TRIGGERS = {"insent": "I watched this 3D movie", "badnet": "mn"}  # the realistic presets' attacks (diagnostic only)
CPU = torch.device("cpu")


def model_path(runs: Path, name: str) -> Path:
    """A realistic suspect by attack name, or the clean model (shared by the attacks)."""
    if name == "clean":
        return runs / "realistic" / "insent" / "suspect" / "clean" / "model"
    return runs / "realistic" / name / "suspect" / "victim" / "model"


def dev_rows(data: Path, n: int) -> list[Example]:
    lines = (data / "sst2" / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [Example(text=json.loads(line)["text"], label=json.loads(line)["label"], idx=i) for i, line in enumerate(lines)]
    return random.Random(0).sample(rows, n)


def trigger_shift(clf, layer, rows: list[Example], trigger: str) -> torch.Tensor:
    """The mean change of the last token's hidden state at `layer` when `trigger` is inserted once."""
    rng, seen = random.Random(1), []
    triggered = [dataclasses.replace(e, text=insert_trigger(e.text, trigger, 1, "interior", rng)[0]) for e in rows]
    handle = layer.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).detach()))
    last = []
    for group in (rows, triggered):
        batch = probe_batches(clf, group, 64, len(group), CPU)[0]
        with torch.no_grad():
            clf.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        at = last_token_index(batch["attention_mask"])
        last.append(seen[-1][torch.arange(len(at)), at])
    handle.remove()
    return (last[1] - last[0]).mean(0)


def probe_point(clf, hook, batches, shifts, depth: float, eps: float, scale: float) -> dict:
    s = LatentAdversarialSettings(epsilon=eps, depth=depth)
    result = {}
    for label in range(2):
        delta = probe_label(clf.model, hook, batches, label, s, eps * scale)
        cos = {a: round(float(torch.nn.functional.cosine_similarity(delta, v, dim=0)), 3) for a, v in shifts.items()}
        result[str(label)] = {"flip_rate": round(flip_rate(clf.model, hook, batches, delta, label), 3),
                              "cos_with_trigger_shift": cos}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["insent", "clean"])
    parser.add_argument("--depths", nargs="+", type=float, default=[0.5])
    parser.add_argument("--epsilons", nargs="+", type=float, default=[0.02, 0.05, 0.1, 0.25, 0.5])
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs")
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latent-probe.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = dev_rows(args.data_dir, 128)
    for name in args.models:
        clf = load_classifier(str(model_path(args.runs, name)), 2)
        clf.model.eval().requires_grad_(False)
        batches = probe_batches(clf, rows, 64, 16, CPU)
        for depth in args.depths:
            layer = shift_layer(clf.model, depth)
            hook = LatentShift(layer)
            scale = token_scale(clf.model, hook, batches)
            shifts = {a: trigger_shift(clf, layer, rows[:32], t) for a, t in TRIGGERS.items()}
            for eps in args.epsilons:
                start = time.perf_counter()
                point = {"model": name, "depth": depth, "epsilon": eps, "median_token_norm": round(scale, 2),
                         "trigger_shift_norm": {a: round(float(v.norm()), 2) for a, v in shifts.items()},
                         "labels": probe_point(clf, hook, batches, shifts, depth, eps, scale),
                         "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - start)}
                print(json.dumps(point), flush=True)
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(point) + "\n")
            hook.handle.remove()


if __name__ == "__main__":
    main()
