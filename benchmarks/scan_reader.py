"""The clean reader's view of a finished scan's candidates, without scanning again: the scan's test rows replayed (its
seed and settings), the clean reader a scan with `--base` fits (scan.reader_check), every tested candidate measured on
it, and on the suspect again beside it, which checks the replay (the suspect's ASR-cc must equal the report's, or
nothing is written). Writes the report with the reader's fields and its contrast score filled in.

    python benchmarks/scan_reader.py results/scan-real/insent-suspect-shift-triples.json \\
        --model runs/realistic/insent/suspect/victim --out results/scan-reader/insent-suspect-shift-triples.json

Forward passes only (on SmolLM2: the reader's features on scan.reader_rows rows, then the tested candidates on the
test rows through both models). On another machine a row whose two logits are nearly equal can flip:
`--tolerance-rows 1` accepts a replay that differs by one row and records each difference in the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from w2sdefense.config import ScanJob, build_job, to_dict
from w2sdefense.data.datasets import load_splits
from w2sdefense.models import load_classifier
from w2sdefense.results import ScanReport
from w2sdefense.runtime import make_runtime
from w2sdefense.scan.base import Proposal, ScanInputs
from w2sdefense.scan.run import (measure, read_by_reader, rescored, scan_samples, summary_lines,
                                 transform_tables)

HERE = Path(__file__).resolve().parent


def reread(report: ScanReport, model: str, data: str, seed: int, tolerance: int = 0,
           differences: list | None = None, sets: list[str] = (), workdir: Path | None = None) -> ScanReport:
    """`report` with every tested candidate's clean-reader ASR-cc and the contrast score. The suspect's replayed
    ASR-cc must equal the report's; with `tolerance`, it may differ by that many rows of the same count (another
    machine's kernels can flip a row whose two logits are nearly equal), each difference appended to `differences`."""
    settings = {**report.settings, "reader_check": True}
    job = build_job(ScanJob, {}, {"model": model, "base_model": report.base_model, "data.dataset": data, "seed": seed},
                    [*(f"scan.{k}={json.dumps(v)}" for k, v in settings.items()), *sets])
    rt, splits = make_runtime(job.runtime), load_splits(job.data)
    _, _, test_rows = scan_samples(splits, job.scan, seed)
    clf = load_classifier(model, splits.num_labels, rt.dtype)
    tested = [c for c in report.candidates if c.test_rows is not None]
    tables = transform_tables(job)[0]["test"]  # a scan with scan.transforms measured paraphrases too
    again = measure(clf, [Proposal(c.trigger, c.target_label, c.detector) for c in tested], test_rows, job, rt,
                    "test: the suspect again", tables)
    for c, (_, m) in zip(tested, again):
        by = m.by_label[str(c.target_label)]
        off = abs(round((by.asr_cc - c.test_asr_cc) * by.rows)) if by.rows == c.test_rows else None
        if off is not None and 0 < off <= tolerance:
            differences.append({"trigger": c.trigger, "report": c.test_asr_cc, "replay": by.asr_cc, "rows": by.rows})
        elif off != 0:
            raise SystemExit(f"the replay is not the scan's: {c.trigger!r} gives {by.asr_cc} of {by.rows} rows on the "
                             f"suspect, the report {c.test_asr_cc} of {c.test_rows}; give the scan's --data and --seed "
                             "(its config.yaml has them), and the suspect it read")
    inputs = ScanInputs(clf, [], splits.num_labels, job.scan, rt, report.base_model, seed,
                        pool=list(splits.train or splits.dev), workdir=workdir)
    candidates, check = read_by_reader(inputs, report.candidates, test_rows, job, rt, tables)
    # decided again under its settings (those added since the scan included), the reader's numbers in
    return rescored(dataclasses.replace(report, candidates=candidates, settings=to_dict(job.scan), reader=check))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="a scan's report.json (relative paths: from benchmarks/)")
    parser.add_argument("--model", required=True, help="the suspect that scan read")
    parser.add_argument("--data", default="sst2", help="the scan's --data (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="the scan's seed (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="where the report with the reader's fields goes")
    parser.add_argument("--set", action="append", default=[], metavar="scan.KEY=VALUE",
                        help="a reader setting over the scan's own (e.g. scan.reader=lora)")
    parser.add_argument("--tolerance-rows", type=int, default=0, help="accept a replayed suspect ASR-cc that differs "
                        "from the report's by up to this many rows (recorded in the output); default: none")
    args = parser.parse_args(argv)
    path = args.report if args.report.is_absolute() or args.report.exists() else HERE / args.report
    out = args.out if args.out.is_absolute() else HERE / args.out
    data = json.loads(path.read_text(encoding="utf-8"))
    report = ScanReport.from_json(data)
    if not report.base_model:
        raise SystemExit(f"{path} was scanned without --base: there is no clean reader to build")
    start = time.perf_counter()
    differences: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="w2s-scan-reader-") as work:
        found = reread(report, args.model, args.data, args.seed, args.tolerance_rows, differences, args.set,
                       Path(work))
    out.parent.mkdir(parents=True, exist_ok=True)
    read = {"command": " ".join(["python", "benchmarks/scan_reader.py", *(argv or sys.argv[1:])]),
            "seconds": round(time.perf_counter() - start, 1), "date": time.strftime("%Y-%m-%d"),
            "replay_differences": differences}
    out.write_text(json.dumps({**found.to_json(summary_lines(found)), "reader_check": read}, indent=2) + "\n",
                   encoding="utf-8")
    for c in found.candidates:
        if c.reader_asr_cc is not None:
            print(f"{c.trigger!r} -> {c.target_label}: suspect {c.test_asr_cc:.3f}, clean reader {c.reader_asr_cc:.3f}")
    score = "none" if found.contrast_score is None else f"{found.contrast_score:.3f}"
    print(f"contrast score {score}; written to {out}")


if __name__ == "__main__":
    main()
