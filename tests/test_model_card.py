"""`clean`'s model card (model/README.md): hub front matter that holds the report's numbers, and a card the tool
tells apart from one a user wrote or edited (that one is never written over)."""

from __future__ import annotations

import pytest
import yaml

from w2sdefense.errors import UserError
from w2sdefense.eval.card import card_text, write_card
from w2sdefense.results import CleanReport
from w2sdefense.rundir import check_card, tool_card

ODD = 'I watched: "this" 3D movie'  # a trigger YAML must quote


def _measured(trigger: str, asr_cc, target: int, by_label: dict) -> dict:
    return {"trigger": trigger, "asr_cc": asr_cc, "target_label": target,
            "by_label": {label: {"asr_cc": a, "rows": n} for label, (a, n) in by_label.items()}}


REPORT = {
    "model": "runs/suspect", "base_model": "org/public-base",
    "defense": {"name": "fine-mixing", "label": None, "settings": {"rho": 0.0}},
    "defense_stage_time_s": 12.5, "selected_step": 40, "cleaned_model": "runs/cleaned/model", "environment": {},
    "before": {"clean_accuracy": 0.875, "clean_total": 8, "triggers": [
        _measured("cf", 1.0, 1, {"0": (0.25, 4), "1": (1.0, 3)}),
        _measured(ODD, None, 0, {"0": (None, 0), "1": (None, 0)})]},
    "after": {"clean_accuracy": 0.75, "clean_total": 8, "triggers": [
        _measured("cf", 0.25, 0, {"0": (0.25, 4), "1": (0.0, 2)}),
        _measured(ODD, 0.5, 1, {"0": (None, 0), "1": (0.5, 2)})]},
}


def front_matter(text: str) -> dict:
    """The YAML between the card's opening `---` lines, parsed as the hub parses it."""
    assert text.startswith("---\n")
    return yaml.safe_load(text[len("---\n"):].split("\n---\n", 1)[0])


def test_the_front_matter_parses_to_the_reports_numbers(tmp_path):
    card = write_card(tmp_path / "model", CleanReport.from_json(REPORT))
    text = card.read_text(encoding="utf-8")
    meta = front_matter(text)
    assert meta["base_model"] == "org/public-base" and meta["library_name"] == "transformers"
    assert meta["tags"] == ["w2sdefense", "backdoor-removal", "text-classification"]
    numbers = meta["w2sdefense"]
    assert numbers["defense"] == "fine-mixing" and numbers["suspect"] == "runs/suspect"
    assert numbers["clean_accuracy"] == {"before": 0.875, "after": 0.75, "n": 8}
    assert numbers["triggers"] == [  # n: the rows of the reported label's ASR-cc
        {"trigger": "cf", "before": {"asr_cc": 1.0, "target_label": 1, "n": 3},
         "after": {"asr_cc": 0.25, "target_label": 0, "n": 4}},
        {"trigger": ODD, "before": {"asr_cc": None, "target_label": 0, "n": 0},
         "after": {"asr_cc": 0.5, "target_label": 1, "n": 2}}]
    assert "`fine-mixing`" in text and "100.0% toward label 1 (over 3 rows) before" in text
    assert "There is no floor" in text and "87.5% before, 75.0% after" in text
    assert tool_card(card)
    write_card(tmp_path / "model", CleanReport.from_json({**REPORT, "base_model": None}))  # its own: rewritten
    assert "base_model" not in front_matter(card.read_text(encoding="utf-8"))


def test_a_local_base_folder_is_no_hub_base_model(tmp_path):
    local = tmp_path / "my-base"
    local.mkdir()
    meta = front_matter(card_text(CleanReport.from_json({**REPORT, "base_model": str(local)})))
    assert "base_model" not in meta and meta["w2sdefense"]["base"] == str(local)


@pytest.mark.parametrize("how", ["edited inside", "a line added at the end", "written by hand"])
def test_a_card_someone_edited_or_wrote_is_theirs_and_never_written_over(tmp_path, how):
    report = CleanReport.from_json(REPORT)
    card = write_card(tmp_path / "model", report)
    ours = card.read_text(encoding="utf-8")
    theirs = {"edited inside": ours.replace("# Cleaned classifier", "# My classifier"),
              "a line added at the end": ours + "Reviewed by me.\n",
              "written by hand": "---\nlicense: mit\n---\n# My model\n"}[how]
    card.write_text(theirs, encoding="utf-8")
    assert not tool_card(card)
    with pytest.raises(UserError, match=r"README.md is not the model card w2sdefense wrote .* move it out"):
        write_card(tmp_path / "model", report)
    assert card.read_text(encoding="utf-8") == theirs
    card.write_text(ours, encoding="utf-8")  # the tool's own text again: its own card
    check_card(tmp_path / "model")
