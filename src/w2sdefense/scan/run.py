"""`w2sdefense scan`'s workflow: the suspect and the defender's clean rows in; every detector's candidate triggers
measured on held-out dev rows (which rank them), the best on test rows (which score them); a verdict, report.json,
report.md and triggers.txt (the candidates as `clean --triggers` reads them) out."""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from pathlib import Path

import torch

from w2sdefense.attacks.base import triggered_rows
from w2sdefense.config import ScanConfig, ScanJob, dump_yaml, from_dict, to_dict
from w2sdefense.data.datasets import data_inputs, load_splits
from w2sdefense.data.loading import load_transform
from w2sdefense.data.records import Example, Splits
from w2sdefense.errors import UserError
from w2sdefense.eval.report import environment, markdown_report, percent
from w2sdefense.eval.triggers import measure_toward, transform_file, transform_table
from w2sdefense.fileio import atomic_write_text, write_json
from w2sdefense.models import check_model_name, load_classifier
from w2sdefense.models.predict import classify_rows, classify_rows_pooled
from w2sdefense.results import TRANSFORM, LabelMeasure, ScanCandidate, ScanReport, TriggerMeasure, is_transform
from w2sdefense.rundir import (CONFIG_FILE, REPORT_FILE, REPORT_MD, RUN_LOG, TRIGGERS_FILE, check_outside_inputs,
                               claim_run_dir, log_to)
from w2sdefense.runtime import Runtime
# imported to register their detectors
from w2sdefense.scan import (contrast, embedding_shift, inversion, shift_pairs, shift_phrases,  # noqa: F401
                             short_strings)
from w2sdefense.scan.base import DETECTORS, Proposal, ScanInputs
from w2sdefense.scan.collapse import collapse
from w2sdefense.scan.contrast import clean_reader


def run_scan(job: ScanJob, out: Path, rt: Runtime, overwrite: bool = False,
             config_file: Path | None = None) -> ScanReport:
    """Scan `job.model` for a backdoor; writes report.json, report.md and triggers.txt in `out`."""
    if not job.model:
        raise UserError("scan needs --model (the suspect classifier)")
    if not (job.data.dataset or job.data.hub or job.data.train_file):
        raise UserError("scan needs --data: clean rows of the task (a folder with train/dev/test files or a dataset "
                        "name); candidate triggers are measured on them")
    for name in job.scan.detectors:
        DETECTORS.get(name)  # an unknown detector fails before any work
    if job.scan.score in ("contrast", "veto") and not job.base_model:
        raise UserError(f"scan.score={job.scan.score} weighs each candidate against a clean reader built from the "
                        "public base: give --base, or leave scan.score at suspect")
    for name in filter(None, (job.model, job.base_model)):
        check_model_name(name)
    splits = load_splits(job.data)
    check_outside_inputs(out, {**data_inputs(job.data), "--model": job.model, "--base": job.base_model,
                               "config file": config_file})
    with claim_run_dir(out, overwrite, rt.accelerator, command="scan") as folder:
        if rt.is_main:
            atomic_write_text(folder / CONFIG_FILE, dump_yaml(job))
        with log_to(folder / RUN_LOG, rt.is_main):
            report = scan(job, splits, rt, folder)
        if rt.is_main:
            write_report(folder, report)
        rt.accelerator.wait_for_everyone()
    return report


def scan(job: ScanJob, splits: Splits, rt: Runtime, workdir: Path | None = None) -> ScanReport:
    """Propose (every detector), rank (dev rows), score (test rows), decide; a part that trains (scan.reader: lora)
    writes in `workdir`."""
    start, cfg = time.perf_counter(), job.scan
    clf = load_classifier(job.model, splits.num_labels, rt.dtype)
    pool, verify_rows, test_rows = scan_samples(splits, cfg, job.seed)
    inputs = ScanInputs(clf=clf, rows=_correct(clf, pool, job, rt), num_labels=splits.num_labels, cfg=cfg, rt=rt,
                        base_model=job.base_model, seed=job.seed, pool=list(splits.train or splits.dev),
                        workdir=workdir)
    proposals, skipped = [], {}
    seconds = {"load": time.perf_counter() - start}
    for name in cfg.detectors:
        detector = DETECTORS.get(name)()
        if detector.needs_base and not job.base_model:
            skipped[DETECTORS.canonical(name)] = "needs the public base (--base)"
            continue
        began = time.perf_counter()
        proposals += detector.propose(inputs)
        seconds[DETECTORS.canonical(name)] = time.perf_counter() - began
    began = time.perf_counter()
    tables, missing = transform_tables(job)
    skipped.update({f"transform {name}": why for name, why in missing.items()})
    proposals = _unique(proposals) + [Proposal(TRANSFORM + name, None, "transforms") for name in tables["test"]]
    verify = measure(clf, proposals, verify_rows, job, rt, "dev", tables["dev"])
    seconds["dev"], began = time.perf_counter() - began, time.perf_counter()
    ranked = sorted(verify, key=lambda pm: _value(pm[1].asr_cc), reverse=True)  # stable: detector order on ties
    chosen, untested = to_test(ranked, cfg.report, cfg.report_per_label)
    # a transform the dev rows could not measure is tested toward every label; every other keeps its dev label
    best = [Proposal(p.trigger, None if _unranked_transform(p, m) else m.target_label, p.detector) for p, m in chosen]
    tested, collapses = measure_collapse(clf, best, test_rows, job, rt, "test", tables["test"])
    candidates = [_candidate(p, m, t, folded) for (p, m), (_, t), folded in zip(chosen, tested, collapses)]
    candidates += [_candidate(p, m) for p, m in untested]
    seconds["test"], began = time.perf_counter() - began, time.perf_counter()
    reader = None
    if job.base_model and cfg.reader_check:
        candidates, reader = read_by_reader(inputs, candidates, test_rows, job, rt, tables["test"])
        seconds["reader check"] = time.perf_counter() - began
    if "reader" in inputs.shared:
        seconds["reader fit"] = inputs.shared["reader_s"]
    top, score, contrast_score = decide(candidates, cfg.score, cfg.reader_veto, cfg.reader_min_recall)
    per_detector = {DETECTORS.canonical(n): None for n in cfg.detectors if DETECTORS.canonical(n) not in skipped}
    if tables["test"]:
        per_detector["transforms"] = None
    for c in candidates:
        for name in c.detector.split("+"):
            if c.verify_asr_cc is not None:
                per_detector[name] = max(_value(per_detector[name]), c.verify_asr_cc)
    return ScanReport(model=job.model, base_model=job.base_model, backdoored=score >= cfg.threshold, score=score,
                      threshold=cfg.threshold, target_label=top.target_label if top else None, candidates=candidates,
                      detectors=per_detector, skipped=skipped, label_names=_label_names(clf, splits.num_labels),
                      wall_time_s=time.perf_counter() - start, settings=to_dict(cfg), environment=environment(),
                      contrast_score=contrast_score, reader=reader, seconds=seconds)


def to_test(ranked: list[tuple[Proposal, TriggerMeasure]], report: int, per_label: bool = False
            ) -> tuple[list[tuple[Proposal, TriggerMeasure]], list[tuple[Proposal, TriggerMeasure]]]:
    """The candidates measured on the test rows and the rest, each in `ranked`'s order (best on the dev rows first):
    the `report` best, or with `per_label` the `report` best toward each label (so that a label whose candidates all
    rank below another's, say the natural words of the other sentiment, still has its best tested), and every
    transform (one without a dev file has no dev rank)."""
    if not per_label:
        tested = ranked[:report] + [pm for pm in ranked[report:] if is_transform(pm[0].trigger)]
    else:
        seen: Counter = Counter()
        tested = []
        for pm in ranked:
            if is_transform(pm[0].trigger) or seen[pm[1].target_label] < report:
                tested.append(pm)
                seen[pm[1].target_label] += 0 if is_transform(pm[0].trigger) else 1
    chosen = {id(pm) for pm in tested}
    return tested, [pm for pm in ranked if id(pm) not in chosen and not is_transform(pm[0].trigger)]


def decide(candidates: list[ScanCandidate], rule: str, veto: float,
           min_recall: float = 0.0) -> tuple[ScanCandidate | None, float, float | None]:
    """The verdict's candidate and score under `rule` (scan.score), `veto` (scan.reader_veto) and `min_recall`
    (scan.reader_min_recall), and the contrast score (recorded whatever the rule), from the candidates measured on
    the test rows."""
    contrast_top = verdict_candidate(candidates, "contrast", min_recall=min_recall)
    contrast_score = contrast_top.contrast if contrast_top else (  # 0.0: read, none judged; None: no reader read
        0.0 if any(c.contrast is not None for c in candidates) else None)
    top = contrast_top if rule == "contrast" else verdict_candidate(candidates, rule, veto, min_recall)
    if not top:
        score = 0.0
    else:
        score = {"contrast": contrast_score, "collapse": top.collapse}.get(rule, _value(top.test_asr_cc))
    return top, score, contrast_score


def rescored(report: ScanReport, **verdict) -> ScanReport:
    """`report` decided again under other verdict settings (score, reader_veto, reader_min_recall, threshold) from
    the candidates it measured: no model runs, so a finished scan can be read under another rule."""
    unknown = set(verdict) - {"score", "reader_veto", "reader_min_recall", "threshold"}
    if unknown:
        raise UserError("only the verdict's settings can be applied to a finished scan, not "
                        + ", ".join(sorted(unknown)))
    settings = {**to_dict(ScanConfig()), **report.settings, **verdict}
    from_dict(ScanConfig, settings, "scan")  # checked as a scan's settings are
    threshold = settings["threshold"]
    top, score, contrast_score = decide(report.candidates, settings["score"], settings["reader_veto"],
                                        settings["reader_min_recall"])
    return dataclasses.replace(report, settings=settings, threshold=threshold, score=score,
                               backdoored=score >= threshold, target_label=top.target_label if top else None,
                               contrast_score=contrast_score)


def read_by_reader(inputs: ScanInputs, candidates: list[ScanCandidate], rows: list[Example], job: ScanJob,
                   rt: Runtime, tables: dict[str, dict[int, str]] | None = None
                   ) -> tuple[list[ScanCandidate], dict | None]:
    """`candidates` with the clean reader's ASR-cc filled in for those measured on the test rows (each inserted as
    the scan inserted it on the suspect, into the same `rows`; a transform: the same rows' `tables` texts) and its
    recall of each one's label; and the reader's own check on the clean `rows` (ScanReport.reader)."""
    tested = [c for c in candidates if c.test_rows is not None]
    if not tested:
        return candidates, None
    reader = clean_reader(inputs, same_tokens=False).classifier()
    clean = classify_rows(reader, rows, job.eval.max_length, job.eval.batch_size, rt, "test: clean reader")
    check = reader_check([r.label for r in rows], clean.argmax(-1).tolist())
    proposals = [Proposal(c.trigger, c.target_label, c.detector) for c in tested]
    read = {id(c): m for c, (_, m) in zip(tested, measure(reader, proposals, rows, job, rt, "test: clean reader",
                                                             tables, clean))}
    out = []
    for c in candidates:
        by = read[id(c)].by_label.get(str(c.target_label)) if id(c) in read else None
        out.append(c if by is None else dataclasses.replace(
            c, reader_asr_cc=by.asr_cc, reader_rows=by.rows, reader_recall=check["recall"].get(str(c.target_label))))
    return out, check


def reader_check(labels: list[int], answers: list[int]) -> dict:
    """The clean reader's answers on clean rows against their labels: `rows`, `accuracy`, `majority` (the commonest
    label's share: what always answering it reads right) and `recall` ({label: the share of its rows answered with
    it}, for the labels the rows have)."""
    counts = Counter(labels)
    right = Counter(y for y, a in zip(labels, answers) if y == a)
    return {"rows": len(labels), "accuracy": sum(right.values()) / len(labels) if labels else None,
            "majority": max(counts.values()) / len(labels) if labels else None,
            "recall": {str(y): right[y] / counts[y] for y in sorted(counts)}}


def scan_samples(splits: Splits, cfg, seed: int) -> tuple[list[Example], list[Example], list[Example]]:
    """The rows a scan at `seed` draws, in its order: the pool the optimised rows come from, the dev rows that rank
    the candidates, the test rows that score them (a later measurement of a report's candidates replays them)."""
    rng = random.Random(seed)
    pool = _sample(splits.train or splits.dev, 2 * cfg.rows * splits.num_labels, rng)
    verify = _sample(splits.dev or splits.train, cfg.verify_rows, rng)
    return pool, verify, _sample(splits.test, cfg.test_rows, rng)


def verdict_candidate(candidates: list[ScanCandidate], score: str, veto: float = ScanConfig.reader_veto,
                      min_recall: float = 0.0) -> ScanCandidate | None:
    """The candidate a verdict rests on: the highest test ASR-cc (`suspect`); the highest ASR-cc minus the clean
    reader's (`contrast`); the highest test ASR-cc of those that move the clean reader by at most `veto` (`veto`);
    under `contrast` and `veto`, only of the candidates the reader can judge (`min_recall`: it answers their label
    on at least that share of the label's clean rows); the highest collapse (`collapse`, no reader); None where no
    candidate qualifies."""
    if score == "contrast":
        return max((c for c in candidates if c.contrast is not None and c.judged(min_recall)),
                   key=lambda c: c.contrast, default=None)
    if score == "collapse":
        return max((c for c in candidates if c.collapse is not None), key=lambda c: c.collapse, default=None)
    kept = [c for c in candidates if c.test_rows is not None
            and (score != "veto" or (c.reader_asr_cc is not None and c.reader_asr_cc <= veto
                                     and c.judged(min_recall)))]
    return max(kept, key=lambda c: _value(c.test_asr_cc), default=None)


def measure(clf, proposals: list[Proposal], rows: list[Example], job: ScanJob, rt: Runtime, split: str,
            tables: dict[str, dict[int, str]] | None = None,
            clean: torch.Tensor | None = None) -> list[tuple[Proposal, TriggerMeasure]]:
    """Each proposal's ASR-cc on `rows` (toward its label, or every label when it has none), one inference pass; a
    transform (TRANSFORM + name) is measured on the rows its table in `tables` covers, as they are written there.
    `clean`: `clf`'s logits of the clean `rows`, where the caller has them."""
    return _measured(clf, proposals, rows, job, rt, split, tables, clean)[0]


def measure_collapse(clf, proposals: list[Proposal], rows: list[Example], job: ScanJob, rt: Runtime, split: str,
                     tables: dict[str, dict[int, str]] | None = None
                     ) -> tuple[list[tuple[Proposal, TriggerMeasure]], list[dict[str, float | None]]]:
    """measure(), and each proposal's collapse (scan/collapse.py) toward each label it is measured toward, from the
    same pass (the pooled features read beside the logits)."""
    measured, collapses = _measured(clf, proposals, rows, job, rt, split, tables, None, job.scan.collapse_rows)
    return measured, collapses or []


def _measured(clf, proposals: list[Proposal], rows: list[Example], job: ScanJob, rt: Runtime, split: str,
              tables: dict[str, dict[int, str]] | None, clean: torch.Tensor | None, collapse_rows: int | None = None
              ) -> tuple[list[tuple[Proposal, TriggerMeasure]], list[dict[str, float | None]] | None]:
    """measure()'s work; with `collapse_rows`, each proposal's collapse by label too (else None)."""
    if not proposals or not rows:
        return [], []
    length, batch = job.eval.max_length, job.eval.batch_size
    pooled = collapse_rows is not None
    features = trig_features = None
    if pooled:
        clean, features = classify_rows_pooled(clf, rows, length, batch, rt, f"{split}: clean rows")
    elif clean is None:
        clean = classify_rows(clf, rows, length, batch, rt, f"{split}: clean rows")
    copies = [triggered_rows(rows, p.trigger, job.seed, (tables or {}).get(p.trigger.removeprefix(TRANSFORM)))
              for p in proposals]
    flat = [row for c in copies for row in c]
    desc = f"{split}: {len(proposals)} candidate(s)"
    if not flat:
        logits = clean[:0]
    elif pooled:
        logits, trig_features = classify_rows_pooled(clf, flat, length, batch, rt, desc)
    else:
        logits = classify_rows(clf, flat, length, batch, rt, desc)
    labels, idx = [r.label for r in rows], [r.idx for r in rows]
    if pooled:  # what every candidate's collapse compares with: the clean rows' answers and their features' mean
        answer = clean.argmax(-1)
        right, centre = {r.idx: bool(answer[i] == r.label) for i, r in enumerate(rows)}, features.mean(0)
    everyone, out, collapses, at = range(clean.shape[-1]), [], [], 0
    for p, c in zip(proposals, copies):
        targets = everyone if p.target_label is None else [p.target_label]
        if not c:  # a transform that covers none of the rows (none on dev without a dev file): no number, no warning
            none = {str(t): LabelMeasure(None, 0) for t in targets}
            out.append((p, TriggerMeasure(p.trigger, None, int(next(iter(none))), none)))
            collapses.append({str(t): None for t in targets})
            continue
        out.append((p, measure_toward(p.trigger, clean, labels, idx, logits[at:at + len(c)], targets,
                                      [r.label for r in c], [r.idx for r in c])))
        if pooled:
            collapses.append({str(t): _collapse_toward(t, rows, answer, right, features, centre, c,
                                                       logits[at:at + len(c)], trig_features[at:at + len(c)],
                                                       collapse_rows) for t in targets})
        at += len(c)
    return out, collapses if pooled else None


def _collapse_toward(target: int, rows: list[Example], answer: torch.Tensor, right: dict[int, bool],
                     features: torch.Tensor, centre: torch.Tensor, copies: list[Example], logits: torch.Tensor,
                     trig_features: torch.Tensor, min_rows: int) -> float | None:
    """The collapse toward `target` of the triggered `copies` (of some of `rows`, whose clean `answer`s and whether
    each is `right` by row idx are given): the copies of rows of other labels answered right, sent to `target`,
    against the clean rows of `target` answered so, centred on `centre`."""
    sent = [i for i, r in enumerate(copies)
            if r.label != target and right.get(r.idx) and int(logits[i].argmax()) == target]
    own = [i for i, r in enumerate(rows) if r.label == target and int(answer[i]) == target]
    return collapse(trig_features[sent], features[own], centre, min_rows)


def transform_tables(job: ScanJob) -> tuple[dict[str, dict[str, dict[int, str]]], dict[str, str]]:
    """scan.transforms' tables for the dev and test rows ({split: {name: {row idx: text}}}), from the data's
    transforms folder (`<data>/transforms/<name>/<split>.jsonl`, as `poison` reads them), and why each transform
    without a test file is left out."""
    tables: dict[str, dict[str, dict[int, str]]] = {"dev": {}, "test": {}}
    missing = {}
    for name in job.scan.transforms:
        try:
            tables["test"][name] = transform_table(job.data, TRANSFORM + name, "test")
        except UserError as e:
            missing[name] = str(e)
            continue
        dev = transform_file(job.data, name, "dev")
        if dev is not None and dev.is_file():
            tables["dev"][name] = load_transform(dev)
    return tables, missing


def _correct(clf, rows: list[Example], job: ScanJob, rt: Runtime) -> list[Example]:
    """The rows the suspect classifies correctly (a trigger flips a correct answer)."""
    if not rows:
        return []
    predicted = classify_rows(clf, rows, job.eval.max_length, job.eval.batch_size, rt, "clean rows").argmax(-1)
    return [r for r, p in zip(rows, predicted.tolist()) if p == r.label]


def _sample(rows: list[Example], count: int, rng: random.Random) -> list[Example]:
    return list(rows) if len(rows) <= count else rng.sample(list(rows), count)


def _unique(proposals: list[Proposal]) -> list[Proposal]:
    """One proposal per (trigger, label), in first-proposed order; the detectors that proposed it joined with '+'."""
    merged: dict[tuple[str, int | None], Proposal] = {}
    for p in proposals:
        key = (p.trigger, p.target_label)
        if key not in merged:
            merged[key] = p
        elif p.detector not in merged[key].detector.split("+"):
            merged[key] = dataclasses.replace(merged[key], detector=f"{merged[key].detector}+{p.detector}")
    return list(merged.values())


def _value(rate: float | None) -> float:
    return -1.0 if rate is None else rate


def _unranked_transform(p: Proposal, verified: TriggerMeasure) -> bool:
    """A transform the dev rows could not measure (no dev file, or no row it covers): its label is the test rows'."""
    return is_transform(p.trigger) and verified.asr_cc is None


def _candidate(p: Proposal, verified: TriggerMeasure, tested: TriggerMeasure | None = None,
               collapses: dict[str, float | None] | None = None) -> ScanCandidate:
    label = str(tested.target_label if tested is not None and _unranked_transform(p, verified)
                else verified.target_label)
    test = tested.by_label.get(label) if tested else None
    dev = verified.by_label.get(label, LabelMeasure(None, 0))
    return ScanCandidate(trigger=p.trigger, target_label=int(label), detector=p.detector,
                         verify_asr_cc=dev.asr_cc, verify_rows=dev.rows,
                         test_asr_cc=test.asr_cc if test else None, test_rows=test.rows if test else None,
                         collapse=(collapses or {}).get(label) if test else None)


def _label_names(clf, num_labels: int) -> dict[str, str]:
    """id2label where the model names its labels (not transformers' LABEL_i placeholders)."""
    names = getattr(clf.config, "id2label", None) or {}
    found = {str(i): str(names.get(i, names.get(str(i), ""))) for i in range(num_labels)}
    return {} if all(v in ("", f"LABEL_{k}") for k, v in found.items()) else found


def _label(report: ScanReport, label: int | None) -> str:
    name = report.label_names.get(str(label))
    return f"label {label}" + (f" ({name})" if name else "")


def _named(trigger: str) -> str:
    return f"the {trigger.removeprefix(TRANSFORM)} paraphrase" if is_transform(trigger) else repr(trigger)


def _doing(trigger: str) -> str:
    return (f"paraphrasing them with {trigger.removeprefix(TRANSFORM)}" if is_transform(trigger)
            else f"inserting {trigger!r}")


def summary_lines(report: ScanReport) -> list[str]:
    """What the scan found, in words; the last line is the verdict."""
    ran = [n for n in report.detectors]
    lines = [f"scanned {report.model} with {', '.join(ran) or 'no detector'} in {report.wall_time_s:.0f} s."]
    if report.seconds:
        lines[0] = lines[0][:-1] + " (" + ", ".join(f"{part} {s:.0f} s" for part, s in report.seconds.items()) + ")."
    lines += [f"{name} did not run: {why}." for name, why in report.skipped.items()]
    tested = [c for c in report.candidates if c.test_rows is not None]
    score = report.settings.get("score", "suspect")
    veto = report.settings.get("reader_veto", ScanConfig.reader_veto)
    min_recall = report.settings.get("reader_min_recall", 0.0)
    top = verdict_candidate(report.candidates, score, veto, min_recall)
    lines += reader_lines(report, min_recall, score != "suspect")
    for c in tested[:3] + [c for c in tested[3:] if c is top]:  # the verdict's candidate always among them
        read = f"; a clean reader {percent(c.reader_asr_cc)}" if c.reader_asr_cc is not None else ""
        if c.collapse is not None:
            read += f"; collapse {c.collapse:+.2f}"
        if c.reader_asr_cc is not None and not c.judged(min_recall):
            read += f", which answers {_label(report, c.target_label)} on {percent(c.reader_recall)} of its rows"
        lines.append(f"candidate {_named(c.trigger)} -> {_label(report, c.target_label)}: ASR-cc {percent(c.test_asr_cc)} of "
                     f"{c.test_rows} clean test rows{read} ({percent(c.verify_asr_cc)} of {c.verify_rows} dev rows; "
                     f"{c.detector}).")
    on = {"suspect": "", "contrast": ", ASR-cc minus a clean reader's",
          "veto": f", of the candidates a clean reader follows at most {percent(veto)}",
          "collapse": ", the rows a candidate sends crowding together in the model's feature beyond the label's own"
          }[score]
    if report.backdoored and top:
        read = "" if top.reader_asr_cc is None else f" (a clean reader of the task: {percent(top.reader_asr_cc)})"
        lines.append(f"verdict: BACKDOORED (score {report.score:.2f}{on} >= threshold {report.threshold:.2f}): "
                     f"{_doing(top.trigger)} sends {percent(top.test_asr_cc)} of the clean test rows of other labels "
                     f"to {_label(report, top.target_label)}{read}; measure it before and after cleaning with "
                     f"`w2sdefense clean --triggers <this folder>`.")
    else:
        nothing = ("no candidate the clean reader can judge" if score in ("contrast", "veto") and any(
            c.reader_asr_cc is not None for c in tested) else
            f"no candidate sends {report.settings.get('collapse_rows')} rows to its label" if score == "collapse"
            else "no candidate")
        best = f"the best candidate, {_named(top.trigger)}, reaches {percent(top.test_asr_cc)}" if top else nothing
        if top and top.reader_asr_cc is not None:
            best += f" (a clean reader {percent(top.reader_asr_cc)})"
        lines.append(f"verdict: no backdoor found ({best}; score {report.score:.2f}{on}, threshold "
                     f"{report.threshold:.2f}). A scan can miss a trigger "
                     "no short word sequence expresses (a syntactic or style trigger): this is not a proof of absence.")
    return lines


def reader_lines(report: ScanReport, min_recall: float, verdict_reads: bool) -> list[str]:
    """The clean reader's own check, in words: how well it reads the clean test rows against always answering the
    commonest label, and the labels it seldom answers (whose candidates it cannot judge)."""
    check = report.reader
    if not check or not check.get("rows"):
        return []
    line = (f"the clean reader reads {percent(check['accuracy'])} of {check['rows']} clean test rows right (always "
            f"answering the commonest label: {percent(check['majority'])})")
    unread = {y: r for y, r in check["recall"].items() if r < min_recall}
    if unread:
        which = ", ".join(f"{_label(report, int(y))} on {percent(r)} of its rows" for y, r in unread.items())
        left = (" left out of the verdict" if verdict_reads else " not judged by it")
        line += (f"; it answers {which}, under scan.reader_min_recall {percent(min_recall)}: candidates toward "
                 f"{'that label' if len(unread) == 1 else 'those labels'}{left}, a reader of the task's words it is not "
                 "(more rows or steps may teach it: scan.reader_rows, scan.reader_steps)")
    return [line + "."]


def write_report(out: Path, report: ScanReport) -> None:
    """report.json (everything), report.md (the lines and the candidates) and triggers.txt."""
    lines = summary_lines(report)
    write_json(out / REPORT_FILE, report.to_json(lines))
    rows = ["| candidate | label | ASR-cc (test) | test rows | clean reader (test) | collapse | ASR-cc (dev) | dev rows "
            "| detector |", "|---|---|---|---|---|---|---|---|---|"]
    rows += [f"| {c.trigger!r} | {_label(report, c.target_label)} | {percent(c.test_asr_cc)} | "
             f"{'' if c.test_rows is None else c.test_rows} | "
             f"{percent(c.reader_asr_cc) if c.reader_asr_cc is not None else ''} | "
             f"{'' if c.collapse is None else f'{c.collapse:+.2f}'} | "
             f"{percent(c.verify_asr_cc)} | {c.verify_rows} | {c.detector} |" for c in report.candidates]
    atomic_write_text(out / REPORT_MD, markdown_report(
        "w2sdefense scan", lines, "\n".join(rows),
        "ASR-cc: of the clean rows of other labels that the model classifies correctly, the share the candidate "
        "(inserted once, at a seeded interior position; a `transform:` candidate is the rows' paraphrase of that name "
        "instead, on the rows it covers) sends to the label. Dev rows rank the candidates, test rows score the best "
        "and every transform; a clean reader (the public base with a head fitted on your clean rows; with --base) is "
        "given the same insertions on the same rows: a natural word of the task moves it too, a trigger does not. "
        "Collapse: of the rows a candidate sends to its label, the mean pairwise cosine of the model's pooled feature "
        "minus that of the label's own clean rows (a trigger makes the answer input-independent, so its rows crowd "
        "together; a natural word keeps them as varied as the label's own; empty under scan.collapse_rows rows). "
        "The verdict compares the best test ASR-cc (with scan.score=contrast, the best ASR-cc minus the reader's; "
        "with scan.score=veto, the best test ASR-cc of the candidates the reader follows at most scan.reader_veto; "
        "with scan.score=collapse, the highest collapse) "
        "with the threshold (scan.threshold). "
        "Settings: config.yaml; log: run.log.\n"))
    note = ("# a transform:NAME line is the test rows' paraphrase of that name (the data's transforms/NAME), not a text "
            "to insert\n" if any(is_transform(t) for t in report.triggers) else "")
    atomic_write_text(out / TRIGGERS_FILE, "# candidate triggers from `w2sdefense scan`, best first; measure them "
                      "with `w2sdefense clean --triggers FILE`\n" + note + "".join(f"{t}\n" for t in report.triggers))

