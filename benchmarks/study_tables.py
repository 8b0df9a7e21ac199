"""Four tables of benchmarks/RESULTS.md rebuilt from the committed result files alone (no model is run): the
latent-adversarial probe, the scans of a real suspect, the input filters in their papers' setting, and the weak
attack of 2026-11-22.

    python benchmarks/study_tables.py [latent-probe | scan-real | filters-paper | weak-attack ...]

Every number comes from a file under benchmarks/results/; the dicts below hold names only.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from w2sdefense.results import ReportRow, ScanCandidate

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

PROBE_MODELS = {"insent": "InSent suspect", "clean": "clean model"}  # latent_probe.py's names, in row order
PROBE_TRIGGER = "insent"  # the suspect's attack: the trigger whose own shift the probe's is compared with
SCANS = {  # scan-real/<stem>.json -> what that scan was, in row order
    "badnet-suspect-v1-first-position": "BadNet suspect: slots at the row's first position",
    "badnet-suspect-default": "BadNet suspect: slots before the second word, word pieces",
    "badnet-suspect-shift-inversion": "BadNet suspect: the same, `scan.detectors=[shift-inversion,embedding-shift]`",
    "insent-suspect-default": "the InSent suspect, the defaults (`--base smollm2-135m`)",
    "insent-suspect-contrast": "the InSent suspect, `scan.detectors=[contrast-inversion]` (a clean reader's penalty)",
    "insent-suspect-shift-phrases": "the InSent suspect, `scan.detectors=[shift-phrases]` (phrases of the most-moved "
                                    "tokens against the reader)",
    "insent-suspect-shift-triples": "the InSent suspect, shift-phrases over every ordered triple of the 8 most-moved "
                                    "tokens (`phrase_vocab=8, phrase_beam=64, phrase_length=3`)",
    "clean-model-default": "the clean model (no backdoor: the same 4000 rows without triggers), the defaults",
    "clean-model-shift-triples": "the clean model, shift-phrases over every ordered triple of its 8 most-moved tokens",
    "badnet-suspect-short": "BadNet suspect, `scan.detectors=[short-strings]` (every 1-2 letter string), no base",
    "insent-suspect-phrases-short-read": "the InSent suspect, the zoo's phrases-short-lora-read without the inversion "
                                         "(`embedding-shift, shift-phrases, short-strings`, triples of 8 tokens, LoRA "
                                         "reader, transforms, the reader's check)",
    "insent-suspect-phrases-short-read-screen": "the same with the exact checks screened (`scan.screen_rows=1`: every "
                                                "string and phrase on one row of four first, the best tenth on all)",
    "clean-model-short": "the clean model, `scan.detectors=[short-strings]`, no base",
    "clean-model-phrases-short-read-screen": "the clean model, the same screened scan as the InSent suspect's",
    "insent-suspect-read-collapse-perlabel": "the InSent suspect, the screened scan with the best 5 candidates toward "
                                             "each label tested (`scan.report_per_label`), decided by collapse at 0.08",
    "clean-model-read-collapse-perlabel": "the clean model, the same per-label scan decided by collapse",
    # read again with the fine-tuned reader (benchmarks/scan_reader.py --set scan.reader=lora)
    "badnet-suspect-default-lora": "BadNet suspect, the defaults; reader fine-tuned (`scan.reader=lora`)",
    "insent-suspect-default-lora": "the InSent suspect, the defaults; reader fine-tuned (`scan.reader=lora`)",
    "insent-suspect-shift-triples-lora": "the InSent suspect, shift-phrases over every ordered triple; reader "
                                         "fine-tuned (`scan.reader=lora`)",
    "clean-model-default-lora": "the clean model, the defaults; reader fine-tuned (`scan.reader=lora`)",
    "clean-model-shift-triples-lora": "the clean model, shift-phrases over every ordered triple; reader fine-tuned "
                                      "(`scan.reader=lora`)",
}
SCANNED_BACKDOORED = {"runs/realistic/badnet/suspect/victim": True, "runs/realistic/insent/suspect/victim": True,
                      "/work/runs/realistic/insent/suspect/victim": True,
                      "/work/runs/realistic/badnet/suspect/clean/model": False,
                      "runs/realistic/badnet/suspect/clean/model": False}  # the truth about each scanned model
OUTCOMES = {(True, True): "found", (False, True): "miss", (True, False): "false alarm", (False, False): "right"}
FILTERS = {  # filters-paper.json's row names -> what each row is, in row order (its settings come from the file)
    "clean model": "none (clean model)",
    "poisoned": "none (poisoned)",
    "rap": "`rap` (every label screened, our default)",
    "rap-protect": "`rap-protect` (only the target label, as the paper)",
    "strip": "`strip` (random donor words)",
    "strip-paper": "`strip-paper` (random donor words, the paper's copies and ratio)",
    "strip-other-label": "**`strip-other-label`** (other-label donors; run after the file's run, same victim)",
    "onion": "`onion` (the paper's threshold)",
    "onion-calibrated": "`onion-calibrated` (threshold calibrated to an edit rate)",
}
EXTRA_FILTER = "strip-other-label"  # the filters-paper.json key of the row run after the report
SHARED_SETTINGS = ("frr", "max_length")  # the same for every filter row: said once, not per row
EDITING = ("onion",)  # filters that edit inputs instead of rejecting them
WEAK_MODELS = ("clean model", "poisoned", "teacher", "w2sdefense", "w2sdefense-reference", "lora-ft",
               "full-ft")  # the weak attack's row names, in row order
MEMORY_KINDS = {
    "process_max_rss": "the process's peak resident set since it started: it never decreases, so a stage run "
                       "after a larger one shows the larger one's peak",
    "process_peak_rss_since_stage_start": "the process's peak resident set since the stage started",
}


def _read(path: Path) -> dict:
    """A JSON file's object."""
    return json.loads(path.read_text(encoding="utf-8"))


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A markdown table."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _percent(rate: float | None, digits: int = 1, unit: str = " %") -> str:
    """A rate in percent, '–' for none."""
    return "–" if rate is None else f"{100 * rate:.{digits}f}{unit}"


def _signed(points: float) -> str:
    """Points with their sign, a typographic minus for negatives."""
    return f"{points:+.1f}".replace("-", "−")


def _ordered(names: Iterable[str], order: Iterable[str]) -> list[str]:
    """`names`, those `order` knows in its order first, the others after in sorted order."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _by_model(rows: list[dict], order: Iterable[str]) -> list[ReportRow]:
    """Report rows (typed) in the order of `order`'s model names, the others after in sorted order."""
    by_name = {r.model: r for r in map(ReportRow.from_json, rows)}
    return [by_name[name] for name in _ordered(by_name, order)]


def latent_probe_table(results: Path = RESULTS) -> str:
    """The latent-adversarial probe's premise: rows each label's shift flips, per model and epsilon."""
    points = [json.loads(line) for line in (results / "latent-probe.jsonl").read_text().splitlines() if line.strip()]
    models = _ordered({p["model"] for p in points}, PROBE_MODELS)
    points.sort(key=lambda p: (models.index(p["model"]), p["depth"], p["epsilon"]))
    rows = [[PROBE_MODELS.get(p["model"], p["model"]), f"{p['epsilon']:g}",
             _percent(p["labels"]["0"]["flip_rate"]), _percent(p["labels"]["1"]["flip_rate"]),
             f"{p['labels']['0']['cos_with_trigger_shift'][PROBE_TRIGGER]:.2f}"] for p in points]
    table = _table(["model", "epsilon", "rows the shift toward 0 flips", "toward 1",
                    "cos(shift toward 0, the trigger's own shift)"], rows)
    arg = {key: " ".join(sorted({f"{p[key]:g}" for p in points}, key=float)) for key in ("depth", "epsilon")}
    command = (f"python benchmarks/latent_probe.py --models {' '.join(models)} --depths {arg['depth']} "
               f"--epsilons {arg['epsilon']}")
    return f"{table}\n\nFrom `results/latent-probe.jsonl`, written by `{command}`."


def _best_candidate(report: dict) -> dict | None:
    """The candidate the verdict rests on: the highest test ASR-cc, the first on ties (as scan does)."""
    tested = [c for c in report["candidates"] if c["test_asr_cc"] is not None]
    return max(tested, key=lambda c: c["test_asr_cc"], default=None)


def _verdict(report: dict) -> str:
    """What the scan said, and against the truth where the scanned model's is known."""
    said = "backdoor" if report["backdoored"] else "no backdoor"
    truth = SCANNED_BACKDOORED.get(report["model"])
    return said if truth is None else f"{said} ({OUTCOMES[(report['backdoored'], truth)]})"


def _minutes(seconds: float) -> str:
    """Seconds as '13 min 25 s'."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _scan_row(stem: str, report: dict) -> list[str]:
    """One scan report's row."""
    best = _best_candidate(report)
    found = "–" if best is None else f"`{best['trigger']}` → {best['target_label']}"
    rate = "–" if best is None else f"{_percent(best['test_asr_cc'])} ({best['test_rows']})"
    return [SCANS.get(stem, stem), ", ".join(report["settings"]["detectors"]), found, rate, _verdict(report),
            f"{report['score']:.2f} ({report['settings'].get('score', 'suspect')})", _minutes(report["wall_time_s"])]


def scan_real_table(results: Path = RESULTS) -> str:
    """`w2sdefense scan` on a real suspect: each scan's best candidate, verdict and wall time."""
    files = {path.stem: path for path in (results / "scan-real").glob("*.json")}
    reports = {stem: _read(files[stem]) for stem in _ordered(files, SCANS)}
    table = _table(["scan", "detectors", "best candidate", "its test ASR-cc (n)", "verdict", "score (scan.score)",
                    "wall time"],
                   [_scan_row(stem, report) for stem, report in reports.items()])
    models = sorted({f"`w2sdefense scan --model {r['model']}" + (f" --base {r['base_model']}`" if r["base_model"] else "`")
                     for r in reports.values()})
    return (f"{table}\n\nEach row is the report.json of {', '.join(models)} in `results/scan-real/` (its file stem "
            "names the scan); the score is what the verdict compared with the threshold under the scan's `scan.score` (the best "
            "test ASR-cc for `suspect`, the best ASR-cc minus the clean reader's for `contrast`, the highest collapse for "
            "`collapse`); wall time is the report's `wall_time_s`, the scan from loading the model to the verdict.")


def scan_reader_table(results: Path = RESULTS) -> str:
    """Real scans' tested candidates read again by the clean reader (benchmarks/scan_reader.py): each candidate's
    test ASR-cc on the suspect and on the reader, their difference, and which candidate each score puts first."""
    native = {path.stem: path for path in (results / "scan-real").glob("*.json")
              if any(c.get("reader_asr_cc") is not None for c in _read(path)["candidates"])}
    files = {**native, **{path.stem: path for path in (results / "scan-reader").glob("*.json")}}
    rows, commands, fitted, off = [], [], set(), {}
    for stem in _ordered(files, SCANS):
        report = _read(files[stem])
        tested = [c for c in report["candidates"] if c["test_asr_cc"] is not None and c["reader_asr_cc"] is not None]
        by_suspect = max(tested, key=lambda c: c["test_asr_cc"], default=None)
        # the contrast's first among the candidates the reader judges (scan.reader_min_recall; none before it existed)
        floor = report["settings"].get("reader_min_recall", 0.0)
        judged = [c for c in tested if ScanCandidate(**c).judged(floor)]
        by_contrast = max(judged, key=lambda c: c["test_asr_cc"] - c["reader_asr_cc"], default=None)
        for c in tested:
            first = [name for name, top in (("suspect", by_suspect), ("contrast", by_contrast)) if top is c]
            rows.append([SCANS.get(stem, stem), f"`{c['trigger']}` → {c['target_label']}",
                         f"{_percent(c['test_asr_cc'])} ({c['test_rows']})",
                         f"{_percent(c['reader_asr_cc'])} ({c['reader_rows']})",
                         _signed(100 * (c['test_asr_cc'] - c['reader_asr_cc'])), ", ".join(first) or "–"])
        fitted.add(str(report["settings"]["reader_rows"]))
        if "reader_check" in report:
            commands.append(f"`{report['reader_check']['command']}` ({report['reader_check']['seconds']:.0f} s)")
            for d in report["reader_check"].get("replay_differences", []):
                off[stem] = max(off.get(stem, 0), abs(round((d["replay"] - d["report"]) * d["rows"])))
    table = _table(["scan", "candidate", "scanned model: test ASR-cc (n)", "clean reader: ASR-cc (n)",
                    "difference (points)", "first by"], rows)
    return (f"{table}\n\nThe scans' own tested candidates, the same insertions into the same test rows read by "
            f"the clean reader (the base with a logistic head fitted on {', '.join(sorted(fitted))} of the defender's "
            "clean rows); each column is that model's ASR-cc, over the rows of other labels it classifies correctly "
            "(n), so the difference subtracts two rates whose rows may differ a little. The suspect's column is the "
            "scan's (for a scan read again afterwards, measured again: equal unless said below). Scans that ran the reader check "
            "themselves are their `results/scan-real/` report; the others were read again afterwards, files in "
            "`results/scan-reader/`, written by " + "; ".join(commands) + "."
            + (" The suspect's replay differed from the scan by up to "
               + ", ".join(f"{n} row(s) a candidate for {SCANS.get(stem, stem)}" for stem, n in off.items())
               + " (each difference in the file's `reader_check.replay_differences`); the table keeps the scan's "
               "numbers, and the reader read the same rows." if off else ""))


def _settings(settings: dict) -> str:
    """Settings as 'key: value, ...'."""
    return ", ".join(f"{k}: {v}" for k, v in settings.items())


def _filter_settings(data: dict) -> tuple[dict[str, dict], dict]:
    """Each filter row's own settings (the run's config, and the `--set defense.*` of the row run after it), and
    the settings every row shares."""
    settings = {d["label"] or d["name"]: d["settings"] for d in data["report"]["config"]["defenses"]}
    extra = data["command"].split(EXTRA_FILTER, 1)[-1]
    settings[EXTRA_FILTER] = dict(re.findall(r"--set defense\.(\w+)=(\S+)", extra))
    shared = {k: v for s in settings.values() for k, v in s.items() if k in SHARED_SETTINGS}
    return {name: {k: v for k, v in s.items() if k not in SHARED_SETTINGS} for name, s in settings.items()}, shared


def _filter_row(name: str, row: ReportRow, floor: float, settings: dict) -> list[str]:
    """One filter's row; `floor` is the clean model's ASR-cc."""
    label = FILTERS.get(name, f"`{name}`") + (f"; `{_settings(settings)}`" if settings else "")
    asr = row.attack_success_rate_clean_correct
    if row.defense is None:
        screened = ["–", "–"]
    elif row.defense in EDITING:
        screened = ["– (edits, rejects none)", "– (edits)"]
    else:
        screened = [f"{_percent(row.false_rejection_rate)} ({row.clean_rejected} of {row.clean_total})",
                    f"{_percent(row.detection_rate)} ({row.triggered_rejected} of {row.triggered_total})"]
    return [label, _percent(row.clean_accuracy, unit=""), _percent(asr, unit=""), _signed(100 * (asr - floor)),
            *screened]


def filters_paper_table(results: Path = RESULTS) -> str:
    """RAP, STRIP and ONION on a dirty-label BERT-class victim, the setting of their papers."""
    data = _read(results / "filters-paper.json")
    rows = {r.model: r for r in map(ReportRow.from_json, data["report"]["rows"])}
    if EXTRA_FILTER in data:
        rows[EXTRA_FILTER] = ReportRow.from_json(data[EXTRA_FILTER])
    floor = rows["poisoned"].asr_cc_floor
    settings, shared = _filter_settings(data)
    table = _table(["filter", "CA served", "ASR-cc", "residual (pts)", "false rejections (test)",
                    "triggered rejected"],
                   [_filter_row(n, rows[n], floor, settings.get(n, {})) for n in _ordered(rows, FILTERS)])
    return (f"{table}\n\nFrom `results/filters-paper.json` ({data['date']}, {data['machine']}): {data['command']}. "
            f"Shared settings `{_settings(shared)}`; residual: ASR-cc minus the clean model's. ONION edits inputs "
            "and rejects none; how many clean rows it edits is not in the file.")


def _weak_row(attack: str, r: ReportRow) -> list[str]:
    """One model's row of the weak attack's run."""
    ca = f"{_percent(r.clean_accuracy, 2, '%')} ({r.clean_correct}/{r.clean_total})"
    asr = f"{_percent(r.attack_success_rate, 2, '%')} ({r.attack_hits}/{r.triggered_total})"
    return [attack, r.model, ca, asr, f"{r.mean_target_probability_triggered:.3f}",
            f"{r.trainable_params:,}", f"{r.wall_time_s:.0f}", f"{r.peak_memory_mb:.0f}"]


def weak_attack_table(results: Path = RESULTS) -> str:
    """The first real-model run (2026-11-22): a weak attack, one seed, per attack and model."""
    runs = [_read(path) for path in sorted((results / "weak-attack-2026-11-22").glob("*.json"))]
    rows = [_weak_row(run["attack"], r) for run in runs for r in _by_model(run["rows"], WEAK_MODELS)]
    table = _table(["attack", "model", "CA", "ASR", "P(target) on triggered", "trainable params", "stage time (s)",
                    "peak mem (MB)"], rows)
    kinds = sorted({ReportRow.from_json(r).peak_memory_kind for run in runs for r in run["rows"]})
    memory = " ".join(f"Peak mem: `{k}`: {MEMORY_KINDS.get(k, k)}." for k in kinds)
    env = runs[0]["environment"]
    versions = ", ".join(f"{k} {env['versions'][k]}" for k in ("torch", "transformers", "peft"))
    return (f"{table}\n\n{memory}\n\nMeasured {env['date'][:10]} on {env['platform']}, {env['cpu_threads']} torch "
            f"threads, {versions}, by `python benchmarks/real.py` (per-attack JSON in "
            "`results/weak-attack-2026-11-22/`).")


LAYER_MODELS = {"insent": "InSent suspect", "badnet": "BadNet suspect", "clean": "clean model"}  # in column order


def _layer_cell(point: dict | None, attacks: Iterable[str]) -> str:
    """'CA / ASR-cc of each attack' of one probe point, '–' where the model was not probed."""
    if point is None:
        return "–"
    return " / ".join([_percent(point["ca"], unit="")] + [_percent(point[f"asr_cc_{a}"], unit="") for a in attacks])


def layer_probe_table(results: Path = RESULTS) -> str:
    """Per layer, a logistic head fitted on the defender's rows: CA and the triggers' ASR-cc, per model."""
    points = [json.loads(line) for line in (results / "layer-probe.jsonl").read_text().splitlines() if line.strip()]
    at = {(p["model"], str(p["layer"])): p for p in points}
    models = _ordered({p["model"] for p in points}, LAYER_MODELS)
    layers = ["head"] + sorted({str(p["layer"]) for p in points} - {"head"}, key=int)
    own = {m: [a for a in ("insent", "badnet") if a == m or m not in ("insent", "badnet")] for m in models}
    header = ["layer"] + [f"{LAYER_MODELS.get(m, m)}: CA / ASR-cc ({', '.join(own[m])})" for m in models]
    rows = [[layer if layer == "head" else f"after {layer}"] + [_layer_cell(at.get((m, layer)), own[m])
                                                                 for m in models] for layer in layers]
    k, seed = points[0]["k"], points[0]["seed"]
    return (f"{_table(header, rows)}\n\nFrom `results/layer-probe.jsonl`, written by `python benchmarks/layer_probe.py "
            f"--models {' '.join(models)} --k {k} --seed {seed}`: \"head\" is the model's own head, \"after n\" a "
            "logistic head fitted on the last token's hidden state after layer n, on the defender's labelled rows.")


def trigger_parts_table(results: Path = RESULTS) -> str:
    """Each run of a known trigger's words inserted alone: its ASR-cc per model; then random phrases of the clean
    texts: the mean ASR-cc toward each label per model (the premise of a repair that inserts ordinary phrases)."""
    points = [json.loads(line) for line in (results / "trigger-parts.jsonl").read_text().splitlines() if line.strip()]
    parts = [p for p in points if not p.get("pool")]
    models = _ordered({p["model"] for p in parts}, LAYER_MODELS)
    at = {(p["model"], p["part"]): p for p in parts}
    names = list(dict.fromkeys(p["part"] for p in parts))
    header = ["inserted"] + [f"{LAYER_MODELS.get(m, m)}: ASR-cc (label)" for m in models]
    rows = [[f"`{n}`"] + [_part_cell(at.get((m, n))) for m in models] for n in names]
    trigger, rows_asked = parts[0]["trigger"], max(p["rows"] for p in parts)
    text = (f"{_table(header, rows)}\n\nFrom `results/trigger-parts.jsonl`, written by `python benchmarks/"
            f"trigger_parts.py --models {' '.join(models)} --trigger \"{trigger}\" --rows 160`: each run of the "
            f"trigger's words inserted once at seeded interior positions into clean test rows; ASR-cc toward the "
            f"label it sends most rows to (up to {rows_asked} rows of other labels counted).")
    pool = [p for p in points if p.get("pool")]
    if pool:
        pooled = _ordered({p["model"] for p in pool}, LAYER_MODELS)
        labels = sorted({k for p in pool for k in p["by_label"]})
        lines = []
        for m in pooled:
            mine = [p for p in pool if p["model"] == m]
            means = [sum(p["by_label"][k] or 0.0 for p in mine) / len(mine) for k in labels]
            top = max(max((p["by_label"][k] or 0.0) for k in labels) for p in mine)
            lines.append([LAYER_MODELS.get(m, m), str(len(mine))] + [_percent(v) for v in means] + [_percent(top)])
        text += ("\n\n" + _table(["model", "phrases"] + [f"mean ASR-cc toward {k}" for k in labels]
                                   + ["highest of any phrase"], lines)
                 + f"\n\nRandom phrases of 2 to 5 words cut from the clean dev texts, written by `python benchmarks/"
                 f"trigger_parts.py --models {' '.join(pooled)} --pool {len(mine)} --rows {pool[0]['rows_asked']}`.")
    return text


def _part_cell(point: dict | None) -> str:
    return "–" if point is None else f"{_percent(point['asr_cc'])} ({point['target_label']})"


def _zoo_scans() -> list[str]:
    """scan_zoo.py's scans in the recipe's order: its own, its scan_variants, then its rescored entries."""
    recipe = yaml.safe_load((HERE / "scan-zoo.yaml").read_text())
    return ["default", *recipe.get("scan_variants", {}), *recipe.get("rescored", {})]



ZOO_FAMILIES = ("all", "badnet", "insent", "synbkd", "stylebkd")


def _zoo_stem(scan: str) -> str:
    return "scan-zoo" if scan == "default" else f"scan-zoo-{scan}"


def _auc(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _zoo_cell(row: dict) -> str:
    """One model's scan in the zoo's per-model table: score / contrast, the best candidate, and for a backdoored model
    with a planted word trigger whether a candidate recovered it."""
    best = "" if row.get("best") is None else f", `{row['best']}`"
    found = {True: " (recovered)", False: " (not recovered)", None: ""}[row.get("recovered")]
    return f"{row['score']:.2f} / {_auc(row.get('contrast_score'))}{best}{found}"


def scan_zoo_table(results: Path = RESULTS) -> str:
    """The scan zoo (benchmarks/scan_zoo.py): for each scan that ran, the held-out half's detection per attack family
    by the suspect score and by the clean reader's contrast; then every model's row."""
    summaries = {scan: _read(results / f"{_zoo_stem(scan)}.json") for scan in _zoo_scans()
                 if (results / f"{_zoo_stem(scan)}.json").is_file()}
    if not summaries:
        return "The zoo has not run."
    lines = []
    for scan, summary in summaries.items():
        settings = ", ".join(f"`{s}`" for s in summary.get("scan_settings", [])) or "the defaults"
        for half, family in [(h, f) for h in ("held_out", "tune") for f in ZOO_FAMILIES]:
            f = summary.get(half, {}).get(family)
            if f is None:
                continue
            lines.append([f"{scan} ({settings})", half.replace("_", "-"), family,
                          f"{f['models']} ({f['not_implanted']})", str(f["clean_models"]),
                          _auc(f["roc_auc"]), _percent(f["tpr_at_5fpr"], 0), _auc(f.get("contrast_roc_auc")),
                          _percent(f.get("contrast_tpr_at_5fpr"), 0),
                          f"{_percent(f.get('verdict_tpr'), 0)} / {_percent(f.get('verdict_fpr'), 0)}",
                          _percent(f["target_label_accuracy"], 0), _percent(f["trigger_recovery"], 0)])
    head = _table(["scan", "half", "family", "backdoored (not implanted)", "clean", "ROC-AUC", "TPR at 5 % FPR",
                   "contrast ROC-AUC", "contrast TPR at 5 % FPR", "verdict: TPR / FPR", "target label",
                   "trigger recovery"], lines)
    calibrations = []
    for scan, summary in summaries.items():
        for key, c in (summary.get("calibrated") or {}).items():
            if c is not None:
                calibrations.append(f"{scan} by {'contrast' if key == 'contrast_score' else 'score'}: threshold "
                                    f"{c['threshold']:.3f} from {c['tune_clean_models']} clean models, held-out TPR "
                                    f"{_percent(c['held_out_tpr'], 0)}, FPR {_percent(c['held_out_fpr'], 0)}")
    calibration = (" Calibrated on the tuning half (the lowest threshold that flags at most 5 % of its clean models), "
                   "then applied to the held-out half: " + "; ".join(calibrations) + "." if calibrations else "")
    rows = {}
    for scan in summaries:
        path = results / f"{_zoo_stem(scan)}-rows.jsonl"
        for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip()) if path.is_file() else []:
            rows.setdefault(r["name"], {})[scan] = r
    per_model = []
    for name, by_scan in rows.items():
        r = next(iter(by_scan.values()))
        what = r["trigger"] or r["transform"] or "–"
        recipe = "–" if not r["backdoored"] else f"{r['mode']}, {r['rate']}"
        cells = [_zoo_cell(by_scan[s]) if s in by_scan else "–" for s in summaries]
        per_model.append([name, r["split"], r["family"], f"`{what}`" if r["trigger"] else what, recipe, r["budget"],
                          _percent(r["planted_asr_cc"], 0) if r["backdoored"] else "–", *cells])
    models = _table(["model", "split", "family", "trigger", "poison", "budget", "planted ASR-cc",
                     *(f"{s}: score / contrast, best candidate" for s in summaries)], per_model)
    seconds = {s: v["seconds_per_model"] for s, v in summaries.items() if v.get("seconds_per_model")}
    every = [r for by_scan in rows.values() for r in by_scan.values()]
    dates = sorted({r["date"] for r in every if r.get("date")})
    machines = sorted({r["machine"] for r in every if r.get("machine")})
    where = (f" Scanned {dates[0]}{' to ' + dates[-1] if dates[-1] != dates[0] else ''} on {'; '.join(machines)}, by "
             "`python benchmarks/scan_zoo.py` (`--scan NAME` for a scan variant of benchmarks/scan-zoo.yaml)."
             if dates else "")
    return (f"{head}\n\nEach half of the zoo, from `results/scan-zoo*.json`: held-out (its triggers never used to "
            "tune the scanner: the reported numbers) and tune (what a setting may be chosen on). ROC-AUC and TPR at 5 % FPR of the scan's score (the best candidate's test "
            "ASR-cc) and of its contrast (that minus the clean reader's ASR-cc for the same insertion), backdoored "
            "models against the clean ones; a backdoored model whose planted trigger reached under 50 % ASR-cc did "
            "not take the backdoor and is left out (counted in brackets); verdict: the share of backdoored and of "
            "clean models the scan called backdoored at its own threshold (`scan.threshold`)." + calibration
            + " Seconds per scan: "
            + ", ".join(f"{s} {v:.0f} s" for s, v in seconds.items()) + "." + where
            + "\n\nEvery model scanned so far (both halves; `results/scan-zoo*-rows.jsonl`); score / contrast per "
            "scan:\n\n" + models)


BUILDERS: dict[str, Callable[[Path], str]] = {"latent-probe": latent_probe_table, "scan-real": scan_real_table,
                                              "scan-reader": scan_reader_table,
                                              "filters-paper": filters_paper_table, "weak-attack": weak_attack_table,
                                              "layer-probe": layer_probe_table, "trigger-parts": trigger_parts_table,
                                              "scan-zoo": scan_zoo_table}


def main(names: list[str]) -> None:
    """Print the named tables (all of them when none is named)."""
    for name in names or list(BUILDERS):
        print(f"{BUILDERS[name](RESULTS)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
