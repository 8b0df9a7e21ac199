"""What the benchmark measured for a defense, for `clean`: the numbers a user should weigh a cleaned model against, in
the regime they were measured in, and the default `clean` runs, chosen from them by one rule (measured_default)
(benchmarks/RESULTS.md; tests/test_evidence.py checks every number here against the results files, so a rerun that
changes one fails until this table follows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from w2sdefense.models.packaged import not_installed


@dataclass(frozen=True)
class Measured:
    """A defense's residual backdoor (ASR-cc minus a clean model's, points) per attack, in one regime."""

    defense: str  # the registry name
    settings: dict  # the settings it ran with besides the base (e.g. {"rho": 0.0}); others are another method
    regime: str  # in words: model, data, whose rows the defender held, how many seeds
    residual: dict[str, float]  # attack -> points, the mean over the seeds
    source: str  # where the table is
    seeds: int | dict[str, int] = 1  # defense seeds behind each mean (per attack where they differ)
    needs_base: bool = False  # it resets toward the public base: only for a user who knows it
    # attack -> clean accuracy minus the suspect's, points, the mean over the seeds (the realistic protocol's rows
    # carry it; the main experiment's are in its headline table)
    ca_change: dict[str, float] | None = None
    train: dict | None = None  # train keys it ran with beyond the defense's recipe and CLEAN_BUDGET (`clean` applies them)
    arm: str | None = None  # its rows' `defense` in the realistic protocol, where the arm's label is not the name
    # it read unlabelled in-domain texts (the realistic protocol's 1024): only for a user who gives them (--unlabelled)
    reads_unlabelled: bool = False
    # it distilled the suspect into another model of this many parameters, larger than the suspect measured: it applies
    # to a suspect no larger (how much of a larger suspect's accuracy a smaller student keeps was not measured)
    student_params: int | None = None
    # attack -> (lowest, highest) CA change against the suspect over the seeds, points: how far one run may fall from
    # the mean (the accuracy kept depends on the defender's rows: benchmarks/studies/realistic)
    ca_range: dict[str, tuple[float, float]] | None = None

    def seeds_of(self, attack: str) -> int:
        """The defense seeds behind an attack's mean."""
        return self.seeds[attack] if isinstance(self.seeds, dict) else self.seeds


MAIN = "SmolLM2-135M suspects on SST-2, the defender holding 1280 of the attacker's own 2000 rows"
REALISTIC = ("SmolLM2-135M suspect on SST-2 trained on 4000 rows, the defender holding 256 rows the attacker never saw "
             "and 1024 unlabelled texts")
REALISTIC_ROWS = ("SmolLM2-135M suspect on SST-2 trained on 4000 rows, the defender holding 256 rows the attacker never "
                  "saw and no unlabelled texts")
# the regimes in the order `clean` prefers their measurements: the practitioner's (with or without texts) first
TIERS = ((REALISTIC, REALISTIC_ROWS), (MAIN,))

# the train keys both Gemma distillations ran with beyond DISTILL_INTO_RECIPE and CLEAN_BUDGET (`clean` applies them)
GEMMA_TRAIN = {"method": "lora", "lr": 1.0e-3, "head_lr": None,
               "lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]}}

EVIDENCE = (
    Measured("fine-mixing", {"rho": 0.0}, MAIN, {"BadNet": 0.9, "InSent": 2.7, "SynAttack": 1.6},
             "benchmarks/RESULTS.md, the paper's experiment at laptop scale (fine-mixing-r0)", seeds=3, needs_base=True),
    Measured("w2sdefense", {}, MAIN, {"BadNet": 3.9, "InSent": 72.6, "SynAttack": 32.4},
             "benchmarks/RESULTS.md, the paper's experiment at laptop scale (w2sdefense)", seeds=3),
    Measured("reset-distill", {}, REALISTIC, {"BadNet": -0.2, "InSent": -2.8},
             "benchmarks/RESULTS.md, the realistic protocol (results/realistic-rows.jsonl)", needs_base=True,
             seeds=3, ca_change={"BadNet": -0.9, "InSent": -1.2}, reads_unlabelled=True,
             ca_range={"BadNet": (-1.3, -0.3), "InSent": (-2.2, -0.3)}),
    # the suspect distilled into the packaged Gemma-3-270M (another family, never shown a trigger), LoRA on every linear
    # layer and a new head; 268,099,456 parameters as a two-label classifier (models.loading.parameter_count)
    Measured("distill-into", {"student_model": "gemma3-270m"}, REALISTIC, {"BadNet": -1.0, "InSent": -2.9},
             "benchmarks/RESULTS.md, the realistic protocol (results/realistic-rows.jsonl)", seeds=3,
             ca_change={"BadNet": 0.3, "InSent": -0.3}, reads_unlabelled=True, arm="distill-into-gemma",
             train=GEMMA_TRAIN,
             student_params=268_099_456, ca_range={"BadNet": (0.2, 0.4), "InSent": (-2.0, 0.5)}),
    # the same distillation on the 256 labelled rows alone (the arm distill-into-gemma-labelled)
    Measured("distill-into", {"student_model": "gemma3-270m", "unlabelled": False}, REALISTIC_ROWS,
             {"BadNet": -0.5, "InSent": -2.6}, "benchmarks/RESULTS.md, the realistic protocol (results/realistic-rows.jsonl)",
             seeds=3, ca_change={"BadNet": -2.5, "InSent": -2.1}, arm="distill-into-gemma-labelled",
             train=GEMMA_TRAIN,
             student_params=268_099_456, ca_range={"BadNet": (-2.9, -1.7), "InSent": (-3.1, -1.2)}),
)

# What a measurement needs before `clean` may run it by default (the realistic protocol's own bar): both attacks the
# defaults are tuned on (SynAttack is the one nothing is tuned on), each a mean over at least 3 defense seeds.
BAR_ATTACKS = ("BadNet", "InSent")
BAR_SEEDS = 3


def measured_default(base_known: bool, evidence: tuple[Measured, ...] = EVIDENCE,
                     installed: Callable[[Measured], bool] = lambda m: missing_package(m) is None, *,
                     unlabelled: bool = False, suspect: str | None = None, resets: bool = False) -> Measured:
    """The defense `clean` runs when none is named: of the measurements that meet the bar and that the user can run
    (a reset needs the base; a packaged model needs its package, `installed`; a measurement that read unlabelled
    texts needs the user's, `unlabelled`; one that distilled into a student needs a `suspect` no larger), those of the
    realistic protocol (the practitioner's regime, with texts or without) if any, else the main experiment's; among
    them the one whose worse residual over BadNet and InSent is lowest, a residual under the floor counting as the
    floor (below a clean model's level the differences are noise), and between two at the floor the one whose worse
    clean-accuracy change is higher. `resets`: only those that reset toward the base (the user asked for a reset's
    options)."""
    found = _ranked(base_known, evidence, installed, unlabelled,
                    lambda m: fits(m, suspect) and (m.needs_base or not resets))
    if not found:
        raise ValueError("no measurement meets the bar for this user: the evidence table lost its main rows")
    return found[0]


def fits(m: Measured, suspect: str | None) -> bool:
    """Whether `suspect` is within what `m` measured: any suspect, or for a distillation into a student one no larger
    than that student (a suspect whose size cannot be read is not)."""
    if m.student_params is None:
        return True
    size = _suspect_size(suspect)
    return size is not None and size <= m.student_params


def _suspect_size(suspect: str | None) -> int | None:
    from w2sdefense.models.loading import parameter_count  # reads the suspect's config only when it matters

    return parameter_count(suspect) if suspect else None


def _ranked(base_known: bool, evidence: tuple[Measured, ...], installed: Callable[[Measured], bool],
            unlabelled: bool, fitting: Callable[[Measured], bool] = lambda m: True) -> list[Measured]:
    usable = [m for m in evidence if (base_known or not m.needs_base) and installed(m) and fitting(m)
              and (unlabelled or not m.reads_unlabelled)
              and all(a in m.residual and m.seeds_of(a) >= BAR_SEEDS for a in BAR_ATTACKS)]
    for regimes in TIERS:
        found = [m for m in usable if m.regime in regimes]
        if found:
            return sorted(found, key=_rank)
    return []


def _rank(m: Measured) -> tuple[float, float]:
    """What orders the measurements of one tier: the worse residual over the bar's attacks, none counted below the
    floor, then the worse clean-accuracy change, higher first (a measurement without one last)."""
    ca = min(m.ca_change[a] for a in BAR_ATTACKS) if m.ca_change else float("-inf")
    return max(0.0, max(m.residual[a] for a in BAR_ATTACKS)), -ca


def missing_package(m: Measured) -> str | None:
    """The pip requirement of a packaged model the measurement's settings name and that is not installed, else None."""
    for value in m.settings.values():
        found = not_installed(value) if isinstance(value, str) else None
        if found:
            return found
    return None


def default_reason(chosen: Measured, base_known: bool, evidence: tuple[Measured, ...] = EVIDENCE, *,
                   unlabelled: bool = False, suspect: str | None = None, resets: bool = False) -> str:
    """Why `clean` ran `chosen`, in one line for its report; it names a better measurement the user cannot run for
    want of a package (and the command that installs it), of unlabelled texts (and the option that gives them), or
    because the suspect is larger than the student it was measured with."""
    given = "with the public base known" if base_known else "without a known base"
    line = (f"{chosen.defense} is the default {given}: of the defenses the benchmark measured on BadNet and InSent over "
            f"at least {BAR_SEEDS} seeds ({chosen.regime}), it left the least backdoor (none below a clean model's "
            "level counted; at that level, the one that kept the most clean accuracy)")
    if resets:
        line += " of those that reset toward the base (--fresh-head and --base-tokenizer ask for a reset)"
    if base_known and not chosen.needs_base:
        line += " (it does not read the base)"
    ranked = _ranked(base_known, evidence, lambda m: True, True, lambda m: m.needs_base or not resets)
    best = ranked[0] if ranked else chosen
    if best is not chosen and _rank(best) < _rank(chosen):
        wants = []
        if missing_package(best):
            wants.append(f"`pip install {missing_package(best)}`")
        if best.reads_unlabelled and not unlabelled:
            wants.append("unlabelled in-domain texts (`--unlabelled FILE`, one a line)")
        if not fits(best, suspect):
            wants.append(f"a suspect no larger than the student it was measured with ({best.student_params:,} "
                         "parameters; the size of yours " + _size_of(suspect) + ")")
        if wants:
            line += (f" that you can run as given; {best.arm or best.defense} measured better but needs "
                     + " and ".join(wants))
    return line + "."


def _size_of(suspect: str | None) -> str:
    size = _suspect_size(suspect)
    return "could not be read from its config" if size is None else f"is {size:,}"


def evidence_lines(name: str, settings: dict, texts: bool = True, train: dict | None = None) -> list[str]:
    """What the benchmark measured for the defense `name` run with `settings`, in words; a defense it never measured
    says so. Without `texts` (no unlabelled texts given) a distillation read none, whatever its `unlabelled` says.
    Which base is the user's, not the method's; whether one was given is (W2SDefense with a base resets first).
    `train`: the train keys the run applied over the defense's recipe (CLEAN_BUDGET and any others); a realistic-
    protocol measurement made with other ones is named, not quoted (distill-into into Gemma was measured with LoRA,
    its recipe is full)."""
    name = _canonical(name)
    given = {k: v for k, v in settings.items() if k != "base_model"}
    based = bool(settings.get("base_model"))
    defaults = _defaults(name)
    if not texts and "unlabelled" in defaults:
        given["unlabelled"] = False
    found = [m for m in EVIDENCE if m.defense == name and m.needs_base == based
             and _set(defaults, given) == _set(defaults, m.settings)]
    if not found:
        return [f"the benchmark has not measured {name} with these settings: its effect on a backdoor is unknown."]
    if train is not None:
        other = [(m, keys) for m in found if (keys := _train_differs(m, train))]
        found = [m for m in found if not _train_differs(m, train)]
        if not found:
            m, keys = other[0]
            return [f"the benchmark measured {name} with these settings only with other training settings ({m.regime}: "
                    + ", ".join(f"train.{k}={_shown(m_train(m).get(k))}" for k in keys) + "; this run: "
                    + ", ".join(f"train.{k}={_shown(train.get(k))}" for k in keys)
                    + "): its effect on a backdoor as run here is unknown."]
    return [f"the benchmark measured {name} ({m.regime}): residual backdoor "
            + ", ".join(f"{points:+.1f} points ({attack}{_over(m, attack)})" for attack, points in m.residual.items())
            + ("; clean accuracy against the suspect's " + ", ".join(f"{points:+.1f} points ({attack}{_spread(m, attack)})"
                                                                      for attack, points in m.ca_change.items())
               if m.ca_change else "")
            + f" [{m.source}]." for m in found]


def m_train(m: Measured) -> dict:
    """The train keys a measurement ran with over its defense's recipe: the clean budget, then its own."""
    from w2sdefense.defenses.recipes import CLEAN_BUDGET

    return {**CLEAN_BUDGET, **(m.train or {})}


def _train_differs(m: Measured, train: dict) -> list[str]:
    """The train keys on which a run's `train` and the measurement's differ (a key one of them leaves out counts);
    only for a realistic-protocol measurement, whose budget is `clean`'s (CLEAN_BUDGET): the main experiment's rows
    ran that experiment's own budgets, which its regime already tells apart."""
    if m.regime not in TIERS[0]:
        return []
    measured = m_train(m)
    return sorted(k for k in set(measured) | set(train) if measured.get(k) != train.get(k))


def _shown(value) -> str:
    return "(the recipe's)" if value is None else str(value)


def _canonical(name: str) -> str:
    """The registered name of `name` or its alias (as given when not registered)."""
    from w2sdefense.defenses.base import DEFENSES

    return DEFENSES.canonical(name) if name in DEFENSES else name


def _defaults(name: str) -> dict:
    """The defaults of the defense `name`'s settings ({} for a name not registered)."""
    import dataclasses

    from w2sdefense.defenses.base import DEFENSES  # the registry imports the defenses, which import this file

    spec = DEFENSES.get(name) if name in DEFENSES else None
    fields = dataclasses.fields(spec.settings) if spec is not None else ()
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def _set(defaults: dict, settings: dict) -> dict:
    """`settings` without the keys at their `defaults`: the same method however it was spelled."""
    return {k: v for k, v in settings.items() if k not in defaults or defaults[k] != v}


def _spread(m: Measured, attack: str) -> str:
    low, high = (m.ca_range or {}).get(attack, (None, None))
    return "" if low is None else f"; seeds from {low:+.1f} to {high:+.1f}"


def _over(m: Measured, attack: str) -> str:
    n = m.seeds_of(attack)
    return f", {n} seed{'s' if n > 1 else ''}"
