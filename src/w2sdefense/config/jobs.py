"""The single-command jobs: the settings of `poison`, `train`, `teacher`, `defend`, `clean` and `evaluate`."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass

from w2sdefense.config.schema import (AttackConfig, DataConfig, DefenseConfig, EvalConfig, PoisonConfig,
                                      RuntimeConfig, ScanConfig, TeacherConfig, TrainConfig)
from w2sdefense.errors import UserError, shown



@dataclass
class PoisonJob:
    """`w2sdefense poison`: data + attack + poisoning policy."""

    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    poison: PoisonConfig = field(default_factory=PoisonConfig)


def _fine_tuning_job(name: str, doc: str, model_key: str, stage_key: str, stage: type) -> type:
    """A job that fine-tunes one model: `seed`, the model's name (`model_key`), `runtime`, `data`, then the
    training section (`stage_key`). That is the order config.yaml lists them in, and claim_output compares its
    text to decide whether a folder's run may be continued, so the order is part of the file format (a base class
    would put its fields first)."""
    sections = [("runtime", RuntimeConfig), ("data", DataConfig), (stage_key, stage)]
    fields = [("seed", int, 42), (model_key, str, "tiny-llama"),
              *[(key, tp, field(default_factory=tp)) for key, tp in sections]]
    return make_dataclass(name, fields, namespace={"__doc__": doc, "__module__": __name__})


TrainJob = _fine_tuning_job("TrainJob", "`w2sdefense train`: fine-tune `model` on `data`.",
                            "model", "train", TrainConfig)
TeacherJob = _fine_tuning_job(
    "TeacherJob", "`w2sdefense teacher`: train the clean teacher for `student` (its hidden size sets D).",
    "student", "teacher", TeacherConfig)


@dataclass
class DefendJob:
    """`w2sdefense defend`: unlearn the backdoor of `student` on clean `data`."""

    seed: int = 42
    student: str = ""
    teacher: str | None = None  # a folder written by `w2sdefense teacher`
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)


def check_base(base_model: str | None) -> None:
    """A base given as blank text (`--base ''`) is refused, never read as "no base" (that changes the defense)."""
    if base_model is not None and not base_model.strip():
        raise UserError(f"base_model is empty ({shown(base_model)}): give the public model the suspect was "
                        "fine-tuned from, or leave --base out")


AUTO_DEFENSE = "auto"  # `clean`'s defense name for "the measured default for what was given" (clean.choose_defense)


@dataclass
class CleanJob:
    """`w2sdefense clean`: a suspect classifier and clean data in, a standalone cleaned model and a report out."""

    seed: int = 42
    model: str = ""  # the suspect classifier (any name --model takes)
    # The public model the suspect was fine-tuned from. Given, the default defense is the full reset toward it
    # (fine-mixing, rho 0); unset, W2SDefense (which removed the token trigger only: README, Results).
    base_model: str | None = None
    defense: DefenseConfig | None = None  # another defense (a repair one); None or name `auto`: the default above
    triggers: list[str] = field(default_factory=list)  # candidate triggers whose ASR-cc is measured before and after
    target_label: int | None = None  # the triggers' target; None: every label, the highest reported
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # The defender's own data: required (--data), never a default dataset
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset=None, hub_fallback=False))
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # trained only for a defense that needs one
    eval: EvalConfig = field(default_factory=EvalConfig)
    # A file of in-domain texts without labels (one a line, or JSONL rows with a text): distilling defenses
    # (reset-distill, plant-reset) learn the suspect's answers on them too
    unlabelled: str | None = None

    @staticmethod
    def normalise(data: dict) -> dict:
        """A `defense` entry without a name (e.g. `--set defense.lr=...`) tunes the default, never replaces it."""
        if isinstance(data.get("defense"), dict) and "name" not in data["defense"]:
            data["defense"] = {**data["defense"], "name": AUTO_DEFENSE}
        return data

    def __post_init__(self) -> None:
        bad = [t for t in self.triggers if not isinstance(t, str) or not t.strip()]
        if bad:
            raise UserError(f"triggers must be non-empty texts; got {shown(bad)}")
        if self.target_label is not None and self.target_label < 0:
            raise UserError(f"target_label must be >= 0; got {self.target_label}")
        check_base(self.base_model)


@dataclass
class ScanJob:
    """`w2sdefense scan`: a suspect classifier and clean data in, a verdict and candidate triggers out."""

    seed: int = 42
    model: str = ""  # the suspect classifier (any name --model takes)
    base_model: str | None = None  # the public model it was fine-tuned from: enables the embedding-shift detector
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset=None, hub_fallback=False))
    scan: ScanConfig = field(default_factory=ScanConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_base(self.base_model)


@dataclass
class EvaluateJob:
    """`w2sdefense evaluate`: inference settings."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
