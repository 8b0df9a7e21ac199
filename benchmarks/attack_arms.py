"""The attacker's side: poisoning recipes tried for a stronger backdoor, each a victim alone.

    python benchmarks/attack_arms.py                       # every arm of benchmarks/variants-attack.yaml
    python benchmarks/attack_arms.py --pick badnet-lr1e4-e3   # only these arms (<attack>-<label>)
    python benchmarks/attack_arms.py --report-only         # rebuild the table from results/attack-arms.json

An arm is `configs/sst2-<attack>.yaml` with its dotted overrides, run through `w2sdefense run` with
only the preset's defense rows the arm names in `defenses` (none by default; at each seed of
`defense_seeds`, rows `<row>-s<seed>` beside the preset seed's `<row>`, sharing the victim), into
`<runs>/attack-arms/<attack>-<label>` (a finished victim is re-used). With `clean_model: true` it also
trains a clean model with the same recipe (shared between arms whose recipes match: its stage key
decides) and judges the arm against it; otherwise against the benchmark's clean model
(`results/<attack>.json`). Writes `results/attack-arms.json` (one record per arm) and the section
"attack-arms" of RESULTS.md (benchmarks/results_md.py regenerates it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from w2sdefense.config import ExperimentConfig, load_config, to_dict
from w2sdefense.fileio import write_json
from w2sdefense.results import (ExperimentReport, ReportRow, Result, TrainingResult, read_report, read_result,
                                stage_result)
from w2sdefense.rundir import CLEAN_ROW, POISONED_ROW

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ARMS = HERE / "variants-attack.yaml"
RECORDS = RESULTS / "attack-arms.json"


def run_arm(arm: dict, runs: Path) -> ArmRecord:
    """Train (or re-use) the arm's victim, evaluate it, and return its record."""
    from w2sdefense.pipeline import run_experiment

    sets = [*arm.get("set", []), f"clean_model={str(bool(arm.get('clean_model'))).lower()}"]
    cfg = load_config(ExperimentConfig, HERE.parent / "configs" / f"sst2-{arm['attack']}.yaml", sets)
    wanted = arm.get("defenses", [])
    unknown = set(wanted) - {d.row_name for d in cfg.defenses}
    if unknown:
        raise SystemExit(f"arm {_name(arm)}: defenses {', '.join(sorted(unknown))} are not rows of the preset")
    cfg = dataclasses.replace(cfg, defenses=defense_rows(cfg, wanted, arm.get("defense_seeds", [cfg.seed])))
    out = runs / "attack-arms" / _name(arm)
    teacher = runs / f"sst2-{arm['attack']}" / "teacher"
    if wanted and (teacher / "stage.json").is_file() and not (out / "teacher").exists():
        shutil.copytree(teacher, out / "teacher")  # the benchmark's teacher: it does not depend on the attack
    if cfg.clean_model and not (out / "clean").exists():
        # A clean model another arm trained with this recipe (its stage key still decides re-use).
        mine = {k: to_dict(cfg)[k] for k in ("seed", "data", "victim")}
        for other in sorted(out.parent.glob("*/clean/stage.json")):
            theirs = yaml.safe_load((other.parent.parent / "config.yaml").read_text())
            if {k: theirs.get(k) for k in mine} == mine:
                shutil.copytree(other.parent, out / "clean")
                break
    run_experiment(dataclasses.replace(cfg, output_dir=str(out)))
    return record(arm, out)


def defense_rows(cfg: ExperimentConfig, wanted: list[str], seeds: list[int]) -> list:
    """The preset's rows named in `wanted`, once per seed; a row at a seed other than the preset's is
    labelled `<row>-s<seed>` (the preset's seed keeps the bare name, so earlier rows are re-used)."""
    return [d if seed == cfg.seed else dataclasses.replace(d, label=f"{d.row_name}-s{seed}", seed=seed)
            for d in cfg.defenses if d.row_name in wanted for seed in seeds]


def _row_defense(label: str, arm: dict) -> str:
    """The preset row a report row repeats (`w2sdefense-s43` -> `w2sdefense`): the labels `defense_rows`
    gives the arm's rows and seeds, matched exactly (a prefix would also claim a row named `w2sdefense-strong`)."""
    seeds = arm.get("defense_seeds", [])
    return next((name for name in arm.get("defenses", [])
                 if label == name or label in {f"{name}-s{seed}" for seed in seeds}), label)


def _name(arm: dict) -> str:
    """An arm's name and run folder: a label may recur for another attack."""
    return f"{arm['attack']}-{arm['label']}"


@dataclass(frozen=True, kw_only=True)
class ArmRecord(Result):
    """One arm of results/attack-arms.json: what it planted (its poisoned row, the victim's history, kept step, steps
    and time), the clean model of its own recipe when it trained one, and the rows of the defenses it ran
    (`defense_of_row`: the preset row each repeats). Written and read here only."""

    label: str | None = None
    attack: str | None = None
    set: list[str] | None = None  # the arm's overrides of the preset
    run_dir: str | None = None
    poisoned: ReportRow | None = None
    clean: ReportRow | None = None
    history: list | None = None
    defenses: dict[str, ReportRow] | None = None
    defense_of_row: dict[str, str] | None = None
    selected_step: int | None = None
    steps: int | None = None
    wall_time_s: float | None = None
    date: str | None = None

    @property
    def name(self) -> str:
        """The arm's name and run folder (`_name`)."""
        return f"{self.attack}-{self.label}"

    def to_json(self) -> dict:
        """The JSON object written to disk: the rows as plain objects."""
        data = super().to_json()
        data.update({k: getattr(self, k).to_json() for k in ("poisoned", "clean") if getattr(self, k) is not None})
        if self.defenses is not None:
            data["defenses"] = {label: row.to_json() for label, row in self.defenses.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> ArmRecord:
        """An arm's record from its JSON object."""
        rec = super().from_json(data)
        rows = {k: ReportRow.from_json(getattr(rec, k)) for k in ("poisoned", "clean") if getattr(rec, k) is not None}
        defenses = None if rec.defenses is None else {k: ReportRow.from_json(r) for k, r in rec.defenses.items()}
        return dataclasses.replace(rec, **rows, defenses=defenses)


def record(arm: dict, out: Path) -> ArmRecord:
    """What the arm planted: the poisoned row of its report and the victim's per-evaluation history."""
    rows = read_report(out).by_model()
    victim = stage_result(TrainingResult, out / "victim") or TrainingResult()
    of_row = {label: _row_defense(label, arm) for label in rows}  # report row -> the preset row it repeats
    of_row = {label: name for label, name in of_row.items() if name in arm.get("defenses", [])}
    return ArmRecord(label=arm["label"], attack=arm["attack"], set=arm.get("set", []), run_dir=str(out),
                     poisoned=rows[POISONED_ROW], clean=rows.get(CLEAN_ROW), history=victim.history,
                     defenses={label: rows[label] for label in of_row}, defense_of_row=of_row,
                     selected_step=victim.selected_step, steps=victim.steps, wall_time_s=victim.wall_time_s,
                     date=datetime.now(timezone.utc).strftime("%Y-%m-%d"))


def benchmark_clean(attack: str) -> ReportRow | None:
    """The benchmark's clean model row for `attack` when the arms ran (the preset's recipe of then, lr 5e-5 for 2
    epochs), retired to results/earlier/ when the presets moved to the strong recipe; the current one otherwise."""
    retired = sorted((RESULTS / "earlier").glob(f"{attack}-*.json"))
    path = retired[0] if retired else RESULTS / f"{attack}.json"
    return read_result(ExperimentReport, path).row(CLEAN_ROW) if path.is_file() else None


def read_records(path: Path = RECORDS) -> list[ArmRecord]:
    """The arms recorded so far, in the file's order."""
    return [ArmRecord.from_json(r) for r in json.loads(path.read_text())] if path.is_file() else []


def table(records: list[ArmRecord]) -> str:
    """One line per arm: CA against the clean model's, ASR-cc against the target, the probe by step.

    The clean model is the arm's own (same recipe) when it trained one, else the benchmark's (marked *).
    """
    lines = ["| attack | arm | overrides of the preset | CA (clean model's) | ASR-cc / ASR (clean model's ASR-cc) | "
             "ASR-cc ≥ 95 and CA within 1? | probe ASR-cc by step (dev acc) | kept step | victim time (min) | "
             "defenses (preset seed): CA / residual |", "|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        clean, star = rec.clean, ""
        if clean is None:
            clean, star = benchmark_clean(rec.attack), "*"
        p = rec.poisoned
        ca, asr_cc = 100 * p.clean_accuracy, 100 * p.attack_success_rate_clean_correct
        clean_ca = 100 * clean.clean_accuracy if clean else None
        met = "yes" if asr_cc >= 95 and clean_ca is not None and ca >= clean_ca - 1 else "no"
        probe = ", ".join(f"{h['step']}: {100 * h['probe_asr_cc']:.1f} ({100 * h['dev_accuracy']:.1f})"
                          for h in rec.history or [] if "probe_asr_cc" in h)
        wall = f"{rec.wall_time_s / 60:.0f}" if rec.wall_time_s else "–"
        floor = f"{100 * clean.attack_success_rate_clean_correct:.2f}{star}" if clean else "–"
        lines.append(f"| {rec.attack} | {rec.label} | {', '.join(rec.set or []) or '–'} | {ca:.2f} "
                     f"({'–' if clean_ca is None else f'{clean_ca:.2f}{star}'}) | {asr_cc:.2f} / "
                     f"{100 * p.attack_success_rate:.2f} ({floor}) | {met} | {probe or '–'} | {rec.selected_step} | "
                     f"{wall} | {_defended(rec, clean)} |")
    return "\n".join(lines)


def _defended(rec: ArmRecord, clean: ReportRow | None) -> str:
    """`name: CA / residual` of each defense the arm ran (residual against the arm's clean model); a defense
    run at several seeds (rows `<name>-s<seed>`) gives the mean ± sd and n."""
    floor = clean.attack_success_rate_clean_correct if clean else 0.0
    grouped: dict[str, list[ReportRow]] = {}
    for label, row in (rec.defenses or {}).items():
        grouped.setdefault((rec.defense_of_row or {}).get(label, label), []).append(row)
    cells = []
    for name, rows in grouped.items():
        ca = [100 * r.clean_accuracy for r in rows]
        residual = [100 * (r.attack_success_rate_clean_correct - floor) for r in rows]
        if len(rows) == 1:
            cells.append(f"{name}: {ca[0]:.1f} / {residual[0]:+.1f}")
        else:
            cells.append(f"{name}: {statistics.mean(ca):.1f} ± {statistics.stdev(ca):.1f} / "
                         f"{statistics.mean(residual):+.1f} ± {statistics.stdev(residual):.1f} (n={len(rows)}; "
                         f"{', '.join(f'{r:+.1f}' for r in residual)})")
    return "; ".join(cells) or "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pick", nargs="+", metavar="NAME", help="run only these arms (<attack>-<label>)")
    parser.add_argument("--runs", default="runs", help="where the run folders go (arms in <runs>/attack-arms)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    arms = yaml.safe_load(ARMS.read_text())
    if args.pick:
        unknown = set(args.pick) - {_name(a) for a in arms}
        if unknown:
            raise SystemExit(f"--pick: {', '.join(sorted(unknown))} not in {ARMS.name} (names are <attack>-<label>)")
        arms = [a for a in arms if _name(a) in args.pick]
    records = {r.name: r for r in read_records()}
    if not args.report_only:
        from w2sdefense.progress import quiet_libraries

        quiet_libraries()
        for arm in arms:
            records[_name(arm)] = run_arm(arm, Path(args.runs))
            write_json(RECORDS, [r.to_json() for r in records.values()])  # each arm lands before the next starts
    import results_md  # beside this file

    results_md.write()
    print(table(list(records.values())))


if __name__ == "__main__":
    main()
