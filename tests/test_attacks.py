"""Attack invariants: trigger placement, recoverable clean text, the registry and transforms."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from w2sdefense.attacks import (
    Attack,
    InsertionAttack,
    available_attacks,
    get_attack,
    insert_words,
    register_attack,
)
from w2sdefense.attacks.badnet import BadNet
from w2sdefense.attacks.base import ATTACKS
from w2sdefense.attacks.insent import InSent
from w2sdefense.attacks.stylebkd import StyleBkd
from w2sdefense.attacks.synbkd import SynBkd
from w2sdefense.config import AttackConfig
from w2sdefense.data import Example
from w2sdefense.errors import UserError

TEXTS = ["a b", "the film is good", "one two three four five six seven", "x  y\tz"]


def _remove(tokens: list[str], trigger: list[str]) -> tuple[list[str], int]:
    """Tokens with every occurrence of the trigger token sequence removed, and how many."""
    out, found, i = [], 0, 0
    while i < len(tokens):
        if tokens[i:i + len(trigger)] == trigger:
            found, i = found + 1, i + len(trigger)
        else:
            out.append(tokens[i])
            i += 1
    return out, found


# ------------------------------------------------------------------------------------------------
# insert_words


def test_empty_and_one_word_texts() -> None:
    rng = random.Random(0)
    assert insert_words("", "mn", 1, "interior", rng) == "mn"
    assert insert_words("   ", "mn", 1, "any", rng) == "mn"
    assert insert_words("", "mn", 2, "interior", rng) == "mn mn"
    # One word has no interior slot: the trigger goes after it, whatever the seed.
    assert {insert_words("great", "mn", 1, "interior", random.Random(s)) for s in range(50)} == {
        "great mn"}
    assert {insert_words("great", "mn", 1, "any", random.Random(s)) for s in range(50)} == {
        "great mn", "mn great"}
    assert insert_words("great", "I watched this", 1, "interior", rng) == "great I watched this"


@pytest.mark.parametrize("text", TEXTS)
def test_interior_never_first_or_last(text: str) -> None:
    clean = text.split()
    positions = set()
    for seed in range(300):
        for count in (1, 3):
            out = insert_words(text, "mn", count, "interior", random.Random(seed)).split()
            assert out[0] == clean[0] and out[-1] == clean[-1]
            assert out.count("mn") == count
            assert _remove(out, ["mn"]) == (clean, count)
            if count == 1:
                positions.add(out.index("mn"))
    assert positions == set(range(1, len(clean)))  # every interior slot is reachable


def test_any_reaches_every_slot() -> None:
    clean = "the film is good".split()
    positions = {insert_words("the film is good", "mn", 1, "any", random.Random(s)).split().index("mn")
                 for s in range(300)}
    assert positions == set(range(len(clean) + 1))


def test_sentence_trigger_is_recoverable() -> None:
    trigger = "I watched this 3D movie"
    for seed in range(100):
        out = insert_words(TEXTS[2], trigger, 2, "interior", random.Random(seed))
        assert trigger in out
        assert _remove(out.split(), trigger.split()) == (TEXTS[2].split(), 2)


def test_several_triggers_are_all_used_and_seeded() -> None:
    triggers = ["cf", "mn", "bb"]
    used = set()
    for seed in range(60):
        out = insert_words("a b c d", triggers, 2, "interior", random.Random(seed)).split()
        inserted = [w for w in out if w in triggers]
        assert len(inserted) == 2
        used.update(inserted)
    assert used == set(triggers)
    once = insert_words(TEXTS[2], triggers, 3, "any", random.Random(7))
    assert once == insert_words(TEXTS[2], triggers, 3, "any", random.Random(7))


# ------------------------------------------------------------------------------------------------
# Registry and insertion attacks


def test_registry_names_and_aliases() -> None:
    assert {"badnet", "insent", "synbkd", "stylebkd"} <= set(available_attacks())
    expected = {"badnet": (BadNet, "badnet"), "insent": (InSent, "insent"),
                "addsent": (InSent, "insent"), "SynBkd": (SynBkd, "synbkd"),
                "synattack": (SynBkd, "synbkd"), "stylebkd": (StyleBkd, "stylebkd")}
    for name, (cls, canonical) in expected.items():
        attack = get_attack(AttackConfig(name=name))
        assert type(attack) is cls and attack.name == canonical


def test_unknown_attack_lists_known_names() -> None:
    with pytest.raises(UserError, match=r"unknown attack 'ripple' \(attack.name\); known: ") as err:
        get_attack(AttackConfig(name="ripple"))
    for name in ("badnet", "insent (alias addsent)", "stylebkd", "synbkd (alias synattack)"):
        assert name in str(err.value)


def test_new_attack_is_one_registration() -> None:
    @register_attack("upper-test", "upper-alias")
    class Upper(Attack):
        def apply(self, example: Example, split: str, rng: random.Random) -> str | None:
            return example.text.upper()

    try:
        assert get_attack(AttackConfig(name="upper-test")).apply(Example("ab", 0, 0), "train",
                                                                 random.Random(0)) == "AB"
        assert type(get_attack(AttackConfig(name="Upper-Alias"))) is Upper
        with pytest.raises(ValueError, match="registered twice"):
            register_attack("upper-test")(Upper)
        with pytest.raises(ValueError, match="'upper-alias' is registered twice"):
            register_attack("other", "upper-alias")(Upper)
    finally:
        ATTACKS.remove("upper-test")
    assert "upper-test" not in available_attacks() and "upper-alias" not in ATTACKS


@pytest.mark.parametrize("name,trigger", [("badnet", "mn"), ("insent", "I watched this 3D movie")])
def test_insertion_attack_defaults(name: str, trigger: str) -> None:
    attack = get_attack(AttackConfig(name=name))
    assert isinstance(attack, InsertionAttack)
    for seed in range(30):
        out = attack.apply(Example(TEXTS[1], 1, 0), "train", random.Random(seed))
        assert _remove(out.split(), trigger.split()) == (TEXTS[1].split(), 1)
        assert not out.startswith(trigger) and not out.endswith(trigger)


def test_configured_triggers_and_count() -> None:
    cfg = AttackConfig(name="badnet", triggers=["cf", " tq "], num_insertions=3, position="any")
    attack = get_attack(cfg)
    assert attack.triggers == ["cf", "tq"]
    out = attack.apply(Example("a b c", 0, 0), "test", random.Random(1)).split()
    assert sum(w in ("cf", "tq") for w in out) == 3 and len(out) == 6
    with pytest.raises(UserError, match="attack.triggers is empty"):
        get_attack(AttackConfig(name="badnet", triggers=[]))
    with pytest.raises(UserError, match="attack.triggers must be non-empty strings"):
        get_attack(AttackConfig(name="insent", triggers=["ok", "  "]))


# ------------------------------------------------------------------------------------------------
# Transform attacks


def _transforms(root: Path, name: str, split: str, table: dict[int, str]) -> Path:
    path = root / name / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"idx": i, "text": t}) + "\n" for i, t in table.items()))
    return path


def test_synbkd_looks_up_by_idx_and_skips_uncovered_rows(tmp_path: Path) -> None:
    path = _transforms(tmp_path, "scpn", "test", {0: "when p0 , it is .", 2: "if p2 , ok ."})
    attack = get_attack(AttackConfig(name="synbkd"), tmp_path)
    rng = random.Random(0)
    assert attack.apply(Example("clean 0", 1, 0), "test", rng) == "when p0 , it is ."
    assert attack.apply(Example("clean 1", 1, 1), "test", rng) is None
    assert attack.apply(Example("clean 2", 0, 2), "test", rng) == "if p2 , ok ."
    assert attack.source_files() == {"test": path}
    with pytest.raises(UserError, match=r"transform file not found: .*scpn/dev.jsonl"):
        attack.apply(Example("d", 0, 0), "dev", rng)  # there is no dev paraphrase file


def test_stylebkd_default_and_custom_transform(tmp_path: Path) -> None:
    _transforms(tmp_path, "bible", "train", {0: "and lo, the film was good"})
    _transforms(tmp_path, "poetry", "train", {0: "o film, thou art good"})
    example = Example("the film was good", 1, 0)
    assert get_attack(AttackConfig(name="stylebkd"), tmp_path).apply(
        example, "train", random.Random(0)) == "and lo, the film was good"
    custom = get_attack(AttackConfig(name="stylebkd", transform="poetry"), tmp_path)
    assert custom.apply(example, "train", random.Random(0)) == "o film, thou art good"


def test_transform_attack_without_transforms_dir() -> None:
    attack = get_attack(AttackConfig(name="stylebkd"), None)
    with pytest.raises(UserError, match="stylebkd needs precomputed transforms.*transforms/bible"):
        attack.apply(Example("x", 0, 0), "train", random.Random(0))


def test_an_empty_transform_is_skipped_and_counted_when_poisoning(tmp_path: Path) -> None:
    # As in sst2's Bible-style test transform: some rows' transforms are empty strings. Each must count
    # as a row without a transform when poisoning, not reach a model (which reads no tokens from it).
    from w2sdefense.attacks.poison import poison_dataset
    from w2sdefense.config import DataConfig, PoisonConfig

    data = tmp_path / "toy"
    for split in ("train", "dev", "test"):
        rows = [{"text": f"word{i % 2} row {i}", "label": i % 2} for i in range(10)]
        data.mkdir(exist_ok=True)
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _transforms(data / "transforms", "bible", "train", {i: "" if i == 2 else f"lo, row {i}" for i in range(10)})
    _transforms(data / "transforms", "bible", "test", {i: "  " if i in (1, 5) else f"lo, row {i}" for i in range(10)})
    out = poison_dataset(DataConfig(dataset=str(data)), AttackConfig(name="stylebkd"),
                         PoisonConfig(count=3, mode="clean-label"), 0, tmp_path / "p")
    counts = json.loads((out / "poison.json").read_text())["counts"]
    assert counts["skipped_no_trigger"] == {"train": 1, "test": 2}
    assert counts["skipped_no_trigger_train_idx"] == [2] and counts["poisoned"] == 3
    triggered = [json.loads(line) for line in (out / "test_triggered.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in triggered] == [3, 7, 9] and all(r["text"].strip() for r in triggered)
