"""How far fine-tuning moved each input embedding, model by model: does a backdoored model's profile stand out from
a clean one's fine-tuned the same way? (A question for the scan's verdict, benchmarks/studies/scan.) No forward pass:

    python benchmarks/shift_profile.py --model clean=runs/realistic/badnet/suspect/clean/model \\
        --model badnet=runs/realistic/badnet/suspect/victim/model --model insent=... --base smollm2-135m

Prints, and appends to results/scan-diagnostics/shift-profile.jsonl, one JSON object per model: the relative shift
||E_model - E_base|| / ||E_base|| of every non-special token, summarised (median, 99th and 99.9th percentile, the
largest, the mean of the 5 and the 20 largest, and the ratios the largest / the 99.9th percentile and the mean of the
top 5 / the median), and the 15 most-moved tokens with their shift.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from w2sdefense.models import load_classifier
from w2sdefense.scan.embedding_shift import relative_shift

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "scan-diagnostics" / "shift-profile.jsonl"


def profile(shift: torch.Tensor) -> dict:
    """Summary statistics of one model's relative shifts (a 1-d tensor)."""
    ordered = shift.sort(descending=True).values
    q = lambda p: float(torch.quantile(shift.double(), p))  # noqa: E731
    median, p999 = q(0.5), q(0.999)
    return {"median": median, "p99": q(0.99), "p999": p999, "max": float(ordered[0]),
            "top5_mean": float(ordered[:5].mean()), "top20_mean": float(ordered[:20].mean()),
            "max_over_p999": float(ordered[0]) / p999, "top5_over_median": float(ordered[:5].mean()) / median}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a fine-tuned model")
    parser.add_argument("--base", default="smollm2-135m", help="the public model every one was fine-tuned from")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    base = load_classifier(args.base, 2)
    base_table = base.model.get_input_embeddings().weight.detach().float()
    for spec in args.model:
        name, _, path = spec.partition("=")
        model = load_classifier(path, 2)
        tok = model.tokenizer
        special = set(tok.all_special_ids)
        every = torch.tensor([i for i in sorted(set(tok.get_vocab().values())) if i not in special])
        shift = relative_shift(model.model.get_input_embeddings().weight, base_table, every)
        top = shift.argsort(descending=True)[:15].tolist()
        row = {"model": name, "path": path, "base": args.base, "tokens": len(every), **profile(shift),
               "most_moved": [[tok.convert_ids_to_tokens(int(every[i])), round(float(shift[i]), 5)] for i in top],
               "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(row, ensure_ascii=False))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
