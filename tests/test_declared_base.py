"""`clean` finds the base the suspect names: its adapter, its config.json, its model card, in that order."""

from __future__ import annotations

import json

from w2sdefense.clean import choose_defense, with_declared_base
from w2sdefense.config import CleanJob, DefenseConfig
from w2sdefense.models.loading import declared_base


def _folder(tmp_path, name, files: dict[str, str]):
    folder = tmp_path / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


def test_the_base_is_read_from_the_adapter_then_the_config_then_the_card(tmp_path):
    card = "---\nbase_model:\n- org/public-model\ntags: [x]\n---\n# a card\n"
    both = _folder(tmp_path, "both", {"config.json": json.dumps({"_name_or_path": "org/from-config"}),
                                      "README.md": card})
    assert declared_base(str(both)) == ("org/from-config", f"{both / 'config.json'} (_name_or_path)")
    only_card = _folder(tmp_path, "card", {"config.json": json.dumps({"model_type": "llama"}), "README.md": card})
    assert declared_base(str(only_card)) == ("org/public-model", f"{only_card / 'README.md'} (base_model)")
    adapter = _folder(tmp_path, "adapter", {"adapter_config.json": json.dumps({"base_model_name_or_path": "tiny-llama"}),
                                            "README.md": card})
    assert declared_base(str(adapter))[0] == "tiny-llama"


def test_nothing_is_declared_by_a_folder_naming_itself_or_nothing(tmp_path):
    itself = _folder(tmp_path, "itself", {})
    (itself / "config.json").write_text(json.dumps({"_name_or_path": str(itself)}))
    assert declared_base(str(itself)) is None
    assert declared_base(str(_folder(tmp_path, "bare", {"config.json": "{}", "README.md": "no front matter"}))) is None
    assert declared_base(str(_folder(tmp_path, "broken", {"config.json": "{not json", "README.md": "---\n: [\n---"}))) is None
    assert declared_base("org/hub-model") is None  # not a local folder: nothing to read offline


def test_clean_takes_the_declared_base_only_for_its_default_defense(tmp_path):
    suspect = _folder(tmp_path, "suspect", {"config.json": json.dumps({"_name_or_path": "tiny-llama"})})
    job, source = with_declared_base(CleanJob(model=str(suspect)))
    assert job.base_model == "tiny-llama" and "config.json" in source
    assert choose_defense(job).name == "fine-mixing" and choose_defense(job).settings["base_model"] == "tiny-llama"
    given, source = with_declared_base(CleanJob(model=str(suspect), base_model="smollm2-135m"))
    assert given.base_model == "smollm2-135m" and source is None
    chosen, source = with_declared_base(CleanJob(model=str(suspect), defense=DefenseConfig(name="lora-ft")))
    assert chosen.base_model is None and source is None
