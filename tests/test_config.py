"""Strict config loading: unknown keys, types, coercions, dotted overrides, validation, YAML files."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import yaml

from w2sdefense.config import (
    AttackConfig,
    DefenseConfig,
    ExperimentConfig,
    LoraConfig,
    PoisonConfig,
    PoisonJob,
    TrainConfig,
    TrainJob,
    apply_override,
    dump_yaml,
    from_dict,
    load_config,
    read_yaml,
)
from w2sdefense.defenses import resolve
from w2sdefense.defenses.base import check_defenses
from w2sdefense.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# Experiments: configs/ (configs/accelerate/ holds launcher files) and the benchmark runs that are one.
CONFIGS = sorted((REPO / "configs").glob("*.y*ml")) + [REPO / "benchmarks" / "filters-paper.yaml"]


def _message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# ------------------------------------------------------------------------------------------------
# Unknown keys and types


def test_unknown_top_level_key_names_it_and_lists_valid_keys() -> None:
    with pytest.raises(UserError) as exc:
        from_dict(ExperimentConfig, {"seed": 1, "sed": 2})
    msg = _message(exc)
    assert "sed" in msg.split(";")[0]
    for valid in ("name", "seed", "victim", "defenses", "eval"):
        assert valid in msg.split(";")[1]


def test_unknown_nested_key_names_the_dotted_path_and_its_valid_keys() -> None:
    with pytest.raises(UserError) as exc:
        from_dict(ExperimentConfig, {"victim": {"train": {"lrr": 1e-3}}})
    msg = _message(exc)
    assert "victim.train.lrr" in msg
    listed = msg.split("valid keys")[1]
    for valid in ("lr", "epochs", "batch_size", "lora"):
        assert valid in listed
    assert "model" not in listed  # VictimConfig's keys are not TrainConfig's


def test_unknown_key_inside_a_list_item_names_its_index() -> None:
    cfg = from_dict(ExperimentConfig, {"defenses": [{"name": "lora-ft"}, {"betta": 0.1}]})
    with pytest.raises(UserError, match=r"^unknown setting defenses\.1\.betta; w2sdefense takes base_model, rho, mix, "
                                        r"head, tokenizer, alpha, beta, gamma, temperature, alignment, depths, gamma_final, "
                                        r"teacher_mode beside name, label, seed and train$"):
        check_defenses(cfg.defenses)


def test_string_for_int_names_the_dotted_key() -> None:
    with pytest.raises(UserError, match=r"victim\.train\.batch_size must be int"):
        from_dict(ExperimentConfig, {"victim": {"train": {"batch_size": "16"}}})


def test_bool_is_not_an_int() -> None:
    with pytest.raises(UserError, match=r"^seed must be int"):
        from_dict(ExperimentConfig, {"seed": True})
    with pytest.raises(UserError, match=r"poison\.count must be int"):
        from_dict(ExperimentConfig, {"poison": {"count": False}})


def test_wrong_type_for_section_and_list() -> None:
    with pytest.raises(UserError, match=r"victim must be a mapping"):
        from_dict(ExperimentConfig, {"victim": "tiny-llama"})
    with pytest.raises(UserError, match=r"attack\.triggers must be a list"):
        from_dict(ExperimentConfig, {"attack": {"triggers": "cf"}})
    with pytest.raises(UserError, match=r"attack\.triggers\.1 must be str"):
        from_dict(ExperimentConfig, {"attack": {"triggers": ["cf", 3]}})


def test_int_is_coerced_to_float() -> None:
    cfg = from_dict(TrainConfig, {"epochs": 2, "lr": 1})
    assert cfg.epochs == 2.0 and type(cfg.epochs) is float
    assert cfg.lr == 1.0 and type(cfg.lr) is float


def test_yaml_exponent_string_is_read_as_float() -> None:
    data = yaml.safe_load("lr: 2e-5\nhead_lr: 1e-3\n")
    assert data["lr"] == "2e-5"  # YAML 1.1: no dot, so a string; from_dict must coerce it
    cfg = from_dict(TrainConfig, data)
    assert cfg.lr == pytest.approx(2e-5) and type(cfg.lr) is float
    assert cfg.head_lr == pytest.approx(1e-3)  # through the `float | None` union too
    with pytest.raises(UserError, match=r"^lr must be float"):
        from_dict(TrainConfig, {"lr": "fast"})


def test_none_for_optional_and_empty_section() -> None:
    cfg = from_dict(ExperimentConfig, {"victim": None, "data": {"max_train": None}})
    assert cfg.victim == ExperimentConfig().victim
    assert cfg.data.max_train is None


# ------------------------------------------------------------------------------------------------
# Dotted overrides


def test_override_parses_yaml_values() -> None:
    data: dict = {"train": {"lr": 1e-3, "epochs": 1}}
    apply_override(data, "train.lr=2e-5")
    apply_override(data, "train.batch_size=8")
    apply_override(data, "train.merge=true")
    assert data == {"train": {"lr": "2e-5", "epochs": 1, "batch_size": 8, "merge": True}}
    cfg = from_dict(ExperimentConfig, {"victim": data})
    assert cfg.victim.train.lr == pytest.approx(2e-5)
    assert cfg.victim.train.batch_size == 8 and cfg.victim.train.merge is True


def test_override_into_a_list_item() -> None:
    data = {"defenses": [{"name": "w2sdefense", "beta": 0.001}, {"name": "lora-ft"}]}
    apply_override(data, "defenses.0.beta=0.1")
    apply_override(data, "defenses.1.train.lora.r=4")
    assert data["defenses"][0] == {"name": "w2sdefense", "beta": 0.1}
    assert data["defenses"][1] == {"name": "lora-ft", "train": {"lora": {"r": 4}}}


def test_override_replaces_a_list_item_by_index() -> None:
    data = {"attack": {"triggers": ["cf", "mn"]}}
    apply_override(data, "attack.triggers.1=bb")
    assert data["attack"]["triggers"] == ["cf", "bb"]


def test_override_with_a_list_value() -> None:
    data: dict = {}
    apply_override(data, "attack.triggers=[cf, mn]")
    assert data == {"attack": {"triggers": ["cf", "mn"]}}
    assert from_dict(ExperimentConfig, data).attack.triggers == ["cf", "mn"]


def test_override_creates_missing_intermediate_mappings() -> None:
    data = {"seed": 1}
    apply_override(data, "victim.train.lora.r=8")
    assert data == {"seed": 1, "victim": {"train": {"lora": {"r": 8}}}}
    assert from_dict(ExperimentConfig, data).victim.train.lora.r == 8


def test_override_empty_value_is_none() -> None:
    data = {"data": {"max_train": 10}}
    apply_override(data, "data.max_train=")
    assert data == {"data": {"max_train": None}}


def test_override_value_may_contain_equals() -> None:
    data: dict = {}
    apply_override(data, "name=a=b")
    assert data == {"name": "a=b"}


@pytest.mark.parametrize("assignment", ["defenses.2.beta=0.1", "defenses.x.beta=0.1", "defenses.-1.beta=1",
                                        "defenses.5=1"])
def test_override_bad_list_index_is_a_user_error(assignment: str) -> None:
    data = {"defenses": [{"name": "a"}, {"name": "b"}]}
    with pytest.raises(UserError, match="no list item") as exc:
        apply_override(data, assignment)
    assert "the list has 2" in _message(exc)
    assert data == {"defenses": [{"name": "a"}, {"name": "b"}]}


@pytest.mark.parametrize("assignment", ["train.lr", "=3", " . =3"])
def test_malformed_override_is_a_user_error(assignment: str) -> None:
    with pytest.raises(UserError, match="override"):
        apply_override({}, assignment)


@pytest.mark.parametrize("value", ["[1e-3", "*x", "@x", "`x", "{a: 1", "!x 3"])
def test_override_value_yaml_cannot_read_names_the_override(value: str) -> None:
    with pytest.raises(UserError, match=r"override 'train.lr=.*': cannot read the value .* quote it") as exc:
        apply_override({}, f"train.lr={value}")
    assert "\n" not in _message(exc)


@pytest.mark.parametrize("assignment, key", [("train.lr=.nan", "train.lr"), ("train.epochs=.inf", "train.epochs"),
                                             ("train.lr=-.inf", "train.lr"), ("train.lr=nan", "train.lr"),
                                             ("train.warmup_ratio=.nan", "train.warmup_ratio")])
def test_non_finite_numbers_are_rejected_naming_the_key(assignment: str, key: str) -> None:
    with pytest.raises(UserError, match=rf"{key} must be a finite number; got"):
        load_config(TrainJob, overrides=[assignment])


def test_non_finite_numbers_are_rejected_in_files_and_constructors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("defenses:\n  - name: w2sdefense\n    temperature: .inf\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"defense w2sdefense.temperature must be a finite number; got inf"):
        resolve(load_config(ExperimentConfig, path).defenses[0])
    with pytest.raises(UserError, match=r"train.lr must be a finite number; got nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(UserError, match=r"defense x.beta must be a finite number; got inf"):
        resolve(DefenseConfig(label="x", settings={"beta": float("inf")}))


def test_a_non_utf8_config_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: x\nseed: 1\n# caf\xe9\n")
    with pytest.raises(UserError, match=r"c.yaml line 3: not UTF-8 text \(byte 0xe9"):
        read_yaml(path)


def test_an_override_of_an_aliased_section_changes_that_section_only(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text("victim:\n  train: &t {epochs: 1, lora: {r: 4}}\nteacher:\n  train: *t\n", encoding="utf-8")
    cfg = load_config(ExperimentConfig, path, ["victim.train.epochs=3", "victim.train.lora.r=8"])
    assert (cfg.victim.train.epochs, cfg.victim.train.lora.r) == (3, 8)
    assert (cfg.teacher.train.epochs, cfg.teacher.train.lora.r) == (1, 4)
    data = read_yaml(path)
    assert data["victim"]["train"] == data["teacher"]["train"]
    assert data["victim"]["train"]["lora"] is not data["teacher"]["train"]["lora"]
    # A merge key (<<) and aliases inside an override's own value load as copies too.
    path.write_text("victim:\n  train: &t {lora: {r: 4}}\nteacher:\n  train: {<<: *t, epochs: 2}\n", encoding="utf-8")
    cfg = load_config(ExperimentConfig, path, ["teacher.train.lora.r=16"])
    assert (cfg.victim.train.lora.r, cfg.teacher.train.lora.r, cfg.teacher.train.epochs) == (4, 16, 2)
    data = {}
    apply_override(data, "defenses=[{name: lora-ft, train: &d {lr: 1.0e-3}}, {name: full-ft, train: *d}]")
    apply_override(data, "defenses.1.train.lr=1.0e-4")
    assert [d["train"]["lr"] for d in data["defenses"]] == [1.0e-3, 1.0e-4]


def test_override_through_a_scalar_is_a_user_error() -> None:
    with pytest.raises(UserError, match="train.lr"):
        apply_override({"train": {"lr": 1e-3}}, "train.lr.x=1")


def test_load_config_applies_overrides_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nvictim:\n  train: {lr: 1.0e-3, epochs: 2}\n", encoding="utf-8")
    cfg = load_config(ExperimentConfig, path, ["victim.train.lr=2e-5", "seed=7"])
    assert cfg.seed == 7
    assert cfg.victim.train.lr == pytest.approx(2e-5) and cfg.victim.train.epochs == 2.0
    assert load_config(ExperimentConfig, None, ["seed=3"]).seed == 3
    with pytest.raises(UserError, match=r"victim\.train\.lrr"):
        load_config(ExperimentConfig, path, ["victim.train.lrr=1"])


# ------------------------------------------------------------------------------------------------
# __post_init__ validation


@pytest.mark.parametrize("mode", ["clean-label", "dirty-label", "mix"])
def test_poison_modes_accepted(mode: str) -> None:
    assert PoisonConfig(mode=mode).mode == mode


def test_poison_mode_choices() -> None:
    with pytest.raises(UserError, match=r"poison\.mode must be one of clean-label, dirty-label, mix; got 'clean'"):
        PoisonConfig(mode="clean")
    with pytest.raises(UserError, match=r"poison\.selection"):
        from_dict(PoisonConfig, {"selection": "last"})


def test_poison_count_and_rate_exclusive() -> None:
    with pytest.raises(UserError, match="exactly one of poison.count and poison.rate"):
        PoisonConfig(count=10, rate=0.1)
    with pytest.raises(UserError, match="exactly one of poison.count and poison.rate"):
        PoisonConfig(count=None, rate=None)
    assert PoisonConfig(count=None, rate=0.1).rate == 0.1
    assert from_dict(PoisonConfig, {"count": None, "rate": 1}).rate == 1.0


def test_poison_rate_alone_replaces_the_default_count(tmp_path: Path) -> None:
    assert PoisonConfig().count == 1000 and PoisonConfig().rate is None  # neither given: the default count
    assert (PoisonConfig(rate=0.1).count, PoisonConfig(rate=0.1).rate) == (None, 0.1)
    assert from_dict(PoisonConfig, {"rate": 0.1}).count is None
    job = load_config(PoisonJob, overrides=["poison.rate=0.1"])  # `--set poison.rate=0.1`
    assert (job.poison.count, job.poison.rate) == (None, 0.1)
    path = tmp_path / "c.yaml"
    path.write_text("poison:\n  rate: 0.05\n  mode: dirty-label\n", encoding="utf-8")
    cfg = load_config(ExperimentConfig, path)
    assert (cfg.poison.count, cfg.poison.rate, cfg.poison.mode) == (None, 0.05, "dirty-label")
    assert from_dict(ExperimentConfig, yaml.safe_load(dump_yaml(cfg))) == cfg
    # An override replaces the file's choice; setting one clears the other.
    assert load_config(ExperimentConfig, path, ["poison.count=7"]).poison.rate is None
    path.write_text("poison:\n  count: 500\n", encoding="utf-8")
    assert load_config(ExperimentConfig, path, ["poison.rate=0.2"]).poison.count is None
    # Both in one place is still a contradiction.
    path.write_text("poison:\n  count: 500\n  rate: 0.1\n", encoding="utf-8")
    with pytest.raises(UserError, match="exactly one of poison.count and poison.rate"):
        load_config(ExperimentConfig, path)
    assert load_config(PoisonJob, overrides=["poison.count=5", "poison.rate=0.1", "poison.count=6"]).poison.count == 6


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_poison_rate_range(rate: float) -> None:
    with pytest.raises(UserError, match=r"poison\.rate must be in \(0, 1\]"):
        PoisonConfig(count=None, rate=rate)


def test_poison_count_and_target_label_signs() -> None:
    with pytest.raises(UserError, match=r"poison\.count must be > 0"):
        PoisonConfig(count=0)
    with pytest.raises(UserError, match=r"poison\.target_label must be >= 0"):
        PoisonConfig(target_label=-1)
    assert PoisonConfig(target_label=0).target_label == 0


@pytest.mark.parametrize("dropout, ok", [(0.0, True), (0.5, True), (1.0, False), (-0.1, False)])
def test_lora_dropout_range(dropout: float, ok: bool) -> None:
    if ok:
        assert LoraConfig(dropout=dropout).dropout == dropout
    else:
        with pytest.raises(UserError, match=r"lora\.dropout must be in \[0, 1\)"):
            LoraConfig(dropout=dropout)


def _w2s(**settings):
    return resolve(DefenseConfig(settings=settings)).settings


def test_defense_alignment_choices_and_weights() -> None:
    assert _w2s(alignment="reference").alignment == "reference"
    with pytest.raises(UserError, match=r"defense\.alignment must be one of per-sample, normalized, relational, reference"):
        _w2s(alignment="mean")
    with pytest.raises(UserError, match=r"defense\.beta must be >= 0"):
        _w2s(beta=-1.0)
    assert _w2s(gamma=0.0).gamma == 0.0
    with pytest.raises(UserError, match=r"defense\.temperature must be > 0"):
        _w2s(temperature=0.0)


def test_each_defense_checks_its_own_settings_and_method() -> None:
    # Flat YAML keys beside `name` are the defense's own settings.
    cfg = from_dict(ExperimentConfig, {"defenses": [{"name": "lora-ft", "beta": 0.5}]})
    assert cfg.defenses[0].settings == {"beta": 0.5}
    with pytest.raises(UserError, match=r"^unknown setting defense lora-ft.beta; lora-ft has no settings of its own "
                                        r"\(only name, label, seed and train\)$"):
        resolve(cfg.defenses[0])
    with pytest.raises(UserError, match=r"unknown setting defense w2sdefense.gama; w2sdefense takes base_model, rho, "
                                        r"mix, head, tokenizer, alpha, beta, gamma, temperature, alignment"):
        resolve(DefenseConfig(settings={"gama": 0.1}))
    with pytest.raises(UserError, match=r"defenses.0: full-ft fine-tunes with train.method=full; the config "
                                        r"says train.method=lora"):
        check_defenses([DefenseConfig(name="full-ft", train={"method": "lora"})])
    with pytest.raises(UserError, match=r"defense full-ft: full-ft fine-tunes with train.method=full"):
        resolve(DefenseConfig(name="full-ft", train={"method": "lora"}))
    with pytest.raises(UserError, match=r"unknown defense 'no-such' \(defenses\[\].name\); known: .*full-ft, "
                                        r".*lora-ft \(alias lora\), .*w2sdefense \(alias w2s\)$"):
        resolve(DefenseConfig(name="no-such"))
    with pytest.raises(UserError, match=r"unknown setting defense w2sdefense.train.lrr"):
        resolve(DefenseConfig(train={"lrr": 1.0}))


def test_no_defense_inherits_another_recipe() -> None:
    full, lora, w2s = (resolve(DefenseConfig(name=n)).train for n in ("full-ft", "lora-ft", "w2sdefense"))
    assert (full.method, full.lr, full.epochs) == ("full", 2e-5, 3.0)
    assert (lora.method, lora.lr, lora.epochs, lora.batch_size) == ("lora", 1e-3, 1.0, 16)
    assert lora == w2s  # the fair comparison: the same recipe
    # A partial train section changes only its keys of the defense's own recipe.
    tuned = resolve(from_dict(DefenseConfig, {"name": "full-ft", "train": {"epochs": 1}})).train
    assert (tuned.method, tuned.lr, tuned.epochs) == ("full", 2e-5, 1.0)


def test_validation_runs_when_built_from_data() -> None:
    with pytest.raises(UserError, match=r"train\.method"):
        from_dict(ExperimentConfig, {"victim": {"train": {"method": "qlora"}}})
    with pytest.raises(UserError, match=r"attack\.position"):
        from_dict(ExperimentConfig, {"attack": {"position": "first"}})


def test_duplicate_defense_labels_are_rejected() -> None:
    with pytest.raises(UserError, match="defenses share a name: w2sdefense"):
        ExperimentConfig(defenses=[DefenseConfig(), DefenseConfig()])
    with pytest.raises(UserError, match="defenses share a name: x"):
        from_dict(ExperimentConfig, {"defenses": [{"name": "lora-ft", "label": "x"}, {"label": "x"}]})
    cfg = ExperimentConfig(defenses=[DefenseConfig(), DefenseConfig(label="w2s-ref", settings={"alignment": "reference"})])
    assert [d.row_name for d in cfg.defenses] == ["w2sdefense", "w2s-ref"]


def test_section_defaults_are_kept() -> None:
    cfg = ExperimentConfig()
    assert cfg.teacher.train.lr == pytest.approx(5e-5)
    d = resolve(DefenseConfig()).train
    assert (d.method, d.lr, d.epochs, d.batch_size) == ("lora", 1e-3, 1.0, 16)


def test_partial_nested_section_keeps_the_section_defaults() -> None:
    cfg = from_dict(ExperimentConfig, {"teacher": {"train": {"epochs": 1}}, "defenses": [{"train": {"epochs": 1}}]})
    assert cfg.teacher.train.lr == pytest.approx(5e-5)
    assert resolve(cfg.defenses[0]).train.lr == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------------------
# YAML round trip and files


def test_dump_yaml_round_trip_with_two_defenses() -> None:
    cfg = ExperimentConfig(
        name="rt",
        seed=5,
        attack=AttackConfig(name="insent", triggers=["I watched this movie", "x"], num_insertions=2),
        poison=PoisonConfig(count=None, rate=0.25, mode="mix", selection="random", target_label=1),
        defenses=[
            DefenseConfig(settings={"beta": 0.5, "temperature": 3.0}),
            DefenseConfig(label="ref", settings={"alignment": "reference"},
                          train=TrainConfig(method="lora", lr=2e-5, head_lr=1e-3,
                                            lora=LoraConfig(r=4, alpha=8, target_modules=["q_proj"]))),
        ],
    )
    text = dump_yaml(cfg)
    assert text.index("name:") < text.index("seed:") < text.index("defenses:")  # declaration order
    back = from_dict(ExperimentConfig, yaml.safe_load(text))
    assert back == cfg
    ref = resolve(back.defenses[1])
    assert ref.train.lr == 2e-5 and ref.train.lora.target_modules == ["q_proj"] and ref.settings.alignment == "reference"


@pytest.mark.parametrize("job, keys", [
    ("PoisonJob", ["seed", "data", "attack", "poison"]),
    ("TrainJob", ["seed", "model", "runtime", "data", "train"]),
    ("TeacherJob", ["seed", "student", "runtime", "data", "teacher"]),
    ("DefendJob", ["seed", "student", "teacher", "runtime", "data", "defense"]),
    ("CleanJob", ["seed", "model", "base_model", "defense", "triggers", "target_label", "runtime", "data", "teacher",
                  "eval", "unlabelled"]),
    ("EvaluateJob", ["runtime", "eval"]),
])
def test_job_config_yaml_keeps_its_key_order(job: str, keys: list[str]) -> None:
    # claim_output compares a folder's config.yaml text with this dump to decide whether its run may be
    # continued: reordered keys would refuse every existing unfinished run.
    import w2sdefense.config as config

    cls = getattr(config, job)
    text = dump_yaml(cls())
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith((" ", "-"))] == keys
    with pytest.raises(UserError, match="valid keys: " + ", ".join(keys) + "$"):
        from_dict(cls, {"bogus": 1})


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nseed: 1\n  data: 3\n", encoding="utf-8")
    with pytest.raises(UserError) as exc:
        read_yaml(path)
    msg = _message(exc)
    assert str(path) in msg and "line 3" in msg and "invalid YAML" in msg
    with pytest.raises(UserError, match="line 3"):
        load_config(ExperimentConfig, path)


def _bomb(levels: int, width: int = 9) -> str:
    """A "billion laughs" in flow style: `levels` lists, each of `width` aliases of the one before."""
    items = [f"&l0 [{','.join(['lol'] * width)}]"]
    items += [f"&l{i} [{','.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{','.join(items)}]"


def test_a_yaml_bomb_is_refused_at_once_in_one_short_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(f"victim: {_bomb(9)}\n", encoding="utf-8")  # over 9**8 values expanded
    assert len(path.read_bytes()) < 400
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"bomb\.yaml line 1: invalid YAML \(its aliases expand it to more than "
                                        r"100,000 values") as exc:
        load_config(ExperimentConfig, path)
    assert time.perf_counter() - start < 5
    assert len(_message(exc)) < 300 and "\n" not in _message(exc)
    with pytest.raises(UserError, match=r"override 'victim=.*': cannot read the value .*aliases expand it") as exc:
        apply_override({}, f"victim={_bomb(9)}")
    assert len(_message(exc)) < 1000
    assert time.perf_counter() - start < 10


def test_an_alias_that_contains_itself_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: x\nvictim: &v {train: *v}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"loop\.yaml line 2: invalid YAML \(an alias refers to a value that "
                                        r"contains it"):
        read_yaml(path)


def test_error_messages_cut_the_values_they_quote(tmp_path: Path) -> None:
    # 9**5 values stay under the expansion bound, but their whole repr would be about 400 kB.
    path = tmp_path / "wide.yaml"
    path.write_text(f"victim: {_bomb(5)}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"^victim must be a mapping; got \[\['lol', ") as exc:
        load_config(ExperimentConfig, path)
    assert len(_message(exc)) <= len("victim must be a mapping; got ") + 200
    with pytest.raises(UserError, match="poison.mode must be one of") as exc:
        from_dict(PoisonJob, {"poison": {"mode": "x" * 10_000}})
    assert len(_message(exc)) < 300 and "xxx...xxx" in _message(exc)  # head and tail of the text, cut between
    with pytest.raises(UserError, match="unknown setting") as exc:
        from_dict(ExperimentConfig, {"y" * 10_000: 1, 3: 4})  # a key that is no string names itself too
    assert "3, " in _message(exc) or ", 3;" in _message(exc)
    assert len(_message(exc)) < 600


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="config file not found") as exc:
        load_config(ExperimentConfig, path)
    assert str(path) in _message(exc)
    with pytest.raises(UserError, match="config file not found"):
        read_yaml(tmp_path)  # a folder is not a file


def test_empty_file_and_non_mapping_top_level(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert read_yaml(empty) == {}
    assert load_config(ExperimentConfig, empty) == ExperimentConfig()
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(UserError, match="top level must be a mapping"):
        read_yaml(listed)


def test_presets_exist() -> None:
    assert CONFIGS, "no YAML presets found under configs/"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_preset_builds(path: Path) -> None:
    cfg = load_config(ExperimentConfig, path)
    assert isinstance(cfg, ExperimentConfig)
    raw = read_yaml(path)
    if "name" in raw:
        assert cfg.name == raw["name"]
    assert len(cfg.defenses) == len(raw.get("defenses") or [])
    # Every row's own settings and recipe are checked against its defense, as `run` does before it starts.
    assert len(check_defenses(cfg.defenses)) == len(cfg.defenses)
    assert from_dict(ExperimentConfig, yaml.safe_load(dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("row, message", [
    ("{name: w2sdefense, gama: 0.01}", "unknown setting defenses.0.gama"),
    ("{name: strip, copies: 0}", "strip.copies"),
    ("{name: lora-ft, train: {lr: fast}}", "defenses.0.train.lr"),
])
def test_a_preset_with_a_wrong_defense_setting_fails(tmp_path: Path, row: str, message: str) -> None:
    """The check test_preset_builds makes on every preset catches a misspelt or impossible setting."""
    path = tmp_path / "wrong.yaml"
    path.write_text(f"name: wrong\ndefenses:\n  - {row}\n", encoding="utf-8")
    cfg = load_config(ExperimentConfig, path)  # loading alone does not look inside a defense row
    with pytest.raises(UserError, match=message):
        check_defenses(cfg.defenses)


@pytest.mark.parametrize("attack", ["badnet", "insent", "synbkd"])
def test_the_code_defaults_are_the_recipe_the_readme_measured(attack: str) -> None:
    """`defend` and `teacher` with no config run exactly the presets' main rows (the README's table)."""
    from w2sdefense.config import TeacherJob

    cfg = load_config(ExperimentConfig, REPO / "configs" / f"sst2-{attack}.yaml")
    rows = {d.row_name: d for d in cfg.defenses}
    for label in ("w2sdefense", "lora-ft"):
        measured, bare = resolve(rows[label]), resolve(DefenseConfig(name=rows[label].name))
        assert (measured.settings, measured.train) == (bare.settings, bare.train), label
    # fine-mixing needs its base named; the rest of the full reset is the default.
    reset = rows["fine-mixing-r0"]
    bare = resolve(DefenseConfig(name="fine-mixing", settings={"base_model": reset.settings["base_model"]}))
    assert (resolve(reset).settings, resolve(reset).train) == (bare.settings, bare.train)
    # ... and its recipe is lora-ft's at twice the epochs (160 steps of the 1280 rows), nothing else changed.
    lora = resolve(DefenseConfig(name="lora-ft")).train
    assert bare.train == dataclasses.replace(lora, epochs=2 * lora.epochs) and lora.epochs == 1.0
    assert cfg.teacher == TeacherJob().teacher


def test_extends_lays_a_file_over_its_base_and_merges_defense_rows_by_name(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "b.yaml").write_text(
        "seed: 1\nvictim: {train: {epochs: 1, lr: 1.0e-4}}\n"
        "defenses:\n  - {name: w2sdefense}\n  - {name: w2sdefense, label: auth, alpha: 5.0, beta: 0.001}\n")
    top = tmp_path / "top.yaml"
    top.write_text("extends: base/b.yaml\nvictim: {train: {epochs: 2}}\n"
                   "defenses:\n  - {name: w2sdefense, label: auth, alpha: 3.0}\n  - {name: lora-ft}\n")
    data = read_yaml(top)
    assert data["seed"] == 1 and data["victim"]["train"] == {"epochs": 2, "lr": 1.0e-4}
    assert data["defenses"] == [{"name": "w2sdefense"}, {"name": "w2sdefense", "label": "auth", "alpha": 3.0,
                                                         "beta": 0.001}, {"name": "lora-ft"}]
    assert "extends" not in data
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(UserError, match="comes back to it"):
        read_yaml(loop)
    missing = tmp_path / "orphan.yaml"
    missing.write_text("extends: nowhere.yaml\n")
    with pytest.raises(UserError, match="config file not found: .*nowhere.yaml"):
        read_yaml(missing)


def test_a_key_given_twice_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("victim:\n  train:\n    epochs: 1\n    lr: 1.0e-3\n    epochs: 5\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"^.*dup\.yaml line 5: invalid YAML \(the key 'epochs' is given twice "
                                        r"\(first on line 3\); keep one\)$"):
        load_config(ExperimentConfig, path)
    path.write_text("seed: 1\nname: x\nseed: 2\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"line 3: invalid YAML \(the key 'seed' is given twice"):
        read_yaml(path)
    # A merge key's values may be overridden beside it: that is what `<<` is for, not a repeat.
    path.write_text("a: &x {lr: 1, r: 2}\nb:\n  <<: *x\n  lr: 3\n", encoding="utf-8")
    assert read_yaml(path) == {"a": {"lr": 1, "r": 2}, "b": {"lr": 3, "r": 2}}


def test_a_defense_job_takes_its_recipe_and_settings_from_its_row_and_refuses_a_bad_one_at_once() -> None:
    import w2sdefense.defenses.base as base
    from w2sdefense.defenses.recipes import LORA_RECIPE

    job = base.DefenseJob("student", None, None, DefenseConfig(name="lora-ft", train={"lr": 0.5}), None, Path("."), 0)
    assert (job.train.lr, job.train.method, job.train.epochs) == (0.5, "lora", LORA_RECIPE["epochs"])
    given = base.resolve(DefenseConfig(name="fine-mixing", settings={"base_model": "b", "rho": 0.3}))
    again = base.DefenseJob("student", None, None, given.cfg, None, Path("."), 0, resolved=given)
    assert again.settings.rho == 0.3 and again.settings.base_model == "b" and again.train == given.train
    with pytest.raises(UserError, match="unknown setting defense lora-ft.beta"):  # at construction, before any work
        base.DefenseJob("student", None, None, DefenseConfig(name="lora-ft", settings={"beta": 1}), None, Path("."), 0)


@pytest.mark.parametrize("label", ["poisoned", "clean", "teacher", "clean model"])
def test_a_defense_named_like_a_report_row_is_a_config_error(tmp_path: Path, label: str) -> None:
    """Its report row and eval/ folder would collide with the poisoned model's, the clean model's or the teacher's."""
    path = tmp_path / "clash.yaml"
    path.write_text(f"name: clash\ndefenses:\n  - {{name: lora-ft}}\n  - {{name: lora-ft, label: {label}}}\n",
                    encoding="utf-8")
    cfg = load_config(ExperimentConfig, path)
    with pytest.raises(UserError, match=rf"defenses.1: '{label}' names one of the report's own rows"):
        check_defenses(cfg.defenses)
    assert len(check_defenses([DefenseConfig(name="lora-ft", label=f"{label}-2")])) == 1
