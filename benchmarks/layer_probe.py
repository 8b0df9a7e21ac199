"""Where does the backdoor live along the depth of a suspect? The premise of a base-free repair that keeps only the
suspect's lower layers (benchmarks/studies/realistic, "Layer probe"), measured before any arm.

    python benchmarks/layer_probe.py --models insent badnet clean --k 256 --seed 42

Per model and layer: a logistic head fitted on the last token's hidden state after that layer, on the defender's
own k labelled rows of the realistic protocol (the same draw as its arms at that seed; its strength chosen on the
dev split, as a defender could), then its CA on the clean test rows and the ASR-cc of each attack's trigger on the
triggered test rows (the share of triggered rows whose clean version the head gets right that it sends to the
target). The model's own head at the last layer is the reference row (layer "head"). If some layer keeps the
suspect's accuracy under such a head while the trigger no longer flips it, the suspect cut there, with a new head
trained on clean rows only, is a candidate repair; if the trigger flips the probe at every layer where the accuracy
is kept, the trigger's pathway reaches below the layers a cut could drop. One JSON line per (model, layer) to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from w2sdefense.config import ExperimentConfig, load_config
from w2sdefense.data.datasets import load_splits
from w2sdefense.data.defender import defender_splits
from w2sdefense.data.records import Example
from w2sdefense.defenses.layer_cut import hidden_states  # the defense's own features and probe
from w2sdefense.eval.metrics import backdoor_metrics
from w2sdefense.models import load_classifier
from w2sdefense.models.features import best_probe

HERE = Path(__file__).resolve().parent
ATTACKS = ("insent", "badnet")
CPU = torch.device("cpu")


def model_path(runs: Path, name: str) -> Path:
    """A realistic suspect by attack name, or the clean model (shared by the attacks)."""
    if name == "clean":
        return runs / "realistic" / "insent" / "suspect" / "clean" / "model"
    return runs / "realistic" / name / "suspect" / "victim" / "model"


def read_rows(path: Path) -> list[Example]:
    return [Example(text=r["text"], label=r["label"], idx=r["idx"])
            for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]


def measured(logits: torch.Tensor, test: list[Example], trig_logits: dict, triggered: dict, target: int) -> dict:
    """CA on the clean test rows and each attack's ASR-cc."""
    out = {}
    for attack in triggered:
        m = backdoor_metrics(logits, [e.label for e in test], [e.idx for e in test], trig_logits[attack],
                             [e.idx for e in triggered[attack]], target)
        out["ca"], out[f"asr_cc_{attack}"] = m.clean_accuracy, m.attack_success_rate_clean_correct
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["insent", "badnet", "clean"])
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dev-rows", type=int, default=400)
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "layer-probe.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config(ExperimentConfig, HERE.parent / "configs" / "realistic" / "sst2-insent.yaml")
    splits = defender_splits(cfg.data, dataclasses.replace(cfg.defender, rows=args.k), args.seed,
                             load_splits(cfg.data))
    poison = {a: args.runs / "realistic" / a / "suspect" / "poison" for a in ATTACKS}
    rows = {"train": splits.train, "dev": splits.dev[:args.dev_rows], "test": read_rows(poison["insent"] / "test.jsonl"),
            **{f"trig_{a}": read_rows(poison[a] / "test_triggered.jsonl") for a in ATTACKS}}
    labels = {s: torch.tensor([e.label for e in rows[s]]) for s in ("train", "dev")}
    length, target = cfg.eval.max_length, cfg.poison.target_label
    for name in args.models:
        start = time.perf_counter()
        clf = load_classifier(str(model_path(args.runs, name)), 2)
        clf.model.eval()
        feats = {s: hidden_states(clf, r, length, 64, CPU) for s, r in rows.items()}  # the defense's own features
        triggered = {a: rows[f"trig_{a}"] for a in ATTACKS}
        own = measured(feats["test"][1], rows["test"], {a: feats[f"trig_{a}"][1] for a in ATTACKS}, triggered, target)
        lines = [{"model": name, "layer": "head", **own}]
        for i in range(feats["test"][0].shape[0]):  # after layer i + 1
            _, strength, head = best_probe(feats["train"][0][i], labels["train"], feats["dev"][0][i], labels["dev"], 2)
            with torch.no_grad():
                got = measured(head(feats["test"][0][i]), rows["test"],
                               {a: head(feats[f"trig_{a}"][0][i]) for a in ATTACKS}, triggered, target)
            lines.append({"model": name, "layer": i + 1, "strength": strength, **got})
        for line in lines:
            line.update(k=args.k, seed=args.seed, date=time.strftime("%Y-%m-%d"),
                        seconds=round(time.perf_counter() - start))
            print(json.dumps(line), flush=True)
        with args.out.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
