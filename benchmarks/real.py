"""The paper's experiment at laptop scale: smollm2-135m student, minilm-l6 teacher, SST-2, three attacks,
every defense over several seeds, floor-aware.

    python benchmarks/real.py --attacks badnet --seeds 42 43 44     # one attack, three defense seeds
    python benchmarks/real.py                                       # all three attacks (hours on 2 cores)
    python benchmarks/real.py --attacks badnet --variants benchmarks/variants-badnet.yaml --seeds 42
    python benchmarks/real.py --attacks badnet --variants benchmarks/variants-badnet.yaml --pick w2s-beta0 --seeds 42
    python benchmarks/real.py --report-only                         # rebuild RESULTS.md, summary.json, charts

Each attack runs `configs/sst2-<attack>.yaml` through `w2sdefense run` (finished stages are re-used,
so an interrupted run continues). The victim (and the clean reference model and the teacher) is
trained once per attack with the preset's seed and shared by every defense seed: the seeds vary the
defense (adapter initialisation, batch order), not the attack. The clean model and the teacher do
not depend on the attack and are shared across attacks too. Variant rows (`--variants`) are extra
defense rows laid over the preset's defense of the same name, run at every seed given like the
preset's rows (`--variants V --pick L --seeds 43 44` adds seeds to a variant run at 42).

Writes `benchmarks/results/<attack>.json` (every row, the config, versions, machine, date),
`benchmarks/results/summary.json` (one value per seed), the main and variant tables in
`benchmarks/RESULTS.md`, the README's generated blocks (headline, main table, comparison),
`results/chart.png` (means with error bars) and the
per-step curves of each attack's first-seed W2SDefense and lora-ft runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from w2sdefense.config import DefenseConfig, ExperimentConfig, from_dict, load_config, merge_dicts, read_yaml, to_dict
from w2sdefense.eval.metrics import NOT_DEFINED
from w2sdefense.fileio import write_json
from w2sdefense.results import (DefenseResult, ExperimentReport, ReportRow, Result, TrainingResult, read_report,
                                read_result, stage_result)
from w2sdefense.rundir import CLEAN_ROW, POISONED_ROW

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EARLIER = RESULTS / "earlier"  # results JSONs of victims the presets no longer train
ATTACKS = ["badnet", "insent", "synbkd"]
SHARED_STAGES = ("clean", "teacher")  # their inputs do not include the attack
# The rows of the main table, when present: the method, the full reset to the public base without and with the
# teacher, the no-teacher control, and PEFT alone at W2SDefense's 80 steps and at the reset's 160.
MAIN_DEFENSES = ("w2sdefense", "fine-mixing-r0", "w2s-reset-r0", "w2s-shrink", "lora-ft", "lora-ft-e2")


@dataclass(frozen=True, kw_only=True)
class RowMeta(Result):
    """This script's record of one defense row: the table row it belongs to (`variant`: its label without the
    seed), its seed, its defense, whether it is a variant, and its settings and its preset's as configured."""

    variant: str | None = None
    seed: int | None = None
    defense: str | None = None
    is_variant: bool | None = None
    settings: dict | None = None  # the row's DefenseConfig (config.to_dict), as the script laid it over the preset
    preset: dict | None = None  # the preset's DefenseConfig of the same defense, when the row ran

    @property
    def group(self) -> str:
        """The row of the comparison table it belongs to (rows recorded before `variant` was: their defense)."""
        return self.variant or self.defense


@dataclass(frozen=True, kw_only=True)
class AttackResults(ExperimentReport):
    """benchmarks/results/<attack>.json: one attack's report (every row, the config, where it was measured) and this
    script's records beside it: the run folder, the victim's stage key, each row's RowMeta, and the victim's
    per-evaluation history and kept step. Written and read here only."""

    attack: str | None = None
    run_dir: str | None = None
    victim: str | None = None  # the victim stage's key: rows of another victim are never merged
    row_meta: dict[str, RowMeta] = dataclasses.field(default_factory=dict)
    victim_history: list | None = None
    victim_selected_step: int | None = None

    @property
    def seed(self) -> int:
        """The preset's seed (the victim's, and the defenses' first)."""
        return self.config["seed"]

    def to_json(self) -> dict:
        """The JSON object written to disk."""
        return {**super().to_json(), "row_meta": {label: m.to_json() for label, m in self.row_meta.items()}}

    @classmethod
    def from_json(cls, data: dict) -> AttackResults:
        """Results from their JSON object."""
        results = super().from_json({k: v for k, v in data.items() if k != "row_meta"})
        meta = {label: RowMeta.from_json(m) for label, m in data.get("row_meta", {}).items()}
        return dataclasses.replace(results, row_meta=meta)


def read_results(path: Path) -> AttackResults:
    """A results JSON of this script."""
    return read_result(AttackResults, path)


def experiment(attack: str, runs: Path, seeds: list[int], variants: list[dict],
               only: list[str] | None = None, sets: list[str] = ()) -> tuple[ExperimentConfig, dict[str, RowMeta]]:
    """The preset for `attack` (its defenses named in `only`, or all) with each defense repeated per seed,
    plus the variant rows (per seed too). Returns the config and, per row label, its variant name and seed.
    """
    cfg = load_config(ExperimentConfig, HERE.parent / "configs" / f"sst2-{attack}.yaml", sets)
    cfg = dataclasses.replace(cfg, output_dir=str(runs / cfg.name))
    presets = cfg.defenses
    cfg = dataclasses.replace(cfg, defenses=[d for d in presets if only is None or d.row_name in only])
    base = list(cfg.defenses)
    for variant in variants:
        template = next(d for d in presets if d.name == variant.get("name", "w2sdefense"))
        base.append(from_dict(DefenseConfig, merge_dicts(to_dict(template), variant), "variant"))
    rows, meta = [], {}
    for d in base:
        is_variant = d not in cfg.defenses
        for seed in seeds:
            # Rows are named by their seed; a variant at the preset's seed keeps its bare label (the name its
            # rows had when variants ran at one seed only, so those rows and run folders are still found).
            label = d.row_name if is_variant and seed == cfg.seed else f"{d.row_name}-s{seed}"
            rows.append(dataclasses.replace(d, label=label, seed=None if seed == cfg.seed else seed))
            meta[label] = RowMeta(variant=d.row_name, seed=seed, defense=d.name, is_variant=is_variant,
                                  settings=to_dict(d), preset=to_dict(next(p for p in presets if p.name == d.name)))
    return dataclasses.replace(cfg, defenses=rows), meta


def share(stages_from: Path | None, to: Path) -> None:
    """Copy attack-independent finished stages (their stage.json keys still decide re-use)."""
    if stages_from is None:
        return
    for name in SHARED_STAGES:
        src, dst = stages_from / name, to / name
        if (src / "stage.json").is_file() and not dst.exists():
            shutil.copytree(src, dst)


def run_attack(attack: str, runs: Path, seeds: list[int], variants: list[dict], first_run: Path | None,
               only: list[str] | None = None, sets: list[str] = ()) -> Path:
    """Run one attack's experiment and record its results JSON (merged with rows recorded earlier)."""
    from w2sdefense.pipeline import run_experiment

    cfg, meta = experiment(attack, runs, seeds, variants, only, sets)
    out = Path(cfg.output_dir)
    share(first_run, out)
    run_experiment(cfg)
    report = read_report(out)
    path = RESULTS / f"{attack}.json"
    old = read_results(path) if path.is_file() else None
    victim, rows = _victim_key(out), report.rows
    if old is not None and old.victim == victim:
        # The same victim: keep rows of earlier invocations (other seeds or variants) not rerun now.
        new = report.by_model()
        rows = rows + [r for r in old.rows if r.model not in new]
        meta = {**old.row_meta, **meta}
    elif old is not None:
        retire(path)
    results = AttackResults(**_fields(report), rows=rows, attack=attack, run_dir=str(out), victim=victim,
                            row_meta=meta)
    write_json(path, results.to_json())
    add_victim_history(path)
    return out


def _fields(report: ExperimentReport) -> dict:
    """A report's fields, to make results of it."""
    return {f.name: getattr(report, f.name) for f in dataclasses.fields(ExperimentReport)}


def retire(path: Path) -> Path:
    """Move a results JSON whose victim the preset no longer trains to results/earlier/ (its rows stay
    reported, under "Earlier victims"), named by attack and the date it was last measured."""
    result = read_results(path)
    dest = EARLIER / f"{result.attack}-{result.environment['date'][:10]}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        raise SystemExit(f"{dest} exists already: move it aside before retiring {path}")
    path.rename(dest)
    return dest


def load_earlier() -> dict[str, AttackResults]:
    """Retired results JSONs, by a label naming the attack and when its rows were last measured."""
    found = sorted(EARLIER.glob("*.json"))
    return {f"{p.stem.split('-', 1)[0]} (earlier victim, measured to {p.stem.split('-', 1)[1]})": read_results(p)
            for p in found}


def draw_curves(path: Path) -> None:
    """curves-<attack>-<row>.png: the first seed's W2SDefense and lora-ft curves, step 0 being the poisoned model.

    Drawn from the run folder's metrics (so runs made before the step-0 point existed get it); an attack whose
    run folder is not on this machine keeps its committed PNG.
    """
    from w2sdefense.eval.probe import start_point, write_curves

    results = read_results(path)
    run_dir = Path(results.run_dir or "")
    victim = stage_result(TrainingResult, run_dir / "victim")
    if victim is None:
        return
    start = start_point(victim)
    for row in ("w2sdefense", "lora-ft"):
        seeded = sorted((m.seed, label) for label, m in results.row_meta.items()
                        if m.variant == row and not m.is_variant)
        record = stage_result(DefenseResult, run_dir / "defenses" / seeded[0][1]) if seeded else None
        if record is not None:
            write_curves(record.history or [], RESULTS / f"curves-{path.stem}-{row}.png",
                         f"{results.config['name']}: {seeded[0][1]}", record.selected_step, start=start)


def _victim_key(run_dir: Path) -> str | None:
    marker = run_dir / "victim" / "stage.json"
    return json.loads(marker.read_text())["key"] if marker.is_file() else None


def merge_rows(other: Path, renames: list[str]) -> None:
    """Add the rows of another invocation's results JSON (same attack, same victim) to ours, renamed
    `old=new` where a label would clash (e.g. rows run under an earlier preset)."""
    theirs = read_results(other)
    path = RESULTS / f"{theirs.attack}.json"
    ours = read_results(path)
    if ours.victim != theirs.victim:
        raise SystemExit(f"{other} was measured on another victim than {path}; not merged")
    names = dict(r.split("=", 1) for r in renames)
    rows, row_meta = list(ours.rows), dict(ours.row_meta)
    for row in theirs.rows:
        label = names.get(row.model, row.model)
        meta = theirs.row_meta.get(row.model)
        if meta is None or label in {r.model for r in rows}:
            continue  # stages shared by both (clean, poisoned, teacher) or a clash left unrenamed
        rows.append(dataclasses.replace(row, model=label))
        row_meta[label] = dataclasses.replace(meta, variant=names.get(meta.variant, meta.variant), is_variant=True)
    write_json(path, dataclasses.replace(ours, rows=rows, row_meta=row_meta).to_json())


def load_results() -> dict[str, AttackResults]:
    """Every recorded results JSON, by attack, in the paper's order."""
    found = {p.stem: read_results(p) for p in RESULTS.glob("*.json") if p.stem in ATTACKS}
    return {a: found[a] for a in ATTACKS if a in found}


def add_victim_history(path: Path) -> None:
    """Record the victim's per-evaluation history in a results JSON, when its run folder holds that victim."""
    result = read_results(path)
    victim = stage_result(TrainingResult, Path(result.run_dir) / "victim")
    if result.victim == _victim_key(Path(result.run_dir)) and victim is not None:
        history = dataclasses.replace(result, victim_history=victim.history, victim_selected_step=victim.selected_step)
        write_json(path, history.to_json())


def summary(results: dict[str, AttackResults]) -> dict:
    """The summary.json shape: one value per seed, fractions in [0, 1]."""
    first = next(iter(results.values()))
    out = {"student": first.config["victim"]["model"], "teacher": first.config["teacher"]["model"],
           "dataset": "sst2", "attacks": {}}
    for attack, result in results.items():
        rows = result.by_model()
        clean, poisoned = rows.get(CLEAN_ROW), rows[POISONED_ROW]
        entry = {
            "clean": {"ca": [clean.clean_accuracy], "asr_cc": [clean.attack_success_rate_clean_correct]}
            if clean else None,
            "poisoned": {"ca": [poisoned.clean_accuracy], "asr_cc": [poisoned.attack_success_rate_clean_correct],
                         "asr": [poisoned.attack_success_rate]},
            "defenses": {},
        }
        for label, meta in sorted(result.row_meta.items(), key=lambda kv: kv[1].seed):
            if label not in rows:
                continue
            r = rows[label]
            d = entry["defenses"].setdefault(meta.variant, {"ca": [], "asr_cc": [], "asr": [], "seeds": [],
                                                            "steps": r.steps, "is_variant": meta.is_variant})
            d["ca"].append(r.clean_accuracy)
            d["asr_cc"].append(r.attack_success_rate_clean_correct)
            d["asr"].append(r.attack_success_rate)
            d["seeds"].append(meta.seed)
        out["attacks"][attack] = entry
    return out


def _in_points(values: list[float | None], floor: float | None = 0.0) -> list[float]:
    """The values in points above `floor`, leaving out rates over zero rows (None; all of them when the floor
    is one)."""
    return [] if floor is None else [100 * (v - floor) for v in values if v is not None]


def _pts(value: float | None, floor: float | None = 0.0, spec: str = ".1f") -> str:
    """One rate in points above `floor`, or n/a when it or the floor is over zero rows."""
    points = _in_points([value], floor)
    return format(points[0], spec) if points else NOT_DEFINED


def _mean_sd(points: list[float], of: int, sign: str = "") -> str:
    """mean ± sd (n) of `points` (sd needs two), saying how many of the `of` values were n/a; n/a for none."""
    if not points:
        return NOT_DEFINED
    sd = f" ± {statistics.stdev(points):.1f}" if len(points) > 1 else ""
    missing = f", {of - len(points)} {NOT_DEFINED}" if of > len(points) else ""
    return f"{statistics.fmean(points):{sign}.1f}{sd} (n={len(points)}{missing})"


def _stat(values: list[float | None], floor: float | None = 0.0) -> str:
    """mean ± sd (n) in points; rates over zero rows are left out."""
    return _mean_sd(_in_points(values, floor), len(values))


def main_table(summ: dict) -> str:
    """Per attack: the attack's strength, then CA / ASR-cc / residual of each main defense."""
    lines = ["| attack | clean model CA / ASR-cc | poisoned CA / ASR-cc (residual) | defense | CA | ASR-cc | "
             "residual backdoor (pts) | ASR |",
             "|---|---|---|---|---|---|---|---|"]
    for attack, e in summ["attacks"].items():
        floor = e["clean"]["asr_cc"][0] if e["clean"] else 0.0
        p = e["poisoned"]
        head = (f"{100 * e['clean']['ca'][0]:.1f} / {_pts(floor)}" if e["clean"] else "–",
                f"{100 * p['ca'][0]:.1f} / {_pts(p['asr_cc'][0])} ({_pts(p['asr_cc'][0], floor, '+.1f')})")
        for name in [n for n in MAIN_DEFENSES if n in e["defenses"]]:
            d = e["defenses"][name]
            lines.append(f"| {attack} | {head[0]} | {head[1]} | {name} ({d['steps']} steps) | {_stat(d['ca'])} | "
                         f"{_stat(d['asr_cc'])} | {_stat(d['asr_cc'], floor)} | {_stat(d['asr'])} |")
    return "\n".join(lines)


def attack_table(results: dict[str, AttackResults]) -> str:
    """The attacker's side: the recipe, the planted backdoor, and the probe's ASR-cc at each victim evaluation."""
    lines = ["| attack | poisoned rows | victim training | clean model CA / ASR-cc | poisoned CA / ASR-cc / ASR | "
             "probe ASR-cc by step (dev acc) | kept step |", "|---|---|---|---|---|---|---|"]
    for attack, result in results.items():
        cfg, clean, p = result.config, result.row(CLEAN_ROW), result.row(POISONED_ROW)
        t = cfg["victim"]["train"]
        recipe = f"{t['method']}, {t['epochs']:g} epochs, lr {t['lr']:g}, {t['select']}"
        probe = ", ".join(f"{h['step']}: {_pts(h['probe_asr_cc'])} ({100 * h['dev_accuracy']:.1f})"
                          for h in result.victim_history or [] if "probe_asr_cc" in h)
        floor = _pts(clean.attack_success_rate_clean_correct, spec=".2f") if clean else None
        kept = "–" if result.victim_selected_step is None else result.victim_selected_step
        lines.append(
            f"| {attack} | {cfg['poison']['count']} of {cfg['data']['max_train']} ({cfg['poison']['mode']}) | {recipe} | "
            + (f"{100 * clean.clean_accuracy:.2f} / {floor} | " if clean else "– | ")
            + f"{100 * p.clean_accuracy:.2f} / {_pts(p.attack_success_rate_clean_correct, spec='.2f')} / "
              f"{100 * p.attack_success_rate:.2f} | {probe or '–'} | {kept} |")
    return "\n".join(lines)


def _steps(row: ReportRow) -> str:
    """A trained row's selected step / steps; an input filter trains nothing ("–")."""
    if not row.steps:
        return "–"
    return f"{'–' if row.selected_step is None else row.selected_step} / {row.steps}"


def variant_table(results: dict[str, AttackResults]) -> str:
    """Every first-seed defense row, variants included, with the settings that make it differ."""
    lines = ["| attack | row | what differs from the preset's defense | CA | ASR-cc | residual (pts) | "
             "selected step / steps |", "|---|---|---|---|---|---|---|"]
    for attack, result in results.items():
        rows, floor = rows_and_floor(result)
        # Compared with the preset (rows merged from an earlier invocation may predate it): the full
        # settings of each defense's latest preset row at the preset's seed.
        presets = {meta.defense: _ran_with(rows.get(label), meta.settings) for label, meta in result.row_meta.items()
                   if not meta.is_variant and meta.seed == result.seed}
        for label, meta in result.row_meta.items():
            if label not in rows or meta.seed != result.seed:
                continue
            r = rows[label]
            preset = presets.get(meta.defense) or _resolved(meta.preset)
            diff = _differences(preset, _ran_with(r, meta.settings))
            lines.append(f"| {attack} | {label} | {diff or '(the preset)'} | {100 * r.clean_accuracy:.1f} | "
                         f"{_pts(r.attack_success_rate_clean_correct)} | "
                         f"{_pts(r.attack_success_rate_clean_correct, floor, '+.1f')} | "
                         f"{_steps(r)} |")
    return "\n".join(lines)


def _ran_with(row: ReportRow | None, settings: dict) -> dict:
    """A defense row's settings in full, as `_resolved` gives them: those the row recorded running with, or, for a
    row recorded before rows carried them, its configured `settings` with today's defaults filled in."""
    if row is not None and row.settings is not None and row.train is not None:
        return {**row.settings, "train": row.train}
    return _resolved(settings)


def _resolved(settings: dict) -> dict:
    """A row's defense settings in full (its defense's defaults filled in), whichever form its results JSON
    stored them in (the whole dataclass, or only what the preset spelled out)."""
    from w2sdefense.defenses import DEFENSES, resolve

    cfg = from_dict(DefenseConfig, {k: v for k, v in settings.items() if k not in ("label", "seed")}, "row")
    # Early results stored W2SDefense's loss weights on every row; keep the settings this defense takes.
    own = {f.name for f in dataclasses.fields(DEFENSES.get(cfg.name).settings)}
    r = resolve(dataclasses.replace(cfg, settings={k: v for k, v in cfg.settings.items() if k in own}))
    return {**dataclasses.asdict(r.settings), "train": dataclasses.asdict(r.train)}


def _differences(preset: dict, row: dict, prefix: str = "") -> str:
    """`key=value` for the settings where `row` differs from `preset` (both as `_resolved` gives them)."""
    parts = []
    for key, value in row.items():
        if isinstance(value, dict):
            sub = _differences(preset.get(key, {}), value, f"{prefix}{key}.")
            parts += [sub] if sub else []
        elif preset.get(key) != value:
            parts.append(f"{prefix}{key}={value}")
    return ", ".join(parts)


def rows_and_floor(result: AttackResults) -> tuple[dict[str, ReportRow], float | None]:
    """A results JSON's report rows by model, and the clean model's ASR-cc (0 when there is none, None when
    it is over zero rows)."""
    rows = result.by_model()
    return rows, rows[CLEAN_ROW].attack_success_rate_clean_correct if CLEAN_ROW in rows else 0.0


def comparison_rows(result: AttackResults) -> list[tuple[str, list[ReportRow], RowMeta]]:
    """(row name, its report rows over the seeds it ran at (the preset's seed first), the preset seed's
    row meta) of each preset defense row that ran at the preset's seed, in preset order. Rows of one defense
    with different labels (a control, a reset) stay apart."""
    rows = result.by_model()
    # The preset's order (the results' config holds only the last invocation's rows).
    preset = read_yaml(HERE.parent / "configs" / f"sst2-{result.attack}.yaml")  # its base's rows included
    order = [d.get("label") or d["name"] for d in preset["defenses"]]
    by_defense: dict[str, list] = {}
    for label, meta in result.row_meta.items():
        if label in rows and not meta.is_variant:
            by_defense.setdefault(meta.group, []).append((meta.seed != result.seed, meta.seed, rows[label], meta))
    found = []
    for name, runs in by_defense.items():
        runs.sort(key=lambda run: run[:2])
        if not runs[0][0]:  # it ran at the preset's seed
            found.append((name, [run[2] for run in runs], runs[0][3]))
    return sorted(found, key=lambda f: order.index(f[0]) if f[0] in order else len(order))


def _cell(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _points(values: list[float | None], floor: float | None = 0.0, sign: str = "") -> str:
    """One row's value in points, or mean ± sd (n) over several seeds' values (n/a ones left out)."""
    if len(values) == 1:
        return _pts(values[0], floor, f"{sign}.1f")
    return _mean_sd(_in_points(values, floor), len(values), sign)


# Rows run at a share of their source's budget say so where they are named: the authors' recipe is 5 epochs of
# batch 32 over the whole clean split (about 1085 steps); the preset row runs the default's 80 steps of batch 16.
PARTIAL_BUDGET = {"w2sdefense-authors": "their weights and adapter at 80 of their ~1085 steps"}


def comparison_table(results: dict[str, AttackResults]) -> str:
    """Every defense family on the same victim: CA, ASR-cc, residual (mean ± sd where it ran at several
    seeds), what a filter rejects, and the cost (at the preset's seed)."""
    lines = ["| attack | defense | kind | CA | ASR-cc | residual (pts) | false rejections / detected | "
             "steps | trainable params | stage time (s) | filter s/input |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for attack, result in results.items():
        rows, floor = rows_and_floor(result)
        for name, runs, meta in [("poisoned (no defense)", [rows[POISONED_ROW]], None)] + comparison_rows(result):
            r, repair = runs[0], meta is not None
            kind = "input filter" if r.is_filtered else ("repair" if repair else "–")
            rejects = (f"{100 * r.false_rejection_rate:.1f} % / {100 * r.detection_rate:.1f} %"
                       if r.is_filtered else "–")
            if name in PARTIAL_BUDGET:
                name = f"{name} ({PARTIAL_BUDGET[name]})"
            sampled = r.test_rows_sampled
            if sampled:  # a costly filter measured on a seeded sample of the test set
                name = f"{name} ({sampled} of {r.test_rows_of:,} test rows)"
            asr_cc = [run.attack_success_rate_clean_correct for run in runs]
            lines.append(
                f"| {attack} | {name} | {kind} | {_points([run.clean_accuracy for run in runs])} | {_points(asr_cc)} | "
                f"{_points(asr_cc, floor, '+')} | {rejects} | "
                f"{_cell(r.steps if repair else None, '{}')} | "
                f"{_cell(r.trainable_params if repair else None, '{:,}')} | "
                f"{_cell(r.wall_time_s if repair else None, '{:.0f}')} | "
                f"{_cell(r.filter_seconds_per_input, '{:.3f}')} |")
            if sampled:  # the same model without the filter, on the same rows: the sample's own baseline
                cc = r.unfiltered_attack_success_rate_clean_correct
                lines.append(f"| {attack} | poisoned, the same {sampled} rows | – | "
                             f"{100 * r.unfiltered_clean_accuracy:.1f} | {_pts(cc)} | {_pts(cc, floor, '+.1f')} | "
                             "– | – | – | – | – |")
    return "\n".join(lines)


def comparison_chart(results: dict[str, AttackResults], path: Path) -> None:
    """Residual backdoor and CA of every defense family, per attack (means over seeds, sd as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(max(7.0, 6.0 * len(results)), 4.4), squeeze=False)
    for ax, (attack, result) in zip(axes[0], results.items()):
        rows, floor = rows_and_floor(result)
        bars = [("poisoned", [rows[POISONED_ROW]])] + [(n, runs) for n, runs, _ in comparison_rows(result)]
        xs = range(len(bars))
        lowest = 0.0
        for offset, label, values in (
                (-0.2, "CA", lambda runs: [100 * r.clean_accuracy for r in runs]),
                (0.2, "residual backdoor (ASR-cc − clean model's)",
                 lambda runs: _in_points([r.attack_success_rate_clean_correct for r in runs], floor))):
            points = [values(runs) for _, runs in bars]
            means, sds = _bar_heights(points)
            ax.bar([x + offset for x in xs], means, 0.4, yerr=sds, capsize=3, label=label)
            lowest = min([lowest, *(m for m in means if not math.isnan(m))])
        ax.set_xticks(list(xs), [n if len(runs) == 1 else f"{n} (n={len(runs)})" for n, runs in bars],
                     rotation=30, ha="right")
        ax.set_ylim(lowest - 2, 112)
        ax.set_title(f"SST-2, {attack}: one victim, seed {result.seed} (more where n says)")
        ax.set_ylabel("points")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bar_heights(points: list[list[float]]) -> tuple[list[float], list[float]]:
    """Means and sds of each bar's values (no bar where all were n/a, no cap for one value)."""
    means = [statistics.fmean(p) if p else float("nan") for p in points]
    return means, [statistics.stdev(p) if len(p) > 1 else float("nan") for p in points]


def chart(summ: dict, path: Path) -> None:
    """CA and ASR-cc (means over seeds, sd as error bars) per attack; the clean model's ASR-cc as the floor line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = summ["attacks"]
    fig, axes = plt.subplots(1, len(attacks), figsize=(max(6.5, 5.5 * len(attacks)), 5.0), squeeze=False)
    for ax, (attack, e) in zip(axes[0], attacks.items()):
        bars = [("poisoned", e["poisoned"])] + [(n, e["defenses"][n]) for n in MAIN_DEFENSES if n in e["defenses"]]
        xs = range(len(bars))
        for offset, key, label in ((-0.2, "ca", "CA"), (0.2, "asr_cc", "ASR-cc")):
            means, sds = _bar_heights([_in_points(b[key]) for _, b in bars])
            ax.bar([x + offset for x in xs], means, 0.4, yerr=sds, capsize=3, label=label)
        if e["clean"] and e["clean"]["asr_cc"][0] is not None:
            ax.axhline(100 * e["clean"]["asr_cc"][0], color="k", ls="--", lw=1, label="clean model's ASR-cc")
        ax.set_xticks(list(xs), [f"{n}\n(n={len(b['ca'])})" for n, b in bars], rotation=35, ha="right", fontsize=7)
        ax.set_ylim(0, 112)
        ax.set_title(f"SST-2, {attack}")
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="upper center", ncol=3, fontsize=8)
    fig.suptitle(f"{summ['student']} student, {summ['teacher']} teacher: mean ± sd over defense seeds", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results_md(results: dict[str, AttackResults], summ: dict) -> None:
    """Replace the real-model sections of RESULTS.md and the README's generated blocks with the new tables."""
    from results_md import README, update_section

    provenance = provenance_line(results)
    table = main_table(summ)
    update_section("real", f"{table}\n\n![CA and ASR-cc per attack](results/chart.png)\n\n{provenance} "
                           "(per-attack JSON and `summary.json` in `results/`).")
    update_section("variants", variant_table(results))
    update_section("comparison", f"{comparison_table(results)}\n\n![residual and CA per defense](results/comparison.png)"
                                 f"\n\n{provenance}. CA, ASR-cc and residual are means ± sd where a "
                                 "defense ran at several seeds (n), its other columns at the preset's seed; input "
                                 "filters are scored "
                                 "as served systems (a rejected clean row counts as wrong, a rejected triggered row as "
                                 "a failed attack). Stage time is wall time on 2 shared cores.")
    update_section("attack", attack_table(results))
    earlier = load_earlier()
    if earlier:
        update_section("earlier", "\n\n".join([
            "The attacker's recipe:", attack_table(earlier),
            "The main rows (mean ± sd over defense seeds):", main_table(summary(earlier)),
            "Every defense family (the preset's seed):", comparison_table(earlier),
            "Every first-seed row, variants and comparison families included:", variant_table(earlier)]))
    for name, body in readme_blocks(results, summ).items():
        update_section(name, body, path=README)


def _dates(results: dict[str, AttackResults]) -> str:
    """The days the results were measured on."""
    return ", ".join(sorted({r.environment["date"][:10] for r in results.values()}))


def provenance_line(results: dict[str, AttackResults]) -> str:
    """Where and when the results were measured, and how to read the tables' columns."""
    env = next(iter(results.values())).environment
    return (f"Measured {_dates(results)} on {env['platform']}, {env['cpu_threads']} torch threads, torch "
            f"{env['versions']['torch']}, transformers {env['versions']['transformers']}, peft "
            f"{env['versions']['peft']}, by `python benchmarks/real.py`. CA on the 1821 clean test rows; "
            "ASR-cc on the triggered positives whose clean version the model gets right; residual = "
            "ASR-cc minus the clean model's; mean ± sd over defense seeds (n), one shared victim per attack")


def readme_blocks(results: dict[str, AttackResults], summ: dict) -> dict[str, str]:
    """The body of each generated block of the README, by marker name (tests/test_readme_numbers.py checks the
    README against these)."""
    return {
        "headline": headline_table(results, summ),
        "real": f"{main_table(summ)}\n\n![CA and ASR-cc per attack](benchmarks/results/chart.png)\n\n"
                f"{provenance_line(results)}; the CPU scaling of each run is stated in `configs/sst2-<attack>.yaml`.",
        "comparison": f"{comparison_table(results)}\n\n![residual and CA per defense](benchmarks/results/comparison.png)",
    }


# The README's first screen: what a newcomer chooses between, named as the README names them.
HEADLINE_ROWS = (("w2sdefense", "W2SDefense, the default without a base"),
                 ("fine-mixing-r0", "reset to the public base, then LoRA, the default with a base"),
                 ("lora-ft", "LoRA fine-tuning alone, the control"))
ATTACK_NAMES = {"badnet": "BadNet (a rare word)", "insent": "InSent (a sentence)",
                "synbkd": "SynAttack (a syntactic paraphrase)"}
STUDENT_NOTES = {"smollm2-135m": "the packaged Q4_1-quantised SmolLM2-135M-Instruct, dequantised"}


def _headline_cell(d: dict | None, floor: float | None, poisoned_ca: float) -> tuple[str, int]:
    """A defense's residual (mean ± sd over its seeds) and its mean CA change against the poisoned model."""
    if d is None:
        return "–", 0
    change = 100 * (statistics.fmean(d["ca"]) - poisoned_ca)
    return f"{_mean_sd(_in_points(d['asr_cc'], floor), len(d['asr_cc']), '+')} (CA {change:+.1f})", len(d["asr_cc"])


def headline_table(results: dict[str, AttackResults], summ: dict) -> str:
    """Residual backdoor of the poisoned model and of the headline defenses per attack, each defense's CA change,
    and where and when it was measured."""
    attacks = summ["attacks"]
    floors = {a: e["clean"]["asr_cc"][0] if e["clean"] else 0.0 for a, e in attacks.items()}
    lines = ["| residual backdoor, points (CA change against the poisoned model) | "
             + " | ".join(ATTACK_NAMES.get(a, a) for a in attacks) + " |", "|---" * (len(attacks) + 1) + "|",
             "| poisoned, no defense | " + " | ".join(_pts(e["poisoned"]["asr_cc"][0], floors[a], "+.1f")
                                                    for a, e in attacks.items()) + " |"]
    counts = set()
    for name, words in HEADLINE_ROWS:
        found = [e["defenses"].get(name) for e in attacks.values()]
        if not any(found):
            continue
        steps = "/".join(sorted({str(d["steps"]) for d in found if d}))
        cells = [_headline_cell(d, floors[a], e["poisoned"]["ca"][0]) for d, (a, e) in zip(found, attacks.items())]
        counts |= {n for _, n in cells if n}
        lines.append(f"| {words} ({steps} steps) | " + " | ".join(c for c, _ in cells) + " |")
    table = "\n".join(lines)
    seeds = "defense seeds (n)"
    if len(counts) == 1:  # one n for every cell: said once, below
        (n,) = counts
        table, seeds = table.replace(f" (n={n})", ""), f"{n} defense seeds"
    env = next(iter(results.values())).environment
    student = summ["student"]
    note = f" ({STUDENT_NOTES[student]})" if student in STUDENT_NOTES else ""
    return (f"{table}\n\nResidual backdoor: ASR-cc minus a clean model's, in points (0: no more backdoor than a model "
            f"that never saw the trigger); mean ± sd over {seeds}, one `{student}` victim{note} per attack, fully "
            f"fine-tuned on poisoned SST-2; CA change: mean clean accuracy minus the poisoned model's, in points. "
            f"Measured {_dates(results)} by `python benchmarks/real.py` on a CPU ({env['cpu_threads']} torch threads; "
            "the machine under [Results](#results), with every row); regenerated by `--report-only` from "
            "`benchmarks/results/`.")


def main() -> None:
    """Run the requested attacks in order, then rebuild summary.json, the tables and the chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44],
                        help="defense seeds (the first is the preset's; the victim always uses the preset's)")
    parser.add_argument("--runs", default="runs", help="where the run folders go")
    parser.add_argument("--variants", help="YAML list of extra defense rows (each with a `label`), run at "
                        "every seed given, e.g. benchmarks/variants-badnet.yaml")
    parser.add_argument("--pick", nargs="+", metavar="LABEL", help="with --variants: run only these of its rows")
    parser.add_argument("--defenses", nargs="+", help="the preset's defense rows to run (default: all)")
    parser.add_argument("--merge", help="another invocation's results JSON whose rows to add (same victim)")
    parser.add_argument("--rename", nargs="*", default=[], help="with --merge: old=new row labels")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted override of every preset, as the CLI's --set (e.g. runtime.precision=fp32)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    from w2sdefense.progress import quiet_libraries

    quiet_libraries()
    if args.merge:
        merge_rows(Path(args.merge), args.rename)
    elif not args.report_only:
        variants = yaml.safe_load(Path(args.variants).read_text()) if args.variants else []
        if args.pick:
            unknown = set(args.pick) - {v.get("label") for v in variants}
            if unknown:
                raise SystemExit(f"--pick: {', '.join(sorted(unknown))} not in {args.variants}")
            variants = [v for v in variants if v.get("label") in args.pick]
        first = None
        for attack in args.attacks:
            out = run_attack(attack, Path(args.runs), args.seeds, variants, first, args.defenses, args.set)
            first = first or out
    for path in RESULTS.glob("*.json"):
        if path.stem in ATTACKS:
            add_victim_history(path)
            draw_curves(path)
    results = load_results()
    if results:
        summ = summary(results)
        write_json(RESULTS / "summary.json", summ)
        chart(summ, RESULTS / "chart.png")
        comparison_chart(results, RESULTS / "comparison.png")
        write_results_md(results, summ)
        print(attack_table(results))
        print()
        print(main_table(summ))
        print()
        print(variant_table(results))
        print()
        print(comparison_table(results))


if __name__ == "__main__":
    main()
