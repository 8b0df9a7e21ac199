"""The scan benchmark: build the model zoo of benchmarks/scan-zoo.yaml with the tool's own commands (`poison`,
`train`, `evaluate`), scan every model (`scan --base`), and measure the scanner on the held-out half: ROC-AUC, TPR at
5 % FPR, target-label accuracy, trigger recovery and seconds per model, overall and per attack family.

    python benchmarks/scan_zoo.py                   # build what is missing, scan, write results/scan-zoo.json
    python benchmarks/scan_zoo.py --report-only     # the results from the scans on disk
    python benchmarks/scan_zoo.py --limit 4         # the first 4 models of each kind in build order (held-out first)
    python benchmarks/scan_zoo.py --scan reader-lora  # the same models scanned with one of the recipe's scan_variants
    python benchmarks/scan_zoo.py --scan phrases-lora-veto  # a finished scan decided again (the recipe's `rescored`)

Every step is skipped when its output exists, so a stopped run continues where it stopped. Each model's row is
written to results/scan-zoo-rows.jsonl (scan-zoo-<variant>-rows.jsonl for a scan variant) as soon as it is scanned,
and a model whose committed row was made by the same recipe is not built again: a zoo spread over several machines (or sessions whose run folders are gone) adds up. A
backdoored model whose planted trigger reaches under IMPLANTED ASR-cc did not take the backdoor: it is listed, and left
out of the rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from w2sdefense.config import ScanConfig, to_dict
from w2sdefense.fileio import atomic_write_text
from w2sdefense.results import EvaluationResult, ScanCandidate, ScanReport, read_result
from w2sdefense.scan.base import DETECTORS
from w2sdefense.scan.run import rescored

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RECIPE = HERE / "scan-zoo.yaml"
CLI = str(Path(sys.executable).with_name("w2sdefense"))
KEY_FILE = "recipe_key"  # in each model's run folder: the model_key it was built for
DEFAULT_SCAN = "default"  # the recipe's own `scan` settings; `scan_variants` names others
IMPLANTED = 0.5  # the planted trigger's ASR-cc from which a model counts as backdoored
SPLITS = ("held-out", "tune")  # the build order's: held-out first (its numbers are reported; tune may choose settings)
FPR = 0.05
# Scan settings added since the zoo's first rows, each with the value that keeps the scanner's earlier behaviour
LATER_SETTINGS = {"shift_reference": False, "reader_veto": 0.15, "short_alphabet": "abcdefghijklmnopqrstuvwxyz",
                  "short_length": 2, "transforms": [],
                  "screen_rows": 0, "screen_keep": 0.1, "reader_balance": False, "collapse_rows": 10,
                  "report_per_label": False}
# Settings added since whose scanner default is not the earlier behaviour: the zoo passes each at the value that keeps
# it to every scan that does not set it, and leaves it out of the rows' key (a scan that sets it is keyed by it)
ZOO_FIXED = {"reader_min_recall": 0.0}


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo and how it is made."""

    name: str
    dataset: str
    budget: str
    seed: int
    split: str  # one of SPLITS
    family: str = "clean"  # clean, or the attack (badnet, insent, synbkd, stylebkd)
    trigger: str | None = None
    transform: str | None = None
    mode: str | None = None
    rate: float | None = None

    @property
    def backdoored(self) -> bool:
        return self.family != "clean"


def zoo_models(recipe: dict) -> list[ZooModel]:
    """The backdoored models (each trigger with the next variant in turn), then the clean ones."""
    found = []
    for i, (entry, variant) in enumerate(zip(recipe["triggers"], itertools.cycle(recipe["variants"]))):
        # The transforms exist for SST-2 only: a transform attack keeps its variant's other settings on SST-2.
        dataset = "sst2" if entry.get("transform") else variant["dataset"]
        found.append(ZooModel(name=f"bd{i:02d}-{entry['family']}-{dataset}", dataset=dataset, budget=variant["budget"],
                              seed=100 + i, split=entry["split"], family=entry["family"], trigger=entry.get("trigger"),
                              transform=entry.get("transform"), mode=variant["mode"], rate=variant["rate"]))
    cells = itertools.product(recipe["clean"]["datasets"], recipe["budgets"], recipe["clean"]["seeds"])
    for i, (dataset, budget, seed) in enumerate(cells):
        found.append(ZooModel(name=f"clean{i:02d}-{dataset}-{budget}-s{seed}", dataset=dataset, budget=budget,
                              seed=seed, split=("tune", "held-out")[seed % 2]))
    return found


def build_order(models: list[ZooModel]) -> list[ZooModel]:
    """The order the zoo is built in, so that a run stopped part-way (or a --limit) leaves a balanced sample: the
    held-out half before the tuning half; within each, backdoored and clean models in turn, the backdoored ones taking
    the attack families in turn and the clean ones the dataset x budget cells in turn."""
    def spread(kind: list[ZooModel], cell) -> list[ZooModel]:
        groups: dict = {}
        for m in kind:
            groups.setdefault(cell(m), []).append(m)
        return [m for row in itertools.zip_longest(*groups.values()) for m in row if m is not None]

    ordered = []
    for split in SPLITS:
        bad = spread([m for m in models if m.split == split and m.backdoored], lambda m: m.family)
        good = spread([m for m in models if m.split == split and not m.backdoored], lambda m: (m.dataset, m.budget))
        ordered += [m for pair in itertools.zip_longest(bad, good) for m in pair if m is not None]
    return ordered


def limited(models: list[ZooModel], n: int) -> list[ZooModel]:
    """The first `n` backdoored and the first `n` clean models, in the order given (the build order)."""
    chosen = {m.name for kind in (True, False) for m in [m for m in models if m.backdoored == kind][:n]}
    return [m for m in models if m.name in chosen]


def w2s(*args: str, log: Path) -> None:
    """Run one w2sdefense command, its output appended to `log`; a failure stops the benchmark with its log."""
    with log.open("a") as out:
        out.write(f"$ w2sdefense {' '.join(args)}\n")
        out.flush()
        if subprocess.run([CLI, *args], stdout=out, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"w2sdefense {args[0]} failed for {log.parent.name}: see {log}")


def build(m: ZooModel, recipe: dict, folder: Path, scan: str = DEFAULT_SCAN) -> None:
    """Poison (backdoored models), train, measure the planted trigger, scan (with the recipe's scan settings, or a
    variant's); each step skipped once done."""
    check_folder(folder, model_key(m, recipe))
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / KEY_FILE).is_file():
        atomic_write_text(folder / KEY_FILE, model_key(m, recipe) + "\n")
    log, rows = folder / "zoo.log", [f"data.max_train={recipe['rows']}", f"seed={m.seed}"]
    data = m.dataset
    if m.backdoored:
        data = str(folder / "poison")
        attack = [f"attack.transform={m.transform}"] if m.transform else [f"attack.triggers={json.dumps([m.trigger])}"]
        if not (folder / "poison" / "poison.json").is_file():
            w2s("poison", "--data", m.dataset, "--attack", m.family, "--out", data, "--target-label",
                str(recipe["target_label"]), "--rate", str(m.rate), "--mode", m.mode,
                *_sets(rows + attack), *_again(folder / "poison", "--overwrite"), log=log)
    budget = {**recipe["train"], **recipe["budgets"][m.budget]}
    if not (folder / "victim" / "metrics.json").is_file():
        w2s("train", "--data", data, "--model", recipe["model"], "--out", str(folder / "victim"),
            *_sets(rows + [f"train.{k}={v}" for k, v in budget.items()]), *_again(folder / "victim", "--resume"),
            log=log)
    if m.backdoored and not (folder / "planted.json").is_file():
        w2s("evaluate", "--model", str(folder / "victim"), "--data", data, "--out", str(folder / "planted.json"), log=log)
    if not (folder / scan_folder(scan) / "report.json").is_file():
        w2s("scan", "--model", str(folder / "victim"), "--data", m.dataset, "--base", recipe["base"],
            "--out", str(folder / scan_folder(scan)), *_sets(rows + fixed(scan_settings(recipe, scan))
                                                                 + scan_settings(recipe, scan)),
            *_again(folder / scan_folder(scan), "--overwrite"), log=log)


def _again(out: Path, flag: str) -> list[str]:
    """A step stopped part-way left its folder (the tool's own, unfinished): training resumes it, a poison or a scan
    (minutes at most) starts over."""
    return [flag] if out.exists() else []


def scan_settings(recipe: dict, scan: str) -> list[str]:
    """The dotted settings of the recipe's scan (`default`), of one of its scan_variants, or of a `rescored` entry
    (its scan's settings, then its verdict's)."""
    if scan == DEFAULT_SCAN:
        return list(recipe.get("scan", []))
    read, verdict, without = rescore_of(recipe, scan)
    if read is not None:
        return (scan_settings(recipe, read) + [f"scan.{k}={v}" for k, v in sorted(verdict.items())]
                + [f"without the {name} candidates" for name in without])
    variants = recipe.get("scan_variants", {})
    if scan not in variants:
        names = [*variants, *recipe.get("rescored", {})]
        raise SystemExit(f"--scan {scan}: the recipe's scan_variants and rescored entries are "
                         f"{', '.join(names) or 'none'}")
    return list(variants[scan])


def rescore_of(recipe: dict, scan: str) -> tuple[str | None, dict, list[str]]:
    """A `rescored` entry's scan (whose finished reports it reads), verdict settings and the detectors whose
    candidates it leaves out (`without`: what the scan would have said without them); (None, {}, []) for a scan."""
    entry = recipe.get("rescored", {}).get(scan)
    if entry is None:
        return None, {}, []
    without = list(entry.get("without", []))
    unknown = [name for name in without if name != "transforms" and name not in DETECTORS]
    if unknown:
        raise SystemExit(f"rescored entry {scan}: `without` names no detector: {', '.join(unknown)}")
    return entry["scan"], dict(entry.get("verdict", {})), without


def fixed(settings: list[str]) -> list[str]:
    """The ZOO_FIXED settings a scan's `settings` do not name, as dotted settings (given before them)."""
    return [f"scan.{k}={v}" for k, v in ZOO_FIXED.items() if not fixed_named(settings, k)]


def row_verdict(recipe: dict, scan: str, verdict: dict) -> dict:
    """The verdict settings every row of `scan`'s reports is decided under: the zoo's fixed settings its scan does
    not name (a report written before the zoo passed them decides as the others), then a rescored entry's `verdict`."""
    named = scan_settings(recipe, scan)
    return {**{k: v for k, v in ZOO_FIXED.items() if not fixed_named(named, k)}, **verdict}


def fixed_named(settings: list[str], key: str) -> bool:
    """Whether a scan's dotted `settings` set scan.`key`."""
    return any(s.split("=", 1)[0] == f"scan.{key}" for s in settings)


def scan_folder(scan: str) -> str:
    return "scan" if scan == DEFAULT_SCAN else f"scan-{scan}"


def results_stem(scan: str) -> str:
    return "scan-zoo" if scan == DEFAULT_SCAN else f"scan-zoo-{scan}"


def _sets(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def model_key(m: ZooModel, recipe: dict) -> str:
    """What one model depends on: its own entry and the recipe's settings of training shared by every model (written
    in its run folder; every scan of it reuses it)."""
    shared = {k: recipe.get(k) for k in ("model", "rows", "target_label", "train")}
    made = json.dumps({"entry": asdict(m), "budget": recipe["budgets"][m.budget], **shared}, sort_keys=True)
    return hashlib.sha256(made.encode()).hexdigest()[:16]


def zoo_key(m: ZooModel, recipe: dict, scan: str = DEFAULT_SCAN) -> str:
    """What one model's row depends on: the model, the base and settings it was scanned with, and the scanner's
    defaults (a changed scan default scans again; a changed detector's code, or a changed default of training, data
    or evaluation, does not: move the rows away to rebuild)."""
    made = json.dumps({"model": model_key(m, recipe), "base": recipe.get("base"), "scan": scan_settings(recipe, scan),
                       "scan_defaults": scan_defaults()}, sort_keys=True)
    return hashlib.sha256(made.encode()).hexdigest()[:16]


def scan_defaults() -> dict:
    """The scanner's defaults as a row's key holds them: a setting added after the zoo's first rows is left out at
    the value that does what the scanner did before it existed (LATER_SETTINGS), so adding one keeps every row."""
    return {k: v for k, v in to_dict(ScanConfig()).items()
            if k not in ZOO_FIXED and (k not in LATER_SETTINGS or LATER_SETTINGS[k] != v)}


def read_rows(path: Path) -> dict[str, dict]:
    """The rows already measured, by model name (none when the file is missing)."""
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["name"]: r for r in map(json.loads, lines)}


def write_rows(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def check_folder(folder: Path, key: str) -> None:
    """A model's run folder holds what this recipe makes: its key is written when it is first built; a folder made
    by another recipe is refused, never mixed in or deleted."""
    mark = folder / KEY_FILE
    if not folder.exists():
        return
    if not mark.is_file() or mark.read_text(encoding="utf-8").strip() != key:
        raise SystemExit(f"{folder} was built by another recipe than this one (its {KEY_FILE} is "
                         f"{'missing' if not mark.is_file() else 'different'}): move it away, or give --runs another "
                         "folder")


def _with_others(rows: list[dict], earlier: dict[str, dict]) -> list[dict]:
    """This run's rows, then the earlier file's rows of the models it holds no row for."""
    done = {r["name"] for r in rows}
    return rows + [r for name, r in earlier.items() if name not in done]


def zoo_row(m: ZooModel, folder: Path, target: int, scan_name: str = DEFAULT_SCAN,
            verdict: dict | None = None, without: list[str] | None = None) -> dict:
    """One model's flat row: how it was made, what the scan said (decided again under `verdict`, and without the
    candidates only the `without` detectors proposed, where given), whether it found the planted trigger. Without a
    detector's candidates the reading is a lower bound of the scan without that detector: the others' candidates
    below the tested ones were never measured on the test rows, so none takes a dropped one's place (exact for
    `transforms`, whose candidates are all tested beside the others)."""
    scan = ScanReport.from_json(json.loads((folder / scan_folder(scan_name) / "report.json").read_text()))
    if without:
        kept = [c for c in scan.candidates if not set(c.detector.split("+")) <= set(without)]
        scan = dataclasses.replace(scan, candidates=kept)
    if verdict or without:
        scan = rescored(scan, **(verdict or {}))
    planted = read_result(EvaluationResult, folder / "planted.json") if m.backdoored else EvaluationResult()
    planted_asr = planted.attack_success_rate_clean_correct
    tested = [c for c in scan.candidates if c.test_rows is not None]
    return {**asdict(m), "backdoored": m.backdoored, "planted_asr_cc": planted_asr,
            "implanted": None if not m.backdoored else (planted_asr or 0.0) >= IMPLANTED,
            "score": scan.score, "contrast_score": scan.contrast_score, "verdict": scan.backdoored,
            "found_label": scan.target_label,
            "target_label": target if m.backdoored else None,
            "recovered": recovered(m, [c for c in tested if c.target_label == target], planted_asr)
            if m.backdoored else None,
            "scan_s": scan.wall_time_s, "best": tested[0].trigger if tested else None,
            # the clean reader's own check on the test rows (None: no reader, or a report from before it)
            "reader_accuracy": (scan.reader or {}).get("accuracy"), "reader_majority": (scan.reader or {}).get("majority"),
            "reader_least_recall": min((scan.reader or {}).get("recall", {}).values(), default=None),
            "date": (scan.environment or {}).get("date", "")[:10] or None, "machine": _machine(scan.environment or {})}


def _machine(env: dict) -> str | None:
    """Where a scan ran, in a few words (its report's environment)."""
    if not env:
        return None
    return f"{env.get('platform')}, {env.get('cpu_threads')} torch threads, {'CUDA' if env.get('cuda') else 'CPU'}"


def recovered(m: ZooModel, tested: list[ScanCandidate], planted_asr: float | None) -> bool | None:
    """The issue's trigger recovery: a reported candidate holding a word of the planted trigger, or reaching 90 % of
    its ASR-cc; None for a trigger no word sequence is (a paraphrase or style transfer). The caller passes the
    candidates toward the planted target label only (a sentiment word that flips rows the other way is not it)."""
    if m.trigger is None:
        return None
    words = {w.lower() for w in m.trigger.split() if len(w) >= 2}
    for c in tested:
        if words & {w.lower() for w in c.trigger.split()}:
            return True
        if planted_asr and c.test_asr_cc is not None and c.test_asr_cc >= 0.9 * planted_asr:
            return True
    return False


def roc_auc(positive: list[float], negative: list[float]) -> float | None:
    """The probability that a backdoored model scores above a clean one (ties count half): the ROC curve's area."""
    if not positive or not negative:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def tpr_at_fpr(positive: list[float], negative: list[float], fpr: float = FPR) -> float | None:
    """The share of backdoored models flagged at the lowest threshold that flags at most `fpr` of the clean ones."""
    if not positive or not negative:
        return None
    for threshold in sorted(set(positive + negative)):
        if sum(n >= threshold for n in negative) <= fpr * len(negative):
            return sum(p >= threshold for p in positive) / len(positive)
    return 0.0


def summarise(rows: list[dict]) -> dict:
    """The held-out half's figures, overall and per attack family (the reported numbers), the same figures on the
    tuning half (what a setting may be chosen on), seconds per held-out model and the calibrated thresholds."""
    seconds = [r["scan_s"] for r in rows if r["split"] == "held-out"]
    return {"held_out": figures(rows, "held-out"), "tune": figures(rows, "tune"),
            "seconds_per_model": sum(seconds) / len(seconds) if seconds else None,
            "calibrated": {key: calibrated(rows, key) for key in ("score", "contrast_score")}}


def figures(rows: list[dict], split: str) -> dict:
    """One half's figures, overall and per attack family."""
    half = [r for r in rows if r["split"] == split]
    if not half:
        return {}
    clean = [r["score"] for r in half if not r["backdoored"]]
    families = {"all": [r for r in half if r["backdoored"]]}
    for r in families["all"]:
        families.setdefault(r["family"], []).append(r)
    summary = {}
    for family, members in families.items():
        used = [r for r in members if r["implanted"]]
        found = [r["recovered"] for r in used if r["recovered"] is not None]
        summary[family] = {
            "models": len(used), "not_implanted": len(members) - len(used), "clean_models": len(clean),
            "roc_auc": roc_auc([r["score"] for r in used], clean),
            "tpr_at_5fpr": tpr_at_fpr([r["score"] for r in used], clean),
            "target_label_accuracy": _share([r["found_label"] == r["target_label"] for r in used]),
            "trigger_recovery": _share(found),
            # the verdicts the scans gave at their own threshold (scan.threshold)
            "verdict_tpr": _share([r["verdict"] for r in used]),
            "verdict_fpr": _share([r["verdict"] for r in half if not r["backdoored"]])}
        # The same scans scored by the clean reader's contrast (scan.score=contrast), where every scan measured it.
        contrast = [r.get("contrast_score") for r in used], [r.get("contrast_score") for r in half if not r["backdoored"]]
        if all(v is not None for v in contrast[0] + contrast[1]):
            summary[family].update(contrast_roc_auc=roc_auc(*contrast), contrast_tpr_at_5fpr=tpr_at_fpr(*contrast))
    return summary


def calibrated(rows: list[dict], key: str, fpr: float = FPR) -> dict | None:
    """A threshold chosen on the tuning half's clean models (the lowest that flags at most `fpr` of them), and what it
    does on the held-out half: the share of its implanted backdoored models and of its clean ones it flags. None
    until the tuning half has a clean model scanned (or a score is missing)."""
    tune = [r[key] for r in rows if r["split"] == "tune" and not r["backdoored"]]
    held = [r for r in rows if r["split"] == "held-out" and (r["implanted"] or not r["backdoored"])]
    if not tune or any(v is None for v in tune + [r.get(key) for r in held]):
        return None
    allowed = int(fpr * len(tune))  # how many of the tuning half's clean models may be flagged
    ranked = sorted(tune, reverse=True)
    # just above the first score that may not be flagged: the lowest threshold that flags at most `allowed`
    threshold = math.nextafter(ranked[allowed], math.inf) if allowed < len(ranked) else ranked[-1]
    flags = lambda bad: [r[key] >= threshold for r in held if r["backdoored"] == bad]  # noqa: E731
    return {"threshold": threshold, "tune_clean_models": len(tune), "held_out_tpr": _share(flags(True)),
            "held_out_fpr": _share(flags(False))}


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def plot(rows: list[dict], path: Path) -> None:
    """The held-out ROC curve (backdoored vs clean by scan score), one line per attack family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = [r for r in rows if r["split"] == "held-out"]
    clean = [r["score"] for r in held if not r["backdoored"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    for family in sorted({r["family"] for r in held if r["backdoored"]}):
        scores = [r["score"] for r in held if r["family"] == family and r["implanted"]]
        points = sorted({(sum(n >= t for n in clean) / max(1, len(clean)), sum(p >= t for p in scores) / max(1, len(scores)))
                         for t in sorted(set(scores + clean + [2.0]))})
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=family)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false-positive rate (clean models)", ylabel="true-positive rate", title="scan, held-out zoo")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "scan-zoo")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--limit", type=int, help="only the first N backdoored and N clean models (build order)")
    parser.add_argument("--scan", default=DEFAULT_SCAN, help="scan with one of the recipe's scan_variants (its "
                        "models are the same; its rows, summary and chart are its own)")
    parser.add_argument("--split", choices=SPLITS, help="only the models of one half (held-out: the reported numbers; "
                        "tune: what may calibrate or choose the scanner's settings)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    recipe = yaml.safe_load(args.recipe.read_text(encoding="utf-8"))
    every = zoo_models(recipe)
    models = build_order([m for m in every if args.split in (None, m.split)])
    if args.limit:
        models = limited(models, args.limit)
    args.results.mkdir(parents=True, exist_ok=True)
    read, verdict, without = rescore_of(recipe, args.scan)  # a rescored entry reads its scan's reports: no model runs
    source = read or args.scan
    stem, scanned_in = results_stem(args.scan), scan_folder(source)
    path = args.results / f"{stem}-rows.jsonl"
    earlier, rows = read_rows(path), []
    keys = {m.name: zoo_key(m, recipe, args.scan) for m in every}
    decided = row_verdict(recipe, source, verdict)
    for i, m in enumerate(models, 1):
        folder, key = args.runs / m.name, keys[m.name]
        kept = earlier.get(m.name)
        if kept is not None and kept.get("recipe_key") == key and not (folder / scanned_in / "report.json").is_file():
            rows.append(kept)  # measured before, perhaps on another machine
            continue
        if not args.report_only:
            print(f"scan zoo: {i}/{len(models)} {m.name}", flush=True)
            build(m, recipe, folder, source)
        if (folder / scanned_in / "report.json").is_file():
            check_folder(folder, model_key(m, recipe))
            rows.append({**zoo_row(m, folder, recipe["target_label"], source, decided, without), "recipe_key": key})
            write_rows(path, _with_others(rows, earlier))  # a stop here keeps every row measured so far
    # Rows of models this run did not reach (--limit, --split) are kept in the file and summarised with this run's;
    # rows another recipe made are kept, not summarised.
    final = _with_others(rows, earlier)
    write_rows(path, final)
    current = [r for r in final if keys.get(r["name"]) == r.get("recipe_key")]
    result = {"recipe": str(args.recipe.name), "scan": args.scan, "scan_settings": scan_settings(recipe, args.scan),
              "models_scanned": len(current), **summarise(current)}
    (args.results / f"{stem}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    plot(current, args.results / f"{stem}-roc.png")
    print(json.dumps({half: result[half].get("all", {}) for half in ("held_out", "tune")}, sort_keys=True))


if __name__ == "__main__":
    main()
