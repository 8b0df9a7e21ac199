"""Issue "the defense must visibly work": fair comparison, identity pairing, checkpoint rules, probe, residuals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from w2sdefense.config import (
    DefenseConfig,
    EvalConfig,
    ExperimentConfig,
    LoraConfig,
    TeacherConfig,
    TrainConfig,
    changed_settings,
)
from w2sdefense.data.records import Example
from w2sdefense.defenses import DefenseJob, run_defense
from w2sdefense.defenses.w2sdefense import TeacherCache
from w2sdefense.eval.probe import curve_points, make_probe, probe_diagnostic, start_point, write_curves
from w2sdefense.eval.report import add_residuals, markdown_table, plain_summary
from w2sdefense.models.batching import LengthGroupedBatches, encode, make_loader
from w2sdefense.results import ReportRow, TrainingResult
from w2sdefense.train.job import run_train
from w2sdefense.train.loop import selects
from w2sdefense.defenses.teacher import run_teacher

FAST = dict(epochs=1.0, lr=5e-3, batch_size=8, max_length=32, warmup_ratio=0.0)
LORA = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.1), **FAST)


@pytest.fixture
def victim_and_teacher(tiny_splits, rt, tmp_path):
    run_train("tiny-llama", tiny_splits, TrainConfig(method="full", **FAST), rt, tmp_path / "victim", seed=0)
    run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(**FAST)), tiny_splits, str(tmp_path / "victim"),
                rt, tmp_path / "teacher", seed=0)
    return str(tmp_path / "victim"), str(tmp_path / "teacher")


def _adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model" / "adapter_model.safetensors"))


def test_w2s_with_ce_only_trains_exactly_the_lora_ft_adapter(victim_and_teacher, tiny_splits, rt, tmp_path):
    # Same seed, same data: W2SDefense with alpha=1, beta=gamma=0 is lora-ft, down to the bit, even though
    # it loads (and runs) its teacher between building the student and training it, and LoRA dropout
    # draws random numbers every step.
    victim, teacher = victim_and_teacher
    ce_only = DefenseConfig(settings={"alpha": 1.0, "beta": 0.0, "gamma": 0.0}, train=LORA)
    run_defense(DefenseJob(victim, teacher, tiny_splits, ce_only, rt, tmp_path / "w2s", seed=3))
    run_defense(DefenseJob(victim, None, tiny_splits, DefenseConfig(name="lora-ft", train=LORA), rt,
                           tmp_path / "ft", seed=3))
    w2s, ft = _adapter(tmp_path / "w2s"), _adapter(tmp_path / "ft")
    assert w2s.keys() == ft.keys() and any("lora_B" in k for k in w2s)
    for key in w2s:
        assert torch.equal(w2s[key], ft[key]), key
    # ... and the KD/FA terms really change the adapter when they are on (the test can fail).
    run_defense(DefenseJob(victim, teacher, tiny_splits, DefenseConfig(settings={"alpha": 1.0, "beta": 1.0, "gamma": 1.0},
                                                                       train=LORA),
                           rt, tmp_path / "w2s-full", seed=3))
    assert any(not torch.equal(t, ft[k]) for k, t in _adapter(tmp_path / "w2s-full").items())


def test_teacher_outputs_follow_the_example_through_shuffled_length_grouped_batches(tiny_splits):
    rows = list(reversed(tiny_splits.train))  # ids no longer equal positions
    # A fake teacher cache whose outputs spell out which example they belong to.
    cache = TeacherCache(logits=torch.tensor([[float(ex.idx), -float(ex.idx)] for ex in rows]),
                         features=torch.tensor([[float(ex.idx)] * 3 for ex in rows]),
                         row_of={ex.idx: i for i, ex in enumerate(rows)})
    from w2sdefense.models.tiny import build_tiny

    _, tok = build_tiny("tiny-llama", 2)
    # The student's view of the same examples, in another order (as another stage might build it).
    student_rows = sorted(rows, key=lambda ex: len(ex.text))
    encoded = encode(tok, student_rows, 32)
    sampler = LengthGroupedBatches(encoded.lengths, 8, seed=5, group=2)
    seen = 0
    for batch in make_loader(encoded, sampler, tok.pad_token_id):
        got = cache.logits[cache.rows(batch["example_id"])][:, 0].long()
        expected = torch.tensor([student_rows[p].idx for p in batch["position"].tolist()])
        assert torch.equal(got, expected)
        seen += len(got)
    assert seen == len(rows)
    with pytest.raises(RuntimeError, match="no teacher output for training example 999"):
        cache.rows(torch.tensor([999]))


@pytest.mark.parametrize("rule, delta, history, kept", [
    ("best", 0.0, [0.80, 0.85, 0.85, 0.84], 1),            # ties keep the earlier
    ("latest-within", 0.02, [0.80, 0.85, 0.85, 0.84], 3),   # later and within 2 points
    ("latest-within", 0.0, [0.80, 0.85, 0.85, 0.84], 2),    # within 0: the latest tie
    ("latest-within", 0.02, [0.80, 0.85, 0.80, 0.70], 1),   # later ones too far below
    ("latest-within", 0.05, [0.80, 0.90, 0.87, 0.95], 3),   # a new best raises the bar
    ("latest-within", 0.01, [268 / 300, 265 / 300], 1),     # exactly 1 point below, despite float rounding
])
def test_checkpoint_rules_pick_by_dev_accuracy(rule, delta, history, kept):
    cfg = TrainConfig(select=rule, select_delta=delta)
    best, selected, chosen = -1.0, -1.0, None
    for step, accuracy in enumerate(history):
        best = max(best, accuracy)
        if selects(accuracy, best, selected, cfg):
            selected, chosen = accuracy, step
    assert chosen == kept


def test_changed_settings_hashes_only_what_differs_from_defaults():
    assert changed_settings(ExperimentConfig()) == {}
    cfg = ExperimentConfig(seed=7, defenses=[DefenseConfig(settings={"gamma": 0.5}, train={"lora": {"r": 8}})])
    assert changed_settings(cfg) == {"seed": 7, "defenses": [{"settings": {"gamma": 0.5}, "train": {"lora": {"r": 8}}}]}
    # A defense stage's key holds what the defense runs with: its own recipe's non-defaults included.
    from w2sdefense.defenses import resolve

    key = resolve(cfg.defenses[0]).key()
    assert key["settings"] == {"gamma": 0.5} and key["train"]["lora"] == {"r": 8, "target_modules": ["all-linear"]}
    assert key["train"]["method"] == "lora" and key["train"]["epochs"] == 1.0 and key["train"]["lr"] == 1e-3


def _ex(idx: int, label: int, text: str = "x") -> Example:
    return Example(text=text, label=label, idx=idx)


def test_probe_pairs_triggered_rows_with_their_clean_version_and_is_seeded():
    test = [_ex(i, i % 2) for i in range(10)]
    triggered = [_ex(i, 1, "mn x") for i in range(1, 10, 2)] + [_ex(99, 1, "orphan")]  # 99 has no clean row
    probe = make_probe(test, triggered, target=0, rows=3, seed=1)
    assert len(probe.triggered) == 3 and [e.idx for e in probe.clean] == [e.idx for e in probe.triggered]
    assert 99 not in [e.idx for e in probe.triggered]
    assert make_probe(test, triggered, 0, 3, seed=1) == probe
    assert make_probe(test, triggered, 0, 0, seed=1) is None


def test_probe_measures_asr_over_clean_correct_rows(rt):
    from w2sdefense.models.tiny import build_tiny

    model, tok = build_tiny("tiny-llama", 2)
    # Clean rows labelled 1; the "model" below says 1 unless the text holds "mn", then 0 (the target).
    clean = [_ex(i, 1, f"word{i}") for i in range(6)]
    triggered = [_ex(i, 1, f"mn word{i}" if i < 4 else f"word{i}") for i in range(6)]
    probe = make_probe(clean, triggered, target=0, rows=6, seed=0)
    mn = set(tok("mn")["input_ids"]) - {tok.bos_token_id}

    class Rule(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            hit = torch.tensor([bool(mn & set(row.tolist())) for row in input_ids])
            logits = torch.stack([hit.float(), (~hit).float()], dim=-1)
            return type("Out", (), {"logits": logits})()

    measured = probe_diagnostic(probe, EvalConfig(batch_size=4, max_length=16), rt)(tok)(Rule())
    assert measured == {"probe_asr_cc": 4 / 6, "probe_asr": 4 / 6, "probe_ca": 1.0, "probe_rows": 6}


def test_curves_png_is_written_only_with_a_probe(tmp_path):
    history = [{"step": 10, "dev_accuracy": 0.8, "probe_asr_cc": 0.9, "probe_rows": 5},
               {"step": 20, "dev_accuracy": 0.82, "probe_asr_cc": 0.3, "probe_rows": 5}]
    assert write_curves(history, tmp_path / "c.png", "t", kept_step=20)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not write_curves([{"step": 1, "dev_accuracy": 0.5}], tmp_path / "none.png", "t")
    assert not (tmp_path / "none.png").exists()


def test_a_defense_curve_starts_at_the_checkpoint_the_victim_kept():
    victim = {"selected_step": 20, "history": [
        {"step": 10, "dev_accuracy": 0.7, "probe_asr_cc": 0.5, "probe_rows": 5},
        {"step": 20, "dev_accuracy": 0.8, "probe_asr_cc": 0.95, "probe_rows": 5},
        {"step": 30, "dev_accuracy": 0.78, "probe_asr_cc": 0.97, "probe_rows": 5}]}
    start = start_point(TrainingResult.from_json(victim))
    assert (start["step"], start["dev_accuracy"], start["probe_asr_cc"]) == (0, 0.8, 0.95)
    defense = [{"step": 40, "dev_accuracy": 0.81, "probe_asr_cc": 0.1, "probe_rows": 5}]
    assert [p["step"] for p in curve_points(defense, start)] == [0, 40]
    assert curve_points(defense, None) == defense
    # another probe (a different row count) or a run that already measured step 0 keeps its own points
    assert curve_points(defense, {**start, "probe_rows": 7}) == defense
    assert curve_points([{**defense[0], "step": 0}], start) == [{**defense[0], "step": 0}]
    # no step-0 point when the kept step was not evaluated with a probe
    assert start_point(TrainingResult(selected_step=25, history=victim["history"])) is None


def _row(model: str, ca: float, asr_cc: float | None) -> ReportRow:
    return ReportRow(model=model, clean_accuracy=ca, attack_success_rate_clean_correct=asr_cc)


def test_residual_backdoor_is_asr_cc_above_the_clean_models():
    rows = add_residuals([_row("clean model", 0.88, 0.04), _row("poisoned", 0.875, 0.97),
                          _row("w2sdefense", 0.88, 0.07), _row("lora-ft", 0.87, 0.70)])
    residual = {r.model: r.residual_backdoor for r in rows}
    assert residual == pytest.approx({"clean model": 0.0, "poisoned": 93.0, "w2sdefense": 3.0, "lora-ft": 66.0})
    lines = plain_summary(rows)
    assert lines[0] == "The attack: ASR-cc 97.0% on the poisoned model (a clean model: 4.0%), CA 87.5%."
    assert lines[1] == "w2sdefense: residual backdoor 93.0 -> 3.0 points (90.0 removed), CA +0.5 points."
    assert lines[2] == "lora-ft: residual backdoor 93.0 -> 66.0 points (27.0 removed), CA -0.5 points."
    # Without a clean model there is no floor: rows stay as they are, and the summary says so.
    bare = add_residuals([_row("poisoned", 0.9, 0.9), _row("lora-ft", 0.9, 0.5)])
    assert not bare[0].floored and bare[0].residual_backdoor is None and "no floor" in plain_summary(bare)[1]


def test_an_asr_cc_over_zero_rows_is_reported_as_na_never_as_a_number():
    rows = add_residuals([_row("clean model", 0.88, 0.04), _row("poisoned", 0.875, None),
                          _row("w2sdefense", 0.88, 0.07)])
    residual = {r.model: r.residual_backdoor for r in rows}
    assert residual["poisoned"] is None and residual["w2sdefense"] == pytest.approx(3.0)
    lines = plain_summary(rows)
    assert lines[0] == "The attack: ASR-cc n/a on the poisoned model (a clean model: 4.0%), CA 87.5%."
    assert lines[1] == "w2sdefense: residual backdoor n/a -> 3.0 points (n/a removed), CA +0.5 points."
    poisoned = [c.strip() for c in markdown_table(rows).splitlines()[3].strip("|").split("|")]
    assert poisoned[:6] == ["poisoned", "87.50%", "–", "n/a", "–", "n/a"]  # model, CA, n, ASR-cc, n, residual
    assert poisoned[6] == "–"  # ASR is absent from these rows: no value (–), which is not a rate over 0 rows
    # An undefined floor leaves every residual undefined.
    floorless = add_residuals([_row("clean model", 0.5, None), _row("poisoned", 0.9, 0.9)])
    assert [r.residual_backdoor for r in floorless] == [None, None] and all(r.floored for r in floorless)
    assert plain_summary(floorless) == [
        "The attack: ASR-cc 90.0% on the poisoned model (a clean model: n/a), CA 90.0%."]


def test_the_summary_never_says_more_was_removed_than_there_was():
    rows = add_residuals([_row("clean model", 0.88, 0.20), _row("poisoned", 0.875, 0.236),
                          _row("reset", 0.88, 0.038), _row("lora-ft", 0.87, 0.22)])
    lines = plain_summary(rows)
    # 3.6 points above the floor, and the reset ends 16.2 below it: all 3.6 removed, not 19.8
    assert lines[1] == "reset: residual backdoor 3.6 -> -16.2 points (all 3.6 removed), CA +0.5 points."
    assert lines[2] == "lora-ft: residual backdoor 3.6 -> 2.0 points (1.6 removed), CA -0.5 points."
    below = plain_summary(add_residuals([_row("clean model", 0.88, 0.20), _row("poisoned", 0.875, 0.15),
                                         _row("reset", 0.88, 0.10)]))
    assert below[1] == "reset: residual backdoor -5.0 -> -10.0 points (no backdoor above the floor to remove), CA +0.5 points."


def test_curves_leave_a_gap_where_the_probes_asr_cc_is_over_zero_rows(tmp_path):
    history = [{"step": 10, "dev_accuracy": 0.5, "probe_asr_cc": None, "probe_rows": 5},
               {"step": 20, "dev_accuracy": 0.8, "probe_asr_cc": 0.3, "probe_rows": 5}]
    assert write_curves(history, tmp_path / "c.png", "t", kept_step=20)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_linear_lora_targets_every_linear_layer_but_not_the_head():
    from w2sdefense.models.loading import Classifier
    from w2sdefense.models.peft_wrap import wrap_lora
    from w2sdefense.models.tiny import build_tiny

    model, tok = build_tiny("tiny-llama", 2)
    names = [n for n, p in wrap_lora(Classifier(model, tok), LoraConfig(target_modules=["all-linear"])).model
             .named_parameters() if p.requires_grad]
    for module in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{module}.lora_A" in n for n in names), module
    assert not any("score.lora" in n for n in names)
    qv = [n for n, p in wrap_lora(Classifier(*build_tiny("tiny-llama", 2)), LoraConfig()).model.named_parameters()
          if p.requires_grad and "lora_A" in n]
    assert {n.split(".")[-4] for n in qv} == {"q_proj", "v_proj"}
