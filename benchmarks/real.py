"""The paper's experiment at laptop scale: smollm2-135m student, minilm-l6 teacher, SST-2, three attacks.

    python benchmarks/real.py                          # all three attacks (hours on 2 cores)
    python benchmarks/real.py --attacks badnet         # one attack
    python benchmarks/real.py --report-only            # rebuild RESULTS.md and the chart from results/

Each attack runs `configs/sst2-<attack>.yaml` through `w2sdefense run` (finished stages are
re-used, so an interrupted run continues). The clean reference model and the teacher do not
depend on the attack: they are trained once and shared. One attack also gets a W2SDefense row
with the authors' `reference` feature alignment. Per attack, `benchmarks/results/<attack>.json`
holds the config, versions, machine, date and metrics; `benchmarks/RESULTS.md` gets the table and
`benchmarks/results/chart.png` the chart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import yaml

from w2sdefense.config import DefenseConfig, ExperimentConfig, from_dict, load_config, merge_dicts, to_dict
from w2sdefense.fileio import write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED_STAGES = ("clean", "teacher")  # their inputs do not include the attack
ROW_ORDER = ["clean model", "poisoned", "teacher", "w2sdefense", "w2sdefense-reference", "lora-ft", "full-ft"]
# Rows not listed above (variants) follow in the order they were run.


def experiment(attack: str, runs: Path, reference: bool, variants: list[dict]) -> ExperimentConfig:
    """The preset for `attack`, writing under `runs/`, plus the reference-alignment row if asked and
    extra defense rows (`variants`: defense settings laid over the preset's defense of the same name)."""
    cfg = load_config(ExperimentConfig, Path("configs") / f"sst2-{attack}.yaml")
    cfg = dataclasses.replace(cfg, output_dir=str(runs / cfg.name))
    extra = []
    if reference:
        w2s = next(d for d in cfg.defenses if d.name == "w2sdefense")
        extra.append(dataclasses.replace(w2s, label="w2sdefense-reference", alignment="reference"))
    for variant in variants:
        base = next(d for d in cfg.defenses if d.name == variant.get("name", "w2sdefense"))
        extra.append(from_dict(DefenseConfig, merge_dicts(to_dict(base), variant), "variant"))
    return dataclasses.replace(cfg, defenses=[*cfg.defenses, *extra])


def share(stages_from: Path | None, to: Path) -> None:
    """Copy attack-independent finished stages (their stage.json keys still decide re-use)."""
    if stages_from is None:
        return
    for name in SHARED_STAGES:
        src, dst = stages_from / name, to / name
        if (src / "stage.json").is_file() and not dst.exists():
            shutil.copytree(src, dst)


def run_attack(attack: str, runs: Path, reference: bool, variants: list[dict], first_run: Path | None) -> Path:
    """Run one attack's experiment and record its results JSON."""
    from w2sdefense.pipeline import run_experiment

    cfg = experiment(attack, runs, reference, variants)
    out = Path(cfg.output_dir)
    share(first_run, out)
    run_experiment(cfg)
    report = json.loads((out / "report.json").read_text())
    write_json(RESULTS / f"{attack}.json", {"attack": attack, "run_dir": str(out), **report})
    return out


def load_results() -> dict[str, dict]:
    """Every recorded results JSON, by attack, in the paper's order."""
    order = ["badnet", "insent", "synbkd"]
    found = {p.stem: json.loads(p.read_text()) for p in RESULTS.glob("*.json") if p.stem in order}
    return {a: found[a] for a in order if a in found}


def _rows(result: dict) -> list[dict]:
    return sorted(result["rows"], key=lambda r: ROW_ORDER.index(r["model"]) if r["model"] in ROW_ORDER else len(ROW_ORDER))


def table(results: dict[str, dict]) -> str:
    """The Markdown table: one block of rows per attack."""
    lines = ["| attack | model | CA | ASR | P(target) on triggered | trainable params | stage time (s) | peak mem (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for attack, result in results.items():
        for row in _rows(result):
            lines.append(
                f"| {attack} | {row['model']} | {row['clean_accuracy']:.2%} ({row['clean_correct']}/{row['clean_total']}) "
                f"| {row['attack_success_rate']:.2%} ({row['attack_hits']}/{row['triggered_total']}) "
                f"| {row['mean_target_probability_triggered']:.3f} | {row['trainable_params']:,} "
                f"| {row['wall_time_s']:.0f} | {row['peak_memory_mb']:.0f} |")
    return "\n".join(lines) + "\n\n" + _memory_note(results)


def _memory_note(results: dict[str, dict]) -> str:
    """Say what the memory column measured (it changed when per-stage RSS windows were added)."""
    kinds = {row.get("peak_memory_kind") for r in results.values() for row in r["rows"]}
    notes = {
        "process_max_rss": "the process's peak resident set since it started: it never decreases, so a "
                           "stage run after a larger one shows the larger one's peak",
        "process_peak_rss_since_stage_start": "the peak resident set during that stage (Linux VmHWM, reset "
                                              "at the stage's start)",
        "cuda_max_allocated": "the CUDA allocator's peak during that stage",
    }
    return "Peak mem: " + "; ".join(f"`{k}`: {notes[k]}" for k in sorted(k for k in kinds if k in notes)) + "."


def chart(results: dict[str, dict], path: Path) -> None:
    """CA and ASR per attack and model, one panel per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(max(7.0, 5.5 * len(results)), 4.4), squeeze=False)
    for ax, (attack, result) in zip(axes[0], results.items()):
        rows = [r for r in _rows(result) if r["model"] != "teacher"]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [100 * r["clean_accuracy"] for r in rows], 0.4, label="CA")
        ax.bar([x + 0.2 for x in xs], [100 * r["attack_success_rate"] for r in rows], 0.4, label="ASR")
        ax.set_xticks(list(xs), [r["model"] for r in rows], rotation=30, ha="right")
        ax.set_ylim(0, 112)
        ax.set_title(f"SST-2, {attack}")
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="upper center", ncol=2, fontsize=9)
    fig.suptitle("SmolLM2-135M student, MiniLM-L6 teacher: before and after unlearning", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results_md(results: dict[str, dict]) -> None:
    """Replace the real-model sections of RESULTS.md and of the README with the new table."""
    from results_md import README, update_section

    env = next(iter(results.values()))["environment"]
    dates = ", ".join(sorted({r["environment"]["date"][:10] for r in results.values()}))
    provenance = (f"Measured {dates} on {env['platform']}, {env['cpu_threads']} torch threads, torch "
                  f"{env['versions']['torch']}, transformers {env['versions']['transformers']}, peft "
                  f"{env['versions']['peft']}, by `python benchmarks/real.py`")
    update_section("real", f"{table(results)}\n\n![CA and ASR per attack](results/chart.png)\n\n"
                           f"{provenance} (per-attack JSON in `results/`).")
    update_section("real", f"{table(results)}\n\n![CA and ASR per attack](benchmarks/results/chart.png)\n\n"
                           f"{provenance}; the CPU scaling of each run is stated in `configs/sst2-<attack>.yaml`.",
                   path=README)


def main() -> None:
    """Run the requested attacks in order, then rebuild the table and chart from all results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=["badnet", "insent", "synbkd"],
                        choices=["badnet", "insent", "synbkd"])
    parser.add_argument("--reference-for", default="badnet", help="attack that also gets the reference-FA row")
    parser.add_argument("--runs", default="runs", help="where the run folders go")
    parser.add_argument("--variants", help="YAML list of extra defense rows (each with a `label`), e.g. "
                        "benchmarks/variants-badnet.yaml")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    from w2sdefense.cli import _quiet_libraries

    _quiet_libraries()
    if not args.report_only:
        first = None
        for attack in args.attacks:
            variants = yaml.safe_load(Path(args.variants).read_text()) if args.variants else []
            out = run_attack(attack, Path(args.runs), attack == args.reference_for, variants, first)
            first = first or out
    results = load_results()
    if results:
        chart(results, RESULTS / "chart.png")
        write_results_md(results)
        print(table(results))


if __name__ == "__main__":
    main()
