"""The realistic protocol's table and chart, from benchmarks/results/realistic-rows.jsonl alone (anyone can
recompute them): means over seeds, residual = ASR-cc minus the clean model's, CA against the suspect's."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHART = HERE / "results" / "realistic.png"


def read_rows(path: Path) -> list[dict]:
    """The flat rows, one JSON object a line."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def points(values: list[float]) -> str:
    """Mean ± sd in points (n when over one), '–' when there is none."""
    values = [100 * v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f} (n={len(values)})"


def grouped(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Defense rows by (attack, k, defense)."""
    groups = defaultdict(list)
    for r in rows:
        if r["defense"] != "clean-model":
            groups[(r["attack"], r["k"], r["defense"])].append(r)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])))


def diff(rs: list[dict], a: str, b: str) -> list[float | None]:
    return [None if r[a] is None or r[b] is None else r[a] - r[b] for r in rs]


def table(rows: list[dict]) -> str:
    """The Markdown table: one line per (attack, k, defense)."""
    lines = ["| attack | k | defense | base | CA | CA − suspect (pts) | residual (pts) | after re-learning (pts) "
             "| stage time (s) | seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["defense"] == "clean-model":
            relearned = "–" if r["relearn_asr_cc"] is None else f"ASR-cc {100 * r['relearn_asr_cc']:.1f} %"
            lines.append(f"| {r['attack']} | – | clean model (floor) | – | {100 * r['ca']:.1f} | "
                         f"{100 * (r['ca'] - r['suspect_ca']):+.1f} | ASR-cc {100 * r['asr_cc']:.1f} % | "
                         f"{relearned} | {r['stage_s']:.0f} | – |")
            lines.append(f"| {r['attack']} | – | suspect (no defense) | – | {100 * r['suspect_ca']:.1f} | +0.0 | "
                         f"{points([r['suspect_asr_cc'] - r['asr_cc']])} | – | – | – |")
    for (attack, k, defense), rs in grouped(rows).items():
        ca = statistics.mean(r["ca"] for r in rs)
        time = statistics.mean(r["stage_s"] for r in rs if r["stage_s"] is not None)
        lines.append(f"| {attack} | {k} | {defense} | {'known' if rs[0]['base_known'] else 'none'} | {100 * ca:.1f} | "
                     f"{points(diff(rs, 'ca', 'suspect_ca'))} | {points(diff(rs, 'asr_cc', 'floor_asr_cc'))} | "
                     f"{points(diff(rs, 'relearn_asr_cc', 'floor_relearn_asr_cc'))} | {time:.0f} | "
                     f"{', '.join(str(r['seed']) for r in rs)} |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path = CHART) -> None:
    """Residual and CA − suspect against k, one line per defense, one column per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = grouped(rows)
    attacks = sorted({a for a, _, _ in groups})
    if not attacks:
        return
    fig, axes = plt.subplots(2, len(attacks), figsize=(5 * len(attacks), 7), squeeze=False)
    for col, attack in enumerate(attacks):
        for defense in sorted({d for a, _, d in groups if a == attack}):
            ks = sorted(k for a, k, d in groups if a == attack and d == defense)
            for row, (key, base) in enumerate((("asr_cc", "floor_asr_cc"), ("ca", "suspect_ca"))):
                ys = [100 * statistics.mean(v for v in diff(groups[(attack, k, defense)], key, base) if v is not None)
                      for k in ks]
                axes[row][col].plot(ks, ys, marker="o", label=defense)
        axes[0][col].set_title(attack)
        axes[0][col].set_ylabel("residual backdoor (pts)")
        axes[1][col].set_ylabel("CA − suspect's (pts)")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("defender's labelled rows k")
            ax.axhline(0, color="gray", lw=0.5)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measured(rows: list[dict]) -> str:
    """Where and when the rows were measured, from the rows themselves."""
    if not rows:
        return "No row has run yet."
    dates = sorted(r["date"][:10] for r in rows if r.get("date"))
    where = sorted({f"{r.get('platform')}, {r.get('cpu_threads')} torch threads, "
                    f"{'CUDA ' + r['cuda'] if r.get('cuda') else 'CPU'}, torch {r.get('torch')}, "
                    f"transformers {r.get('transformers')}, peft {r.get('peft')}" for r in rows})
    span = dates[0] if dates and dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}" if dates else "?"
    return (f"Measured {span} on {'; '.join(where)}, by `python benchmarks/realistic.py` (rows in "
            "`results/realistic-rows.jsonl`). CA − suspect, residual and after re-learning are in points; mean ± sd "
            "over seeds (n) where a row ran at several.")


def section(path: Path) -> str:
    """RESULTS.md's realistic table, its provenance and the chart's link (results_md.py's builder)."""
    rows = read_rows(path)
    return f"{table(rows)}\n\n{measured(rows)}\n\n![residual and CA against k](results/realistic.png)"


# The README's realistic headline: the arms that meet the protocol's bar (3 seeds at k=256 on BadNet and InSent),
# named as the README names them; an arm without a name here shows its label.
HEADLINE_K, HEADLINE_SEEDS, HEADLINE_ATTACKS = 256, 3, ("badnet", "insent")
ATTACK_NAMES = {"badnet": "BadNet (a rare word)", "insent": "InSent (a sentence)"}
HEADLINE_NAMES = {
    "reset-distill": "reset to the public base, then distil the suspect (`reset-distill`; needs the base)",
    "distill-into-gemma": "distil the suspect into Gemma-3-270M (`distill-into`; no base)",
    "distill-into-gemma-labelled": "the same on the 256 labelled rows alone (`unlabelled: false`; no texts)",
}


def headline(rows: list[dict]) -> str:
    """The README's realistic block: the suspect and every arm with HEADLINE_SEEDS seeds at HEADLINE_K on both
    attacks: residual (mean ± sd), CA change against the suspect and ASR-cc after the re-learning test, per attack."""
    floors = {r["attack"]: r for r in rows if r["defense"] == "clean-model"}
    groups = grouped(rows)
    arms = sorted({d for (_, k, d) in groups if k == HEADLINE_K
                   if all(len(groups.get((a, HEADLINE_K, d), [])) >= HEADLINE_SEEDS for a in HEADLINE_ATTACKS)})
    head = " | ".join(f"{ATTACK_NAMES.get(a, a)}: residual (CA change; ASR-cc re-learned)" for a in HEADLINE_ATTACKS)
    lines = [f"| {HEADLINE_K} clean rows of the defender's own | {head} |", "|---" * (1 + len(HEADLINE_ATTACKS)) + "|"]
    cells = ["–" if a not in floors else f"{points([floors[a]['suspect_asr_cc'] - floors[a]['asr_cc']])} (CA "
             f"{100 * floors[a]['suspect_ca']:.1f} %)" for a in HEADLINE_ATTACKS]
    lines.append(f"| the suspect, no defense | {' | '.join(cells)} |")
    cells = ["–" if a not in floors else f"+0.0 (CA {100 * (floors[a]['ca'] - floors[a]['suspect_ca']):+.1f}; "
             f"{100 * floors[a]['relearn_asr_cc']:.1f} %)" for a in HEADLINE_ATTACKS]
    lines.append(f"| a clean model of the same recipe (the floor) | {' | '.join(cells)} |")
    for d in arms:
        cells = []
        for a in HEADLINE_ATTACKS:
            rs = groups[(a, HEADLINE_K, d)]
            ca = statistics.mean(100 * (r["ca"] - r["suspect_ca"]) for r in rs)
            relearn = [r["relearn_asr_cc"] for r in rs if r.get("relearn_asr_cc") is not None]
            again = f"{100 * statistics.mean(relearn):.1f} %" if relearn else "–"
            cells.append(f"{points(diff(rs, 'asr_cc', 'floor_asr_cc'))} (CA {ca:+.1f}; {again})")
        lines.append(f"| {HEADLINE_NAMES.get(d, d)} | {' | '.join(cells)} |")
    dates = sorted(r["date"][:10] for r in rows if r.get("date"))
    span = "" if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return ("\n".join(lines) + "\n\nResidual backdoor: ASR-cc minus the clean model's, points, mean ± sd over defense "
            "seeds (n); CA change: mean clean accuracy minus the suspect's, points; ASR-cc re-learned: the mean after "
            "the re-learning test (a few poisoned fine-tuning steps; the clean model's after the same test beside it). "
            "One SmolLM2-135M suspect per attack, trained clean-label on 4000 SST-2 rows the defender never sees; the "
            f"defender holds {HEADLINE_K} other labelled rows and 1024 unlabelled texts, which the distilling arms read "
            f"unless their row says `unlabelled: false`. Measured {span} on CPUs by "
            "`python benchmarks/realistic.py` (every row, with its machine, in benchmarks/RESULTS.md); regenerated by "
            "`python benchmarks/realistic.py --report-only`.")


def write_report(path: Path) -> None:
    """Redraw the chart, regenerate RESULTS.md and rewrite the README's realistic block."""
    import results_md  # beside this file

    rows = read_rows(path)
    chart(rows)
    results_md.write()
    results_md.update_section("realistic", headline(rows))
