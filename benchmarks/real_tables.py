"""The tables of benchmarks/real.py, built from the committed results files (no model runs): summary.json, the
main, attack, variant and comparison tables, the RESULTS.md sections and the README's generated blocks."""

from __future__ import annotations

import dataclasses
import statistics

from real_results import HERE, AttackResults, RowMeta, load_earlier
from w2sdefense.config import DefenseConfig, from_dict, read_yaml
from w2sdefense.eval.metrics import NOT_DEFINED
from w2sdefense.results import ReportRow
from w2sdefense.rundir import CLEAN_ROW, POISONED_ROW

# The rows of the main table, when present: the method, the full reset to the public base without and with the
# teacher, the no-teacher control, and PEFT alone at W2SDefense's 80 steps and at the reset's 160.
MAIN_DEFENSES = ("w2sdefense", "fine-mixing-r0", "w2s-reset-r0", "w2s-shrink", "lora-ft", "lora-ft-e2")


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


def in_points(values: list[float | None], floor: float | None = 0.0) -> list[float]:
    """The values in points above `floor`, leaving out rates over zero rows (None; all of them when the floor
    is one)."""
    return [] if floor is None else [100 * (v - floor) for v in values if v is not None]


def _pts(value: float | None, floor: float | None = 0.0, spec: str = ".1f") -> str:
    """One rate in points above `floor`, or n/a when it or the floor is over zero rows."""
    points = in_points([value], floor)
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
    return _mean_sd(in_points(values, floor), len(values))


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
    return _mean_sd(in_points(values, floor), len(values), sign)


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


def results_sections(results: dict[str, AttackResults]) -> dict[str, str]:
    """The real-model tables of RESULTS.md (results_md.py's builders), by name."""
    summ, provenance = summary(results), provenance_line(results)
    sections = {
        "real": f"{main_table(summ)}\n\n![CA and ASR-cc per attack](results/chart.png)\n\n{provenance} "
                "(per-attack JSON and `summary.json` in `results/`).",
        "variants": variant_table(results),
        "comparison": f"{comparison_table(results)}\n\n![residual and CA per defense](results/comparison.png)"
                      f"\n\n{provenance}. CA, ASR-cc and residual are means ± sd where a "
                      "defense ran at several seeds (n), its other columns at the preset's seed; input "
                      "filters are scored "
                      "as served systems (a rejected clean row counts as wrong, a rejected triggered row as "
                      "a failed attack). Stage time is wall time on 2 shared cores.",
        "attack": attack_table(results),
    }
    earlier = load_earlier()
    sections["earlier"] = "\n\n".join([
        "The attacker's recipe:", attack_table(earlier),
        "The main rows (mean ± sd over defense seeds):", main_table(summary(earlier)),
        "Every defense family (the preset's seed):", comparison_table(earlier),
        "Every first-seed row, variants and comparison families included:", variant_table(earlier)]) if earlier else ""
    return sections


def write_results_md(results: dict[str, AttackResults], summ: dict) -> None:
    """Regenerate RESULTS.md and rewrite the README's generated blocks with the new tables."""
    import results_md

    results_md.write()
    for name, body in readme_blocks(results, summ).items():
        results_md.update_section(name, body)


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
HEADLINE_ROWS = (("w2sdefense", "W2SDefense, the default with neither a base nor usable Gemma"),
                 ("fine-mixing-r0", "reset to the public base, then LoRA, the default with a base, no texts and no usable Gemma"),
                 ("lora-ft", "LoRA fine-tuning alone, the control"))
ATTACK_NAMES = {"badnet": "BadNet (a rare word)", "insent": "InSent (a sentence)",
                "synbkd": "SynAttack (a syntactic paraphrase)"}
STUDENT_NOTES = {"smollm2-135m": "the packaged Q4_1-quantised SmolLM2-135M-Instruct, dequantised"}


def _headline_cell(d: dict | None, floor: float | None, poisoned_ca: float) -> tuple[str, int]:
    """A defense's residual (mean ± sd over its seeds) and its mean CA change against the poisoned model."""
    if d is None:
        return "–", 0
    change = 100 * (statistics.fmean(d["ca"]) - poisoned_ca)
    return f"{_mean_sd(in_points(d['asr_cc'], floor), len(d['asr_cc']), '+')} (CA {change:+.1f})", len(d["asr_cc"])


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
