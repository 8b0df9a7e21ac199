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


def write_report(path: Path) -> None:
    """Redraw the chart and regenerate RESULTS.md."""
    import results_md  # beside this file

    chart(read_rows(path))
    results_md.write()
