"""Every measured number the README quotes comes from the committed results, and no hand-typed one creeps back.

(a) Each generated block of the README (`<!-- NAME:begin -->` ... `<!-- NAME:end -->`) is rebuilt from the
committed results files (benchmarks/results/<attack>.json; the realistic block from results/realistic-rows.jsonl, by
`realistic_report.headline`) by the code `python benchmarks/real.py --report-only`
writes it with (`real_tables.readme_blocks`; no model runs) and must equal, byte for byte, what the README holds. The
model-families block is not a measurement: tests/test_families.py checks it against the tested families.

(b) The rule for the README's prose (everything outside generated blocks, and the comments of fenced code): a measured
quantity is never typed by hand. The test fails on, and names, each of
  - a number with a decimal point followed by %, "points", "pts" or "x" (97.7 %, 3.3 points, 1.68x);
  - a signed number followed by %, "points" or "pts" (+3 points, −1.04 points, +77.8 %);
  - any ± (a mean ± sd is always a measurement);
  - a duration: a number followed by s, min, h, seconds, minutes or hours (10 min 29 s, about 30 s).
Settings and thresholds are whole numbers without a sign (a 14 % poison share, a warning above 1 % of triggers cut,
a checkpoint within 5 dev points of the best) and pass: a measured result is never rounded to a whole number, so
none can hide there. Timings, test counts and every other measured number live in benchmarks/RESULTS.md with the
command, the machine and the date; the README points there.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import real_results  # noqa: E402
import real_tables  # noqa: E402
import realistic_report  # noqa: E402

README = REPO / "README.md"
BLOCK = re.compile(r"<!-- ([\w-]+):begin -->\n(.*?)\n<!-- \1:end -->", re.S)
CHECKED_ELSEWHERE = {"families"}  # tests/test_families.py
NUMBER = r"\d+(?:[.,]\d+)*"
HAND_TYPED = re.compile("|".join([
    rf"(?<![\w.]){NUMBER}\.\d+\s?(?:%|points?\b|pts\b|x\b)",  # a decimal with a unit of result
    rf"(?<![\w.])[+\-−]{NUMBER}\s?(?:%|points?\b|pts\b)",  # a signed difference
    r"\S*\s?±\s?\S*",  # a mean ± sd
    rf"(?<![\w.]){NUMBER}\s?(?:s|min|h|seconds?|minutes?|hours?)\b",  # a duration
]))
COMMENT = re.compile(r"(?:^|\s)#\s.*$")


def generated_blocks(text: str) -> dict[str, str]:
    """The body of each `<!-- NAME:begin -->` ... `<!-- NAME:end -->` block of a Markdown text, by name."""
    return {m.group(1): m.group(2) for m in BLOCK.finditer(text)}


def blocks_that_differ(text: str, expected: dict[str, str]) -> list[str]:
    """The names of the expected blocks that the text lacks or holds with another body."""
    found = generated_blocks(text)
    return [name for name, body in expected.items() if found.get(name) != body.strip()]


def hand_typed(text: str) -> list[str]:
    """`line N: quantity` for each measured-looking quantity in the prose: outside generated blocks, and in fenced
    code only its `# comments`."""
    prose = BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # blank the blocks, keep line numbers
    found, fenced = [], False
    for number, line in enumerate(prose.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:  # of code, only its comments are prose
            comment = COMMENT.search(line)
            line = comment.group(0) if comment else ""
        found += [f"line {number}: {m.group(0).strip()!r}" for m in HAND_TYPED.finditer(line)]
    return found


def _expected() -> dict[str, str]:
    results = real_results.load_results()
    rows = realistic_report.read_rows(REPO / "benchmarks" / "results" / "realistic-rows.jsonl")
    return {**real_tables.readme_blocks(results, real_tables.summary(results)),
            "realistic": realistic_report.headline(rows)}


def test_every_generated_readme_block_is_what_the_committed_results_give():
    text, expected = README.read_text(encoding="utf-8"), _expected()
    assert set(generated_blocks(text)) == set(expected) | CHECKED_ELSEWHERE, (
        "a README block that no script writes (or a missing one; real.py would append it at the end)")
    stale = blocks_that_differ(text, expected)
    assert not stale, (f"README blocks {stale} differ from the committed results: rerun "
                       "`python benchmarks/real.py --report-only` (the realistic block: `python "
                       "benchmarks/realistic.py --report-only`), never edit them by hand")


def test_a_changed_number_in_a_block_is_caught():
    expected = _expected()
    text = "\n\n".join(f"<!-- {name}:begin -->\n{body.strip()}\n<!-- {name}:end -->" for name, body in expected.items())
    assert blocks_that_differ(text, expected) == []
    body = generated_blocks(text)["headline"]
    changed = re.sub(r"\d\.\d", lambda m: f"{(int(m.group(0)[0]) + 1) % 10}.{m.group(0)[2]}", body, count=1)
    assert changed != body
    assert blocks_that_differ(text.replace(body, changed), expected) == ["headline"]


def test_the_readme_prose_quotes_no_hand_typed_measurement():
    found = hand_typed(README.read_text(encoding="utf-8"))
    assert not found, ("measured quantities typed into the README's prose (move them to benchmarks/RESULTS.md "
                       f"with the command, machine and date, or into a generated block): {found}")


def test_the_prose_rule_catches_results_and_passes_settings():
    text = "\n".join([
        "W2SDefense leaves +3.9 points; the scan found 53.8 % in 14 min 18 s, 1.68x faster, 4.5 ± 1.5.",
        "It costs −1 point. Poison 14 % of rows, warn above 1 % cut, keep within 5 dev points, lr 2e-5, 3 epochs.",
        "<!-- headline:begin -->", "| +0.9 ± 0.3 | 88.4 % |", "<!-- headline:end -->",
        "```bash", "make test  # 495 tests in 2 min 56 s", "python -c \"print('+3.9 points')\"", "```",
    ])
    assert hand_typed(text) == ["line 1: '+3.9 points'", "line 1: '53.8 %'", "line 1: '14 min'", "line 1: '18 s'",
                                "line 1: '1.68x'", "line 1: '4.5 ± 1.5.'", "line 2: '−1 point'",
                                "line 7: '2 min'", "line 7: '56 s'"]
