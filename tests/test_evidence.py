"""defenses/evidence.py: every number `clean`'s report quotes from the benchmark equals the results files' own, and
the report picks the measurement of the settings that ran."""

from __future__ import annotations

import json
import re
from pathlib import Path

from w2sdefense.defenses.evidence import EVIDENCE, MAIN, REALISTIC, evidence_lines

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ATTACKS = {"badnet": "BadNet", "insent": "InSent", "synbkd": "SynAttack"}
ROW_NAMES = {"fine-mixing": "fine-mixing-r0 (160 steps)", "w2sdefense": "w2sdefense (80 steps)"}


def _main_table() -> dict[tuple[str, str], float]:
    """(row name, attack) -> the residual's mean, from the generated table of RESULTS.md (real:begin/end)."""
    text = (BENCH / "RESULTS.md").read_text()
    table = text[text.index("<!-- real:begin -->"):text.index("<!-- real:end -->")]
    found = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] in ATTACKS:
            found[(cells[3], ATTACKS[cells[0]])] = float(re.match(r"[-+]?\d+\.\d", cells[6]).group())
    return found


def _realistic(defense: str, attack: str, k: int) -> list[float]:
    rows = [json.loads(line) for line in (BENCH / "results" / "realistic-rows.jsonl").read_text().splitlines()]
    return [100 * (r["asr_cc"] - r["floor_asr_cc"]) for r in rows
            if r["defense"] == defense and ATTACKS.get(r["attack"]) == attack and r["k"] == k]


def test_every_quoted_residual_is_the_results_files():
    table = _main_table()
    for m in EVIDENCE:
        for attack, points in m.residual.items():
            if m.regime == MAIN:
                assert table[(ROW_NAMES[m.defense], attack)] == points, (m.defense, attack)
            else:
                assert m.regime == REALISTIC
                measured = _realistic(m.defense, attack, 256)
                assert round(sum(measured) / len(measured), 1) == points, (m.defense, attack, measured)


def test_the_report_quotes_the_settings_that_ran_and_says_when_nothing_was_measured():
    assert "+0.9 points (BadNet)" in evidence_lines("fine-mixing", {"rho": 0.0, "base_model": "smollm2-135m"})[0]
    assert "has not measured fine-mixing" in evidence_lines("fine-mixing", {"rho": 0.5, "base_model": "x"})[0]
    assert "has not measured w2sdefense" in evidence_lines("w2sdefense", {"beta": 1.0})[0]
    assert "has not measured crow" in evidence_lines("crow", {})[0]
