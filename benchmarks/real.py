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

This file is the command line and the running; the results file's format is `real_results.py`, and what turns
the committed results into tables and charts is `real_tables.py` and `real_charts.py` (no model runs there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import yaml

from real_charts import chart, comparison_chart, draw_curves
from real_results import ATTACKS, HERE, RESULTS, AttackResults, RowMeta, load_results, read_results, retire
from real_tables import attack_table, comparison_table, main_table, summary, variant_table, write_results_md
from w2sdefense.config import DefenseConfig, ExperimentConfig, from_dict, load_config, merge_dicts, to_dict
from w2sdefense.fileio import write_json
from w2sdefense.results import ExperimentReport, TrainingResult, read_report, stage_result

SHARED_STAGES = ("clean", "teacher")  # their inputs do not include the attack


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


def add_victim_history(path: Path) -> None:
    """Record the victim's per-evaluation history in a results JSON, when its run folder holds that victim."""
    result = read_results(path)
    victim = stage_result(TrainingResult, Path(result.run_dir) / "victim")
    if result.victim == _victim_key(Path(result.run_dir)) and victim is not None:
        history = dataclasses.replace(result, victim_history=victim.history, victim_selected_step=victim.selected_step)
        write_json(path, history.to_json())


def arguments() -> argparse.Namespace:
    """The command line."""
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
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    """Run the requested attacks in order (the first one's attack-independent stages shared with the rest)."""
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


def report() -> None:
    """Rebuild, from the results files, each attack's victim history and curves, summary.json, the charts, the
    RESULTS.md sections and the README blocks, and print the tables."""
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


def main() -> None:
    """Run the requested attacks (or merge another invocation's rows), then rebuild the report."""
    args = arguments()
    from w2sdefense.progress import quiet_libraries

    quiet_libraries()
    if args.merge:
        merge_rows(Path(args.merge), args.rename)
    elif not args.report_only:
        run(args)
    report()


if __name__ == "__main__":
    main()
