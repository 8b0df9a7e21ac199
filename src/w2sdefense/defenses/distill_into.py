"""`distill-into`: when the suspect's public base is unknown, distil its clean behaviour into a public model the
defender trusts instead (any name `--model` takes: another family, another size, an encoder). The student starts
from that model with a new classification head and learns, on the defender's texts only,

    loss = alpha * CE(labelled rows) + beta * T^2 * KL(suspect || student)   (every row, labelled or not)

The trigger never appears in the texts, and the student shares no weight with the suspect: a backdoor can only
reach it through the suspect's answers on clean text (subliminal transfer needs a shared initialisation, which
another architecture does not have). What it costs is accuracy: the cleaned model is the student, as accurate as
its size and the defender's texts allow; the benchmark's row says how far under the suspect's that is. With
`student_model` set to the suspect's own base it is reset-distill with a new head.

Its recipe fine-tunes every weight of the student (a small encoder such as MiniLM-L6 learns little through a
LoRA adapter), at the teacher's learning rates; `train.method: lora` gives a large student an adapter instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from w2sdefense.data.records import UNLABELLED
from w2sdefense.defenses.base import DefenseJob, fine_tune, register_defense
from w2sdefense.defenses.distill import DistillSettings, distill_step
from w2sdefense.defenses.recipes import LORA_RECIPE
from w2sdefense.defenses.reset_distill import cache_suspect, distill_rows
from w2sdefense.errors import UserError
from w2sdefense.models import check_model_name
from w2sdefense.train.job import prepare_student

# lora-ft's data, steps and checkpoint rule; every weight trained, at the teacher's learning rates
DISTILL_INTO_RECIPE = {**{k: v for k, v in LORA_RECIPE.items() if k != "lora"}, "method": "full", "epochs": 2.0,
                       "lr": 5e-5, "head_lr": 1e-3}


@dataclass(frozen=True)
class DistillIntoSettings(DistillSettings):
    """The student (a public model), then the distillation (alpha, beta, temperature, unlabelled)."""

    NAME: ClassVar[str] = "distill-into"
    student_model: str | None = None  # the public model the suspect is distilled into (any name --model takes)

    def __post_init__(self) -> None:
        self.check_distill()
        if not self.student_model:
            raise UserError("distill-into needs student_model: a public model you trust to distil the suspect into "
                            "(e.g. student_model: minilm-l6)")
        check_model_name(self.student_model)


@register_defense("distill-into", kind="repair", method="any", settings=DistillIntoSettings,
                  train=DISTILL_INTO_RECIPE, starts_from_victim=False)
def distill_into(job: DefenseJob) -> dict:
    """Distil the suspect's answers on clean texts into a public model with a new head (CE + KL), every weight."""
    s = job.settings
    rows = distill_rows(job, s.unlabelled)
    cache = cache_suspect(job, rows)
    student = prepare_student(s.student_model, job.splits.num_labels, job.train, job.rt, job.out_dir, job.seed)
    loss = distill_step(s.alpha, s.beta, s.temperature, cache, job.rt.device)
    metrics = fine_tune(job, student, rows=rows, loss_fn=loss)
    return {**metrics, "student_model": s.student_model, "unlabelled_rows": sum(e.label == UNLABELLED for e in rows)}
