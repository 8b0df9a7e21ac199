"""What the benchmark measured for a defense, for `clean`'s report: the numbers a user should weigh a cleaned model
against, in the regime they were measured in (benchmarks/RESULTS.md; tests/test_evidence.py checks every number
here against the results files, so a rerun that changes one fails until this table follows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """A defense's residual backdoor (ASR-cc minus a clean model's, points) per attack, in one regime."""

    defense: str  # the registry name
    settings: dict  # the settings it ran with besides the base (e.g. {"rho": 0.0}); others are another method
    regime: str  # in words: model, data, whose rows the defender held, how many seeds
    residual: dict[str, float]  # attack -> points, the mean over the seeds
    source: str  # where the table is


MAIN = ("SmolLM2-135M suspects on SST-2, the defender holding 1280 of the attacker's own 2000 rows, mean of 3 seeds")
REALISTIC = ("SmolLM2-135M suspect on SST-2 trained on 4000 rows, the defender holding 256 rows the attacker never "
             "saw, 1 seed")

EVIDENCE = (
    Measured("fine-mixing", {"rho": 0.0}, MAIN, {"BadNet": 0.9, "InSent": 2.7, "SynAttack": 1.6},
             "benchmarks/RESULTS.md, the paper's experiment at laptop scale (fine-mixing-r0)"),
    Measured("w2sdefense", {}, MAIN, {"BadNet": 3.9, "InSent": 72.6, "SynAttack": 32.4},
             "benchmarks/RESULTS.md, the paper's experiment at laptop scale (w2sdefense)"),
    Measured("reset-distill", {}, REALISTIC, {"BadNet": -0.5},
             "benchmarks/RESULTS.md, the realistic protocol (results/realistic-rows.jsonl)"),
)


def evidence_lines(name: str, settings: dict) -> list[str]:
    """What the benchmark measured for the defense `name` run with `settings`, in words; a defense it never measured
    says so."""
    given = {k: v for k, v in settings.items() if k != "base_model"}  # which base is the user's, not the method's
    found = [m for m in EVIDENCE if m.defense == name and given == m.settings]
    if not found:
        return [f"the benchmark has not measured {name} with these settings: its effect on a backdoor is unknown."]
    return [f"the benchmark measured {name} ({m.regime}): residual backdoor "
            + ", ".join(f"{points:+.1f} points ({attack})" for attack, points in m.residual.items())
            + f" [{m.source}]." for m in found]
