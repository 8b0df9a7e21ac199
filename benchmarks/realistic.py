"""The realistic protocol: a suspect whose accuracy came from data the defender lacks, and a defender with k clean
rows of its own (configs/realistic/, arms in benchmarks/realistic-arms.yaml).

    python benchmarks/realistic.py --attacks badnet --ks 256 --seeds 42 --arms reset lora-ft
    python benchmarks/realistic.py --attacks badnet insent --ks 64 256 1024 --seeds 42      # every arm
    python benchmarks/realistic.py --report-only                  # rebuild the table and the chart

Per attack, `runs/realistic/<attack>/suspect/` holds the poisoned data, the clean model (the floor, shared by
every attack: the same 4000 rows), the suspect, and the clean model's re-learning test. Per (k, seed),
`runs/realistic/<attack>/k<k>-s<seed>/` re-uses those stages (hard links) and runs one arm at a time through
`w2sdefense run`, so each row lands in `benchmarks/results/realistic-rows.jsonl` as soon as it is measured and a
stopped run continues where it was (finished stages are re-used, an unfinished one resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from pathlib import Path

import yaml

from w2sdefense.config import DefenseConfig, ExperimentConfig, load_config
from w2sdefense.defenses.recipes import CLEAN_BUDGET
from w2sdefense.pipeline import relearn_label, run_experiment
from w2sdefense.results import ExperimentReport, read_report
from w2sdefense.rundir import CLEAN_ROW, EVAL_FOLDERS, POISONED_ROW, TEACHER_ROW

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS = RESULTS / "realistic-rows.jsonl"
ARMS = HERE / "realistic-arms.yaml"
ATTACKS = ["badnet", "insent", "synbkd"]
KS = [64, 256, 1024]
# Every repair's budget at every k (realistic-arms.yaml), `clean`'s own default: 160 steps, dev accuracy at steps 80
# and 160 (not every 40: an evaluation of the 872 dev rows costs about 2.5 minutes here)
MAX_STEPS, EVAL_EVERY = CLEAN_BUDGET["max_steps"], CLEAN_BUDGET["eval_every"]
# Below this k an arm skips the epochs' dev reads (train.eval_epochs false: at k = 64, 40 reads in 160 steps); a
# skipped read replays its random draws, so training takes the path the reads would give (tests/test_resume.py);
# only the checkpoints to keep from are fewer. Rows at k >= 256 keep the reads they were measured with
# (benchmarks/studies/realistic, "Protocol note")
EPOCH_READS_FROM_K = 256
SHARED = ("poison", "clean", "victim", "eval/clean", "eval/poisoned", "relearn/clean+relearn", "eval/clean+relearn")


def read_arms(path: Path = ARMS) -> list[dict]:
    """The arms, each with label, base_known, question and a defense entry (and, optionally, `set`: dotted
    overrides of the experiment, e.g. its teacher, which then runs in a folder of its own)."""
    arms = yaml.safe_load(path.read_text(encoding="utf-8"))
    for arm in arms:
        missing = {"label", "base_known", "question", "defense"} - set(arm)
        if missing:
            raise SystemExit(f"{path}: arm {arm.get('label', '?')} lacks {', '.join(sorted(missing))}")
    return arms


def preset(attack: str, runs: Path, sets: list[str] = ()) -> ExperimentConfig:
    """configs/realistic/sst2-<attack>.yaml, its output under `runs`."""
    cfg = load_config(ExperimentConfig, HERE.parent / "configs" / "realistic" / f"sst2-{attack}.yaml", list(sets))
    return dataclasses.replace(cfg, output_dir=str(runs / "realistic" / attack / "suspect"))


def arm_config(cfg: ExperimentConfig, arm: dict, k: int, seed: int, folder: Path) -> ExperimentConfig:
    """The experiment of one arm at (k, seed): the defender's draw and the defense's seed are `seed`."""
    entry = dict(arm["defense"])
    name = entry.pop("name")
    train = dict(entry.pop("train", {}))  # an arm may name its own budget (and says so in its row's question)
    train.setdefault("max_steps", MAX_STEPS)
    train.setdefault("eval_every", EVAL_EVERY)
    if k < EPOCH_READS_FROM_K:
        train.setdefault("eval_epochs", False)
    defense = DefenseConfig(name=name, label=arm["label"], seed=seed, train=train, settings=entry)
    defender = dataclasses.replace(cfg.defender, rows=k, seed=seed)
    return dataclasses.replace(cfg, output_dir=str(folder), defender=defender, defenses=[defense])


def link_shared(suspect: Path, folder: Path) -> None:
    """Hard-link the suspect folder's finished shared stages into an arm's folder (their stage keys decide re-use)."""
    for name in SHARED:
        src, dst = suspect / name, folder / name
        if (src / "stage.json").is_file() and not dst.exists():
            shutil.copytree(src, dst, copy_function=os.link)


def share_clean(suspect: Path) -> None:
    """The clean model does not depend on the attack: copy (hard links) another attack's finished one into this
    suspect folder, whichever invocation trained it (its stage key still decides whether it is re-used)."""
    dst = suspect / "clean"
    if dst.exists():
        return
    # Only the model: its evaluation and re-learning test read the attack's own data.
    for src in sorted(suspect.parent.parent.glob("*/suspect/clean")):
        if src != dst and (src / "stage.json").is_file():
            shutil.copytree(src, dst, copy_function=os.link)
            return


def measured_on(report: ExperimentReport) -> dict:
    """Where and when a run folder's report was measured (the rows carry it: anyone can see which machine)."""
    env = report.environment or {}
    versions = env.get("versions", {})
    return {"date": env.get("date"), "platform": env.get("platform"), "cpu_threads": env.get("cpu_threads"),
            "cuda": env.get("cuda"), **{k: versions.get(k) for k in ("torch", "transformers", "peft")}}


def _relearned_asr_cc(report: ExperimentReport, name: str) -> float | None:
    """ASR-cc of the re-learning test of row `name` (None: the report has no such test, or a rate over zero rows)."""
    row = report.row(relearn_label(EVAL_FOLDERS.get(name, name)))
    return row.attack_success_rate_clean_correct if row else None


def flat_row(attack: str, arm: dict, k: int, seed: int, report: ExperimentReport) -> dict:
    """One measured arm as the flat row of realistic-rows.jsonl (rates as fractions); `arm["row"]` names the report's
    row when it is not the arm's label (the teacher an arm trained)."""
    name = arm.get("row", arm["label"])
    clean, suspect, row = report.row(CLEAN_ROW), report.row(POISONED_ROW), report.row(name)
    return {"attack": attack, "defense": arm["label"], "k": k, "seed": seed, "base_known": arm["base_known"],
            "ca": row.clean_accuracy, "asr_cc": row.attack_success_rate_clean_correct,
            "floor_asr_cc": clean.attack_success_rate_clean_correct,
            "suspect_ca": suspect.clean_accuracy, "suspect_asr_cc": suspect.attack_success_rate_clean_correct,
            "clean_ca": clean.clean_accuracy, "relearn_asr_cc": _relearned_asr_cc(report, name),
            "floor_relearn_asr_cc": _relearned_asr_cc(report, CLEAN_ROW), "stage_s": row.wall_time_s,
            "steps": row.steps, "selected_step": row.selected_step, "stage_key": row.stage_key}


def teacher_arm(arm: dict) -> dict | None:
    """The teacher an arm trains, as an arm of its own (`teacher_row: LABEL` in realistic-arms.yaml): another
    architecture that learned only from the defender's texts and the suspect's answers on them, measured as a model."""
    label = arm.get("teacher_row")
    return {"label": label, "base_known": False, "row": TEACHER_ROW} if label else None


def clean_model_row(attack: str, report: ExperimentReport) -> dict:
    """The clean model's own re-learning test, as a row of its own (defense: clean-model)."""
    clean, suspect = report.row(CLEAN_ROW), report.row(POISONED_ROW)
    relearned = _relearned_asr_cc(report, CLEAN_ROW)
    return {"attack": attack, "defense": "clean-model", "k": None, "seed": None, "base_known": None,
            "ca": clean.clean_accuracy, "asr_cc": clean.attack_success_rate_clean_correct,
            "floor_asr_cc": clean.attack_success_rate_clean_correct,
            "suspect_ca": suspect.clean_accuracy, "suspect_asr_cc": suspect.attack_success_rate_clean_correct,
            "clean_ca": clean.clean_accuracy, "relearn_asr_cc": relearned, "floor_relearn_asr_cc": relearned,
            "stage_s": clean.wall_time_s, "steps": clean.steps, "selected_step": clean.selected_step,
            "stage_key": clean.stage_key}


MEASURED_ON = ("date", "platform", "cpu_threads", "cuda", "torch", "transformers", "peft")


def record(row: dict, path: Path = ROWS) -> None:
    """Add `row` to the JSONL, replacing an earlier row of the same (attack, defense, k, seed); an earlier row with
    the same measurements stays as it was (a report rewritten by a later invocation does not re-date it)."""
    key = lambda r: (r["attack"], r["defense"], r["k"], r["seed"])  # noqa: E731
    measured = lambda r: {k: v for k, v in r.items() if k not in MEASURED_ON}  # noqa: E731
    kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if any(key(r) == key(row) and measured(r) == measured(row) for r in kept):
        return
    kept = [r for r in kept if key(r) != key(row)] + [row]
    kept.sort(key=lambda r: (r["attack"], r["defense"], r["k"] or 0, r["seed"] or 0))
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")


def stage_folder(row: dict, runs: Path, arms: dict[str, dict]) -> Path:
    """The stage folder that made a row's model: the clean model's in the suspect folder, a teacher row's teacher,
    an arm's defense (in the folder of its own an arm that changes the experiment gets)."""
    attack_dir = runs / "realistic" / row["attack"]
    if row["defense"] == "clean-model":
        return attack_dir / "suspect" / "clean"
    owner = next((a for a in arms.values() if a.get("teacher_row") == row["defense"]), None)
    arm = owner or arms.get(row["defense"], {})
    folder = attack_dir / (f"k{row['k']}-s{row['seed']}" + (f"-{arm['label']}" if arm.get("set") else ""))
    return folder / "teacher" if owner else folder / "defenses" / row["defense"]


def fill_stage_keys(runs: Path, path: Path = ROWS) -> None:
    """Give each row without one the key of the stage that made its model (the hash of its resolved settings), read
    from that stage's stage.json where its run folder is on this machine; rows written before rows carried it."""
    arms = {a["label"]: a for a in read_arms()}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    for row in rows:
        stage = stage_folder(row, runs, arms) / "stage.json"
        if row.get("stage_key") is None and stage.is_file():
            row["stage_key"] = json.loads(stage.read_text())["key"]
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


def run_attack(attack: str, runs: Path, ks: list[int], seeds: list[int], arms: list[dict],
               sets: list[str] = (), rows_path: Path = ROWS) -> Path:
    """The suspect folder, then every arm at every (k, seed), one `run` per arm; rows recorded as they land."""
    cfg = preset(attack, runs, sets)
    suspect = Path(cfg.output_dir)
    share_clean(suspect)
    run_experiment(dataclasses.replace(cfg, defenses=[]))
    report = read_report(suspect)
    record({**clean_model_row(attack, report), **measured_on(report)}, rows_path)
    for k in ks:
        for seed in seeds:
            for arm in arms:
                # An arm that changes the experiment (e.g. its teacher) gets a folder of its own.
                own = preset(attack, runs, [*sets, *arm["set"]]) if arm.get("set") else cfg
                folder = suspect.parent / (f"k{k}-s{seed}" + (f"-{arm['label']}" if arm.get("set") else ""))
                link_shared(suspect, folder)
                run_experiment(arm_config(own, arm, k, seed, folder))
                report = read_report(folder)
                for measured in filter(None, (arm, teacher_arm(arm))):
                    record({**flat_row(attack, measured, k, seed, report), **measured_on(report)}, rows_path)
                print(f"realistic: {attack} k={k} seed={seed} {arm['label']} recorded in {rows_path}", flush=True)
    return suspect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--ks", nargs="+", type=int, default=KS, help="the defender's labelled rows")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="the defender's draw and the defense seed")
    parser.add_argument("--arms", nargs="+", metavar="LABEL", help="arms of realistic-arms.yaml to run (default: all)")
    parser.add_argument("--runs", default="runs", help="where the run folders go")
    parser.add_argument("--arms-file", type=Path, default=ARMS, help="the arms (default: %(default)s)")
    parser.add_argument("--rows", type=Path, default=ROWS, help="the flat rows file; the table and chart in "
                        "RESULTS.md are rebuilt only from the default one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the preset")
    parser.add_argument("--suspects-only", action="store_true", help="train and measure the suspects, no arm")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and the chart only")
    args = parser.parse_args()
    if not args.report_only:
        arms = read_arms(args.arms_file)
        unknown = set(args.arms or []) - {a["label"] for a in arms}
        if unknown:
            raise SystemExit(f"unknown arm {', '.join(sorted(unknown))}; {args.arms_file} has "
                             f"{', '.join(a['label'] for a in arms)}")
        arms = [a for a in arms if args.arms is None or a["label"] in args.arms]
        for attack in args.attacks:
            run_attack(attack, Path(args.runs), [] if args.suspects_only else args.ks, args.seeds, arms, args.set,
                       args.rows)
    if args.rows.resolve() == ROWS.resolve():
        from realistic_report import write_report  # beside this file

        fill_stage_keys(Path(args.runs))
        write_report(ROWS)


if __name__ == "__main__":
    main()
