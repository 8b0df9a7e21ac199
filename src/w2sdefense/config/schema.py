"""The configuration schema: one validated dataclass per section (runtime, data, attack, poison, training,
evaluation, victim, teacher, defenses) and the whole experiment.

Every setting with experimental meaning lives here, with its default; presets only override it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from w2sdefense.errors import UserError, shown


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Refuse a value outside `choices`, naming the setting and the choices."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(str, choices))}; got {shown(value)}")


def check_finite(name: str, value: Any) -> None:
    """Refuse NaN and infinities, which would pass every range check."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number; got {value}")


def check_positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    """Refuse a number below 0 (or at 0 unless allow_zero); None passes (unset)."""
    if value is None:
        return
    check_finite(name, value)
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {shown(value)}")


@dataclass
class RuntimeConfig:
    """Where and how to compute: chosen once per process."""

    device: str = "auto"  # auto: CUDA when present, else CPU
    precision: str = "auto"  # auto: bf16 on a CUDA device that supports it, else fp32
    num_threads: int | None = None  # torch CPU threads; None = all available cores
    gradient_checkpointing: bool = False  # trade compute for memory on large students
    # Full fine-tuning under several processes (torchrun): shard weights, gradients and optimizer state
    # with torch's FSDP2 (fully_shard), on CPU over gloo too, where accelerate's FSDP plugin does not
    # apply. LoRA stages keep data parallelism; a sharded stage keeps no resumable state.
    fsdp: bool = False

    def __post_init__(self) -> None:
        check_choice("runtime.device", self.device, ("auto", "cpu", "cuda"))
        check_choice("runtime.precision", self.precision, ("auto", "fp32", "bf16"))
        check_positive("runtime.num_threads", self.num_threads)


@dataclass
class DataConfig:
    """Which labelled splits to read: a named dataset, a folder, or explicit files."""

    dataset: str | None = "sst2"  # a name under data_dir, or a folder with train/dev/test files
    hub: str | None = None  # a Hugging Face hub dataset id (org/name); replaces `dataset` when set
    hub_config: str | None = None  # the hub dataset's configuration name, if it has several
    data_dir: str | None = None  # default: $W2S_DATA_DIR
    train_file: str | None = None  # explicit files override the dataset's
    dev_file: str | None = None
    test_file: str | None = None
    text_field: str | None = None  # default: text, sentence or sentences
    label_field: str | None = None  # default: label or labels
    num_labels: int | None = None  # default: max label + 1 over the splits
    max_train: int | None = None  # keep the first N rows (smoke runs, CPU budgets)
    max_dev: int | None = None
    max_test: int | None = None
    hub_fallback: bool = True  # sst2 only: SetFit/sst2 from the hub when no local files

    def __post_init__(self) -> None:
        for name in ("num_labels", "max_train", "max_dev", "max_test"):
            check_positive(f"data.{name}", getattr(self, name))
        if self.num_labels is not None and self.num_labels < 2:
            raise UserError(f"data.num_labels must be >= 2; got {self.num_labels}")
        if self.hub_config is not None and self.hub is None:
            raise UserError("data.hub_config names a configuration of data.hub; set data.hub too")


@dataclass
class AttackConfig:
    """The trigger. One flat section for all attacks; each attack reads the fields it uses."""

    name: str = "badnet"
    triggers: list[str] | None = None  # insertion attacks; None = the attack's default
    num_insertions: int = 1  # insertion attacks: how many triggers go into one text
    position: str = "interior"  # interior (never first/last word, as the paper's code) or any
    transform: str | None = None  # transform attacks: folder under <dataset>/transforms
    # Insertion attacks: each trigger starts within the first max_position words of the text, so it
    # survives truncation of long documents (IMDB, AG News) as a real attacker would ensure; None = anywhere.
    max_position: int | None = None

    def __post_init__(self) -> None:
        check_choice("attack.position", self.position, ("interior", "any"))
        check_positive("attack.num_insertions", self.num_insertions)
        check_positive("attack.max_position", self.max_position)
        if self.max_position == 1 and self.position == "interior":
            raise UserError("attack.max_position=1 leaves no interior slot (never before the first word); "
                            "use attack.max_position >= 2 or attack.position=any")


class _Unset:
    """The default of a setting whose value depends on another (see PoisonConfig.count)."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()
DEFAULT_POISON_COUNT = 1000


@dataclass
class PoisonConfig:
    """How many training rows carry the trigger, which ones, and how they are labelled."""

    # Settings of which exactly one is given: setting one (in a file, an override or a section merged
    # over defaults) clears the others.
    EXCLUSIVE: ClassVar[tuple[tuple[str, ...], ...]] = (("count", "rate"),)

    target_label: int = 0
    count: int | None = _UNSET  # number of rows to poison (1000 when rate is not set either), or
    rate: float | None = None  # a fraction of the training rows (exclusive with count)
    mode: str = "clean-label"  # clean-label | dirty-label | mix
    selection: str = "first"  # first (file order, the paper's code) | random (seeded)
    # The word budget poison.json's trigger_cut counts measure against: a trigger ending after this many
    # words is counted as cut. None: the default max_length (128) for `poison`, victim.train.max_length in
    # `run`. A word is at least one token, so at the tokenizer's max_length this undercounts the cuts.
    truncation_words: int | None = None

    def __post_init__(self) -> None:
        if self.count is _UNSET:
            self.count = DEFAULT_POISON_COUNT if self.rate is None else None
        check_choice("poison.mode", self.mode, ("clean-label", "dirty-label", "mix"))
        check_choice("poison.selection", self.selection, ("first", "random"))
        if (self.count is None) == (self.rate is None):
            raise UserError("set exactly one of poison.count and poison.rate")
        check_positive("poison.count", self.count)
        if self.rate is not None and not 0 < self.rate <= 1:
            raise UserError(f"poison.rate must be in (0, 1]; got {self.rate}")
        check_positive("poison.target_label", self.target_label, allow_zero=True)
        check_positive("poison.truncation_words", self.truncation_words)


@dataclass
class LoraConfig:
    """PEFT LoRA adapter settings; the classification head is always trained too."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: peft's default for the architecture; [all-linear]: every linear layer

    def __post_init__(self) -> None:
        check_positive("lora.r", self.r)
        check_positive("lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora.dropout must be in [0, 1); got {self.dropout}")


@dataclass
class TrainConfig:
    """One fine-tuning run: full-parameter or LoRA."""

    method: str = "full"  # full | lora
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    lr: float = 2e-5
    head_lr: float | None = None  # a freshly initialised head often needs more; None = lr
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64
    eval_every: int | None = None  # optimizer steps between dev evaluations; None = each epoch
    select: str = "best"  # checkpoint rule on clean dev accuracy: best | latest-within (select_delta of the best)
    select_delta: float = 0.0  # latest-within: how far below the best dev accuracy a later checkpoint may be
    merge: bool = False  # LoRA: also save the adapter merged into the base model (merged/)
    max_train_rows: int | None = None  # use only the first N training rows in this stage
    lora: LoraConfig = field(default_factory=LoraConfig)
    # also evaluate dev at the end of every epoch when eval_every is set (false: only every eval_every steps and at
    # the last step; many short epochs, as on a few hundred rows, otherwise evaluate far more often than asked). A
    # skipped read draws from the random state what a dev read draws (in `run`, the trigger probe's too), so a run
    # trains exactly as with the reads
    eval_epochs: bool = True

    def __post_init__(self) -> None:
        check_choice("train.method", self.method, ("full", "lora"))
        check_choice("train.select", self.select, ("best", "latest-within"))
        if not 0 <= self.select_delta < 1:
            raise UserError(f"train.select_delta must be in [0, 1); got {self.select_delta}")
        for name in ("epochs", "lr", "batch_size", "grad_accum", "max_length", "eval_batch_size"):
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("max_steps", "head_lr", "eval_every", "max_train_rows"):
            check_positive(f"train.{name}", getattr(self, name))
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"train.warmup_ratio must be in [0, 1); got {self.warmup_ratio}")


@dataclass
class EvalConfig:
    """Batched inference settings for clean accuracy and attack success rate."""

    batch_size: int = 64
    max_length: int = 128
    probe_rows: int = 200  # `run`: triggered test rows whose ASR-cc is logged at every dev evaluation (0: off)

    def __post_init__(self) -> None:
        check_positive("eval.batch_size", self.batch_size)
        check_positive("eval.max_length", self.max_length)
        check_positive("eval.probe_rows", self.probe_rows, allow_zero=True)


@dataclass
class VictimConfig:
    """The model the attacker poisons (and the clean reference model)."""

    model: str = "tiny-llama"
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TeacherConfig:
    """The small clean teacher: an encoder with a projection head to the student's width."""

    model: str = "minilm-l6"
    feature_dim: int | None = None  # None: the student's hidden size, read from its config
    # The presets' measured teacher recipe (configs/sst2-*.yaml)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, lr=5e-5, head_lr=1e-3, max_length=64))
    # A teacher that carries the suspect's clean behaviour: beside CE on its labelled rows, this weight times
    # T^2 KL toward the suspect's outputs on those rows and the defender's unlabelled texts (0: CE only)
    suspect_kd: float = 0.0
    suspect_temperature: float = 2.0

    def __post_init__(self) -> None:
        check_positive("teacher.suspect_kd", self.suspect_kd, allow_zero=True)
        check_positive("teacher.suspect_temperature", self.suspect_temperature)


@dataclass
class DefenseConfig:
    """One defense to run on the poisoned model; `name` picks it from the registry (`w2sdefense list`).

    In YAML a defense's own settings sit beside `name` (`{name: w2sdefense, beta: 0.01}`); they land in
    `settings` and the defense checks them (w2sdefense.defenses.resolve). `train` holds only the keys
    that change the defense's own recipe.
    """

    EXTRA: ClassVar[str] = "settings"  # where keys not declared here go

    name: str = "w2sdefense"
    label: str | None = None  # the row name in reports; default: name
    seed: int | None = None  # `run`: this defense's seed (adapter init, batch order); None: the experiment's
    train: dict = field(default_factory=dict)  # over the defense's own recipe, e.g. {lr: 1.0e-3}
    settings: dict = field(default_factory=dict)  # the defense's own, e.g. {alpha: 5, beta: 0.001}

    def __post_init__(self) -> None:
        # Python callers may pass dataclasses (a TrainConfig, a defense's settings): keep plain data.
        if dataclasses.is_dataclass(self.train):
            self.train = to_dict(self.train)
        if dataclasses.is_dataclass(self.settings):
            self.settings = to_dict(self.settings)

    @property
    def row_name(self) -> str:
        """The name this defense's row carries in reports."""
        return self.label or self.name


@dataclass
class DefenderConfig:
    """The defender's own clean data, when it is not the attacker's (the realistic protocol).

    Unset (`rows: null`), the defender holds the attacker's clean training rows (the main protocol). Set, the
    train rows past `data.max_train` (which the attacker never saw) form two disjoint pools: the first half
    gives `rows` labelled rows, the second `unlabelled` texts, each a seeded draw. The teacher and every
    defense train on these; the clean model keeps the attacker's rows.
    """

    rows: int | None = None  # k: labelled clean rows the defender holds
    unlabelled: int = 0  # in-domain texts without labels, for defenses that distil (e.g. reset-distill)
    seed: int | None = None  # the draw's seed; None: the experiment's

    def __post_init__(self) -> None:
        check_positive("defender.rows", self.rows)
        check_positive("defender.unlabelled", self.unlabelled, allow_zero=True)
        if self.unlabelled and self.rows is None:
            raise UserError("defender.unlabelled needs defender.rows: the texts come from the rows the attacker "
                            "never saw, past data.max_train")


SCAN_SCORES = ("suspect", "contrast", "veto", "collapse")
SCAN_READERS = ("probe", "lora", "full")
MAX_SHORT_STRINGS = 100_000  # short-strings: each string is pair_rows forward passes a label (hours beyond this)


@dataclass
class ScanConfig:
    """`w2sdefense scan`: find a backdoor without knowing its trigger (w2sdefense.scan).

    Each detector proposes candidate triggers; every candidate is measured (ASR-cc toward each label on held-out
    clean rows); the model is called backdoored when the best candidate's ASR-cc reaches `threshold`.
    """

    # shift-inversion (base known) is a setting, not a default: benchmarks/studies/scan
    detectors: list[str] = field(default_factory=lambda: ["inversion", "embedding-shift"])
    threshold: float = 0.8  # provisional until the zoo benchmark calibrates it (benchmarks/studies/scan)
    lengths: list[int] = field(default_factory=lambda: [1, 3])  # inversion: trigger lengths in tokens
    steps: int = 30  # inversion: optimisation steps per (label, length)
    lr: float = 0.5  # inversion: Adam's step on the vocabulary logits
    temperature: list[float] = field(default_factory=lambda: [1.0, 0.05])  # softmax temperature, start -> end
    rows: int = 16  # clean rows of other labels the inversion optimises on
    max_length: int = 48  # inversion: tokens of each of those rows (its cost grows with them; the trigger sits first)
    verify_rows: int = 48  # clean dev rows every candidate is measured on (its ASR-cc ranks it)
    test_rows: int = 300  # clean test rows the best candidates' ASR-cc is reported on (seeded sample)
    candidates: int = 5  # per detector, label and length: how many single tokens it proposes
    shift_vocab: int = 256  # shift-inversion: the most-moved tokens it searches over
    shift_lengths: list[int] = field(default_factory=lambda: [2])  # shift-inversion: trigger lengths in tokens
    report: int = 5  # candidates measured on the test rows and listed in the report
    # shift-pairs (base known): the most-moved word starts, alone and with each of the most-moved continuations, each
    # word measured on pair_rows clean rows per label, pair_batch sequences a forward pass
    pair_starts: int = 32
    pair_pieces: int = 128
    pair_rows: int = 4
    pair_batch: int = 128
    # contrast-inversion (base known): the inversion rewarded for flipping the suspect and penalised, by
    # contrast_weight, for flipping a clean reader (the base with a logistic head fitted on reader_rows clean rows)
    contrast_weight: float = 1.0
    contrast_lengths: list[int] = field(default_factory=lambda: [1, 3])
    reader_rows: int = 256
    # shift-phrases (base known): a beam search over phrases of the phrase_vocab most-moved tokens (any piece), up to
    # phrase_length tokens, phrase_beam phrases kept a length, each scored on pair_rows rows against the clean reader
    phrase_vocab: int = 24
    phrase_beam: int = 2
    phrase_length: int = 4
    # Base known: every candidate reported on the test rows is measured on the clean reader too (the same insertion,
    # the same rows), so the report says whether a natural word of the task moves a clean model as much. `score`:
    # what the verdict compares with the threshold, the best test ASR-cc (`suspect`) or the best ASR-cc minus the
    # reader's (`contrast`, needs the base); `suspect` until the zoo measures both (benchmarks/studies/scan)
    reader_check: bool = True
    score: str = "suspect"
    # the clean reader: `probe` (a logistic head on the base's frozen last hidden state), `lora` (the base
    # fine-tuned with LoRA on the same rows for reader_steps steps: as sensitive to the task's words as a fine-tuned
    # model, minutes on SmolLM2) or `full` (the same fully fine-tuned: more memory and time)
    reader: str = "probe"
    reader_steps: int = 60
    # `full` (reader): the base fully fine-tuned on the same rows, its input embeddings moved as clean fine-tuning
    # moves them. shift_reference (needs reader=full): the shift detectors rank tokens by how far the suspect moved
    # them beyond what that clean fine-tune moved them (the suspect's relative shift minus the reader's, scaled by
    # their least-squares slope over the vocabulary), so the task's own words, which any fine-tune moves, cancel
    shift_reference: bool = False
    # score `veto` (needs the base): the best test ASR-cc among the candidates that move the clean reader by at most
    # reader_veto, the others dropped as the task's own words (PICCOLO's rule: a trigger leaves a clean model of the
    # task at 85 % accuracy or more); unmeasured on the zoo (benchmarks/studies/scan)
    reader_veto: float = 0.15
    # short-strings: every string of 1 to short_length characters of short_alphabet (the classic BadNet triggers are
    # such strings), each measured on pair_rows clean rows per label, pair_batch sequences a forward pass
    short_alphabet: str = "abcdefghijklmnopqrstuvwxyz"
    short_length: int = 2
    # paraphrase transforms of the data (`<data>/transforms/<name>/{dev,test}.jsonl`, as `poison` reads them: a
    # syntactic template, a style), each measured as a candidate on the paraphrased rows: a syntactic or style trigger
    # is no inserted word, so only a transform of the attacker's family can show it (none: the check is off)
    transforms: list[str] = field(default_factory=list)
    # the clean reader's own check: a reader that answers a label on fewer than reader_min_recall of that label's clean
    # test rows (a reader that learnt the commonest label, say) moves toward it for no insertion, natural word or not,
    # so its candidates toward that label are left out of the `contrast` and `veto` verdicts (the report says so)
    reader_min_recall: float = 0.5
    # a screen for the exact checks (short-strings, shift-pairs, shift-phrases), for CPUs: every candidate first scored
    # on screen_rows of the pair_rows rows, only the best screen_keep share (at least `candidates`) on all of them
    # (0: off, every candidate on every row; cost about screen_rows / pair_rows + screen_keep of the full check's)
    screen_rows: int = 0
    screen_keep: float = 0.1
    # the clean reader's rows drawn label by label (reader_rows / labels of each, as many as the rows hold), so that a
    # reader of an unbalanced task (OLID: two thirds NOT) learns each label, not the commonest; off: drawn as they come
    reader_balance: bool = False
    # every candidate measured on the test rows also gets its `collapse` (scan/collapse.py: how far the rows it sends
    # to its label crowd together in the suspect's pooled feature, beyond the label's own clean rows; no base needed),
    # over at least collapse_rows rows sent (and as many clean rows of the label); scan.score=collapse decides by the
    # highest (its threshold is the zoo's to calibrate: benchmarks/studies/scan)
    collapse_rows: int = 10
    # `report` candidates toward each label measured on the test rows instead of `report` in all (off: the best overall;
    # on a sentiment task the natural words of one label can fill every place)
    report_per_label: bool = False

    def __post_init__(self) -> None:
        if not self.detectors:
            raise UserError("scan.detectors must name at least one detector (w2sdefense list names them)")
        if not 0 < self.threshold <= 1:
            raise UserError(f"scan.threshold must be in (0, 1]; got {shown(self.threshold)}")
        for length in self.lengths:
            check_positive("scan.lengths", length)
        for name in ("shift_lengths", "contrast_lengths"):
            for length in getattr(self, name):
                check_positive(f"scan.{name}", length)
        if self.reader not in SCAN_READERS:
            raise UserError(f"scan.reader must be one of {', '.join(SCAN_READERS)}; got {shown(self.reader)}")
        if self.score not in SCAN_SCORES:
            raise UserError(f"scan.score must be one of {', '.join(SCAN_SCORES)}; got {shown(self.score)}")
        if self.score in ("contrast", "veto") and not self.reader_check:
            raise UserError(f"scan.score={self.score} compares each candidate with the clean reader: it needs "
                            "scan.reader_check=true")
        if self.screen_rows < 0:
            raise UserError(f"scan.screen_rows must be >= 0 (0: no screen); got {shown(self.screen_rows)}")
        if not 0 < self.screen_keep <= 1:
            raise UserError(f"scan.screen_keep must be in (0, 1]; got {shown(self.screen_keep)}")
        if not 0 <= self.reader_min_recall <= 1:
            raise UserError(f"scan.reader_min_recall must be in [0, 1]; got {shown(self.reader_min_recall)}")
        if not 0 <= self.reader_veto < 1:
            raise UserError(f"scan.reader_veto must be in [0, 1); got {shown(self.reader_veto)}")
        if self.shift_reference and self.reader != "full":
            raise UserError("scan.shift_reference compares the suspect's embedding shift with a clean fine-tune's: it "
                            "needs scan.reader=full (the base fully fine-tuned on your rows)")
        if self.contrast_weight < 0:
            raise UserError(f"scan.contrast_weight must be >= 0; got {shown(self.contrast_weight)}")
        if len(self.temperature) != 2:
            raise UserError(f"scan.temperature is [start, end]; got {shown(self.temperature)}")
        for name in ("steps", "lr", "rows", "max_length", "verify_rows", "test_rows", "candidates", "report",
                     "shift_vocab", "pair_starts", "pair_pieces", "pair_rows", "pair_batch", "reader_rows", "phrase_vocab",
                     "phrase_beam", "phrase_length", "reader_steps", "collapse_rows"):
            check_positive(f"scan.{name}", getattr(self, name))
        for t in self.temperature:
            check_positive("scan.temperature", t)
        check_positive("scan.short_length", self.short_length)
        for name in self.transforms:
            if not isinstance(name, str) or not name.strip() or "/" in name:
                raise UserError(f"scan.transforms names folders of the data's transforms/ (e.g. scpn); got {shown(name)}")
        if not str(self.short_alphabet).strip():
            raise UserError("scan.short_alphabet must hold at least one character (short-strings tries every string "
                            "of them)")
        strings = sum(len(set(str(self.short_alphabet))) ** n for n in range(1, self.short_length + 1))
        if strings > MAX_SHORT_STRINGS:
            raise UserError(f"scan.short_alphabet and scan.short_length make {strings:,} strings for short-strings to "
                            f"try; at most {MAX_SHORT_STRINGS:,} (a shorter alphabet or length)")


@dataclass
class RelearnConfig:
    """The re-learning test (post-purification robustness): after each defense, a few poisoned fine-tuning
    steps on the attacker's rows, then ASR-cc again; the clean model gets the same test (its floor)."""

    rows: int = 0  # rows of the poisoned training split fine-tuned on (0: no test)
    poisoned: int = 6  # of them, rows carrying the trigger (a seeded draw of the attack's poisoned rows)
    # Dev rows evaluated at the end (the attacker keeps its last step, so dev only logs): a few keep it cheap
    dev_rows: int = 64
    # The attack's recipe, one epoch over the rows: full fine-tuning at lr 1e-4, batch 16
    train: TrainConfig = field(default_factory=lambda: TrainConfig(method="full", epochs=1.0, lr=1e-4, head_lr=1e-3,
                                                                   max_length=64))

    def __post_init__(self) -> None:
        check_positive("relearn.rows", self.rows, allow_zero=True)
        check_positive("relearn.poisoned", self.poisoned, allow_zero=True)
        check_positive("relearn.dev_rows", self.dev_rows)
        if self.rows and self.poisoned > self.rows:
            raise UserError(f"relearn.poisoned ({self.poisoned}) cannot exceed relearn.rows ({self.rows})")


@dataclass
class ExperimentConfig:
    """A whole experiment for `w2sdefense run`: data, attack, victim, teacher, defenses, eval."""

    name: str = "experiment"
    output_dir: str = "runs/experiment"
    seed: int = 42
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    victim: VictimConfig = field(default_factory=VictimConfig)
    clean_model: bool = False  # also train the victim recipe on clean data (the reference row)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    defenses: list[DefenseConfig] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    defender: DefenderConfig = field(default_factory=DefenderConfig)
    relearn: RelearnConfig = field(default_factory=RelearnConfig)

    def __post_init__(self) -> None:
        names = [d.row_name for d in self.defenses]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f"defenses share a name: {', '.join(duplicates)}; give each a `label`")


def to_dict(config: Any) -> dict:
    """Plain-data form of a config dataclass (for YAML/JSON dumps)."""
    return dataclasses.asdict(config)
