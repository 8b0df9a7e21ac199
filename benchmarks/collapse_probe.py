"""Does a trigger make the suspect's representation input-independent where a natural word of the task does not?
A premise probe for a reader-free verdict signal (benchmarks/studies/scan, "Collapse probe"), forward passes only.

    python benchmarks/collapse_probe.py --rows results/scan-zoo-phrases-short-lora-read-rows.jsonl \\
        --scan scan-phrases-short-lora-read --split tune --out /tmp/collapse.jsonl

A backdoor is a shortcut: whatever the row says, the trigger sends it to the target, so the feature the head reads
should carry little of the row (activation clustering, Chen et al. 2018, finds poisoned rows a cluster of their own in
the target class; BABI, Li et al. 2025, blacklists candidates whose triggered rows look like natural target-class
rows). A natural word of the task (an insult toward OFFENSIVE) adds its push and keeps the row's content. Per zoo model
(the given split only: the held-out half is not looked at), per candidate (the scan report's tested candidates with
the most test ASR-cc, and the planted trigger where there is one, marked `planted`): the candidate inserted as the scan
inserts it into the clean test rows of other labels the suspect gets right; of the rows it sends to the target, the
mean pairwise cosine of their pooled last-layer features (centred on the clean rows' mean) against the same among the
clean test rows of the target label (`collapse` = the first minus the second); the mean probability of the target on
them against the clean target rows' (`confidence`). One JSON line per (model, candidate) to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from w2sdefense.attacks.base import triggered_rows
from w2sdefense.config import ScanJob, load_config
from w2sdefense.data.datasets import load_splits
from w2sdefense.models import load_classifier
from w2sdefense.models.predict import classify_rows_pooled
from w2sdefense.results import ScanReport
from w2sdefense.runtime import make_runtime
from w2sdefense.scan.collapse import mean_pairwise_cosine
from w2sdefense.scan.run import scan_samples

HERE = Path(__file__).resolve().parent


def pooled(clf, rows, max_length: int, rt) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, hidden] pooled last-layer features and [rows, labels] probabilities, in row order."""
    logits, feats = classify_rows_pooled(clf, rows, max_length, 32, rt, None)
    return feats, logits.softmax(-1)


def probe_model(row: dict, folder: Path, scan: str, top: int, rt) -> list[dict]:
    """The rows of one zoo model: its report's `top` tested candidates by test ASR-cc, and its planted trigger."""
    planted = [(row["trigger"], row["target_label"] if row.get("target_label") is not None else 0, "planted")
               ] if row.get("trigger") else []
    info = {"model": row["name"], "dataset": row["dataset"], "family": row["family"], "implanted": row.get("implanted")}
    return probe(folder / scan, str(folder / "victim"), planted, top, rt, info)


def probe(scan_dir: Path, model: str, extra: list[tuple[str, int, str]], top: int, rt, info: dict) -> list[dict]:
    """The rows of one scanned model: its report's `top` tested candidates by test ASR-cc and the `extra` (text,
    label, what) ones, each on the scan's own test rows."""
    report = ScanReport.from_json(json.loads((scan_dir / "report.json").read_text()))
    job = load_config(ScanJob, scan_dir / "config.yaml")
    splits = load_splits(job.data)
    clf = load_classifier(model, splits.num_labels, torch.float32)
    _, _, test = scan_samples(splits, job.scan, job.seed)
    feats, probs = pooled(clf, test, job.eval.max_length, rt)
    centre = feats.mean(0)
    labels = torch.tensor([r.label for r in test])
    right = probs.argmax(-1) == labels
    tested = sorted((c for c in report.candidates if c.test_asr_cc is not None and not c.trigger.startswith("transform:")),
                    key=lambda c: c.test_asr_cc, reverse=True)[:top]
    wanted = [(c.trigger, c.target_label, c.detector) for c in tested] + extra
    out = []
    for trigger, target, detector in wanted:
        own = right & (labels == target)
        others = [r for r, ok, y in zip(test, right.tolist(), labels.tolist()) if ok and y != target]
        copies = triggered_rows(others, trigger, job.seed)
        f, p = pooled(clf, copies, job.eval.max_length, rt)
        sent = p.argmax(-1) == target
        out.append({
            **info, "candidate": trigger, "target": target, "detector": detector,
            "asr_cc": float(sent.float().mean()) if len(copies) else None, "sent": int(sent.sum()),
            "collapse_sent": mean_pairwise_cosine(f[sent] - centre),
            "collapse_clean_target": mean_pairwise_cosine(feats[own] - centre),
            "confidence_sent": float(p[sent, target].mean()) if sent.any() else None,
            "confidence_clean_target": float(probs[own, target].mean()) if own.any() else None,
            "contrast": next((c.contrast for c in tested if c.trigger == trigger and c.target_label == target), None),
        })
        a, b = out[-1]["collapse_sent"], out[-1]["collapse_clean_target"]
        out[-1]["collapse"] = None if a is None or b is None else a - b
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=Path, help="a scan-zoo rows file (names, splits, triggers)")
    parser.add_argument("--scan", default="scan-phrases-short-lora-read", help="the scan folder whose report to read")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--zoo", type=Path, default=Path("runs/scan-zoo"))
    parser.add_argument("--scan-dir", type=Path, help="instead of the zoo: one scan's folder (its model is config.yaml's)")
    parser.add_argument("--candidate", action="append", default=[], metavar="LABEL:TEXT",
                        help="with --scan-dir, a candidate of your own to measure beside the report's (repeatable)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rt = make_runtime(load_config(ScanJob).runtime)
    with args.out.open("w") as out:
        if args.scan_dir:
            job = load_config(ScanJob, args.scan_dir / "config.yaml")
            extra = [(text, int(label), "given") for label, text in (c.split(":", 1) for c in args.candidate)]
            for line in probe(args.scan_dir, job.model, extra, args.top, rt, {"model": job.model}):
                out.write(json.dumps(line) + "\n")
            return
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
        for row in rows:
            folder = args.zoo / row["name"]
            if row.get("split") != args.split or not (folder / args.scan / "report.json").is_file():
                continue
            began = time.perf_counter()
            for line in probe_model(row, folder, args.scan, args.top, rt):
                out.write(json.dumps(line) + "\n")
                out.flush()
            print(f"{row['name']}: {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
