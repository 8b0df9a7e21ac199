"""benchmarks/results/<attack>.json, the file benchmarks/real.py records each attack's rows in: its format
(`AttackResults`, one `RowMeta` per defense row), where it lives, and the retired files of earlier victims. The
runner (real.py) writes it; the tables (real_tables.py) and charts (real_charts.py) read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from w2sdefense.results import ExperimentReport, Result, read_result

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EARLIER = RESULTS / "earlier"  # results JSONs of victims the presets no longer train
ATTACKS = ["badnet", "insent", "synbkd"]


@dataclass(frozen=True, kw_only=True)
class RowMeta(Result):
    """real.py's record of one defense row: the table row it belongs to (`variant`: its label without the
    seed), its seed, its defense, whether it is a variant, and its settings and its preset's as configured."""

    variant: str | None = None
    seed: int | None = None
    defense: str | None = None
    is_variant: bool | None = None
    settings: dict | None = None  # the row's DefenseConfig (config.to_dict), as real.py laid it over the preset
    preset: dict | None = None  # the preset's DefenseConfig of the same defense, when the row ran

    @property
    def group(self) -> str:
        """The row of the comparison table it belongs to (rows recorded before `variant` was: their defense)."""
        return self.variant or self.defense


@dataclass(frozen=True, kw_only=True)
class AttackResults(ExperimentReport):
    """benchmarks/results/<attack>.json: one attack's report (every row, the config, where it was measured) and
    real.py's records beside it: the run folder, the victim's stage key, each row's RowMeta, and the victim's
    per-evaluation history and kept step. The only code that knows the file's keys."""

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
    """A results JSON of benchmarks/real.py."""
    return read_result(AttackResults, path)


def load_results() -> dict[str, AttackResults]:
    """Every recorded results JSON, by attack, in the paper's order."""
    found = {p.stem: read_results(p) for p in RESULTS.glob("*.json") if p.stem in ATTACKS}
    return {a: found[a] for a in ATTACKS if a in found}


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
