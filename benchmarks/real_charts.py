"""The charts of benchmarks/real.py: the main chart (means with error bars per attack), the comparison of every
defense family, and the per-step curves of each attack's first-seed W2SDefense and lora-ft runs."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from real_results import RESULTS, AttackResults, read_results
from real_tables import MAIN_DEFENSES, comparison_rows, in_points, rows_and_floor
from w2sdefense.results import DefenseResult, TrainingResult, stage_result
from w2sdefense.rundir import POISONED_ROW


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
                 lambda runs: in_points([r.attack_success_rate_clean_correct for r in runs], floor))):
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
            means, sds = _bar_heights([in_points(b[key]) for _, b in bars])
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
