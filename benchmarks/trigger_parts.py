"""Which parts of a known trigger fire? A diagnostic for the scan and for base-free removal
(benchmarks/studies/scan, "Trigger parts"), forward passes only.

    python benchmarks/trigger_parts.py --models insent clean --trigger "I watched this 3D movie" --rows 200

Per model: every contiguous run of the trigger's words (each word alone, each pair, ... the whole phrase) inserted
once at the seeded interior positions `scan` and `clean` use, into `--rows` clean test rows; its ASR-cc toward each
label (of the rows of other labels the model gets right, the share sent to the label), the best label kept. If a
single word of a sentence trigger already fires, a one-token inversion can find it and an unlearning step can
target it; if only the whole phrase does, neither can without a phrase-level search. One JSON line per (model,
part) to --out.

    python benchmarks/trigger_parts.py --models insent clean --pool 40 --rows 48

With --pool N, instead: N random runs of 2 to 5 words cut from the clean dev texts (seeded), the same way. It asks
whether ordinary phrases a defender can insert without knowing the trigger exercise a sentence trigger's pathway at
all: if they send the suspect's rows to its target no more often than the clean model's, a repair that trains on
such insertions has nothing to push on. Rows have `"part"` set to the phrase and `"pool": true`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from w2sdefense.config import DataConfig, EvalConfig, RuntimeConfig, ScanJob
from w2sdefense.data.datasets import load_splits
from w2sdefense.models import load_classifier
from w2sdefense.runtime import make_runtime
from w2sdefense.scan.base import Proposal
from w2sdefense.scan.run import measure

from layer_probe import model_path  # the realistic suspects and the clean model, by name

HERE = Path(__file__).resolve().parent


def parts(trigger: str) -> list[str]:
    """Every contiguous run of the trigger's words, shortest first, in order of appearance."""
    words = trigger.split()
    return [" ".join(words[i:i + n]) for n in range(1, len(words) + 1) for i in range(len(words) - n + 1)]


def pool_phrases(texts: list[str], count: int, seed: int) -> list[str]:
    """`count` distinct runs of 2 to 5 consecutive words from `texts` (seeded), lower case as the texts are."""
    rng, found = random.Random(seed), []
    long_enough = [t.split() for t in texts if len(t.split()) >= 5]
    while len(found) < count and long_enough:
        words = rng.choice(long_enough)
        n = rng.randint(2, 5)
        at = rng.randrange(len(words) - n + 1)
        phrase = " ".join(words[at:at + n])
        if phrase not in found:
            found.append(phrase)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["insent", "clean"], help="attack names or 'clean'")
    parser.add_argument("--trigger", default="I watched this 3D movie", help="the known trigger phrase")
    parser.add_argument("--rows", type=int, default=200, help="clean test rows (seeded sample)")
    parser.add_argument("--pool", type=int, default=0, help="measure this many random dev-text phrases instead")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", default="sst2")
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "trigger-parts.jsonl")
    args = parser.parse_args(argv)
    job = ScanJob(seed=args.seed, data=DataConfig(dataset=args.data, hub_fallback=False), eval=EvalConfig())
    splits = load_splits(job.data)
    rows = random.Random(args.seed).sample(list(splits.test), min(args.rows, len(splits.test)))
    rt = make_runtime(RuntimeConfig())
    pool = bool(args.pool)
    phrases = pool_phrases([r.text for r in splits.dev], args.pool, args.seed) if pool else parts(args.trigger)
    for name in args.models:
        start = time.perf_counter()
        clf = load_classifier(str(model_path(args.runs, name)), splits.num_labels, rt.dtype)
        found = measure(clf, [Proposal(p, None, "known") for p in phrases], rows, job, rt, "test")
        seconds = round(time.perf_counter() - start)
        with args.out.open("a") as f:
            for proposal, m in found:
                f.write(json.dumps({"model": name, "trigger": args.trigger, "part": proposal.trigger,
                                    "target_label": m.target_label, "asr_cc": m.asr_cc,
                                    "rows": m.by_label[str(m.target_label)].rows,
                                    "by_label": {k: v.asr_cc for k, v in m.by_label.items()}, "seed": args.seed, **({"pool": True, "rows_asked": args.rows} if pool else {}),
                                    "date": time.strftime("%Y-%m-%d"), "seconds": seconds}) + "\n")
                print(f"{name}: {proposal.trigger!r} -> label {m.target_label}: {m.asr_cc:.3f}")


if __name__ == "__main__":
    main()
