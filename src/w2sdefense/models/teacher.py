"""The small clean teacher: an encoder, [CLS] -> Linear(H, D) -> ReLU = feature -> Linear(D, K) = logits.

D is the student's hidden size, so the teacher's feature can be aligned with the student's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, set_seed
from transformers.utils import ModelOutput

from w2sdefense.config import TeacherConfig
from w2sdefense.errors import UserError
from w2sdefense.fileio import write_json
from w2sdefense.models.loading import (
    LOAD_ERRORS,
    TEACHER_FILE,
    Classifier,
    fix_padding,
    limit_length,
    load_error_reason,
    resolve_model_path,
)
from w2sdefense.models.shape import model_shape
from w2sdefense.models.tiny import TINY_BUILDERS, build_tiny
from w2sdefense.rundir import MODEL_DIR, unfinished
from w2sdefense.runtime import Runtime

HEAD_FILE, META_FILE = "head.safetensors", TEACHER_FILE


@dataclass
class TeacherOutput(ModelOutput):
    """The teacher's logits [B, K] and feature [B, D]."""

    logits: torch.Tensor | None = None
    feature: torch.Tensor | None = None


class TeacherHead(nn.Module):
    """Projection to the student's width, ReLU (the feature), then the classifier."""

    def __init__(self, hidden: int, feature_dim: int, num_labels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, feature_dim)
        self.out = nn.Linear(feature_dim, num_labels)

    def forward(self, cls: torch.Tensor) -> TeacherOutput:
        feature = torch.relu(self.proj(cls))
        return TeacherOutput(logits=self.out(feature), feature=feature)


class TeacherClassifier(nn.Module):
    """Encoder + TeacherHead; saves and reloads without the student present."""

    def __init__(self, encoder: PreTrainedModel, feature_dim: int, num_labels: int) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused (the head reads [CLS]); unused weights would stall DDP
        self.encoder = encoder
        self.config = encoder.config
        self.head = TeacherHead(encoder.config.hidden_size, feature_dim, num_labels)
        self.feature_dim, self.num_labels = feature_dim, num_labels

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> TeacherOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden[:, 0])

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """encoder/ (HF format), head.safetensors and teacher.json."""
        path = Path(path)
        state = state_dict if state_dict is not None else self.state_dict()
        part = lambda prefix: {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
        self.encoder.save_pretrained(path / "encoder", state_dict=part("encoder."))
        save_file(part("head."), str(path / HEAD_FILE))
        write_json(path / META_FILE, {"feature_dim": self.feature_dim, "num_labels": self.num_labels})

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> TeacherClassifier:
        """Reload a saved teacher."""
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise UserError(f"{path} is not a saved teacher (no {META_FILE}); run `w2sdefense teacher` first")
        meta = json.loads((path / META_FILE).read_text())
        try:
            encoder = AutoModel.from_pretrained(path / "encoder", dtype=dtype, trust_remote_code=False)
        except LOAD_ERRORS as exc:
            raise UserError(f"could not load the teacher {path}: {load_error_reason(exc)}") from None
        teacher = cls(encoder, meta["feature_dim"], meta["num_labels"])
        teacher.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return teacher.to(dtype)


def load_encoder(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    """A bare encoder and its tokenizer (built-in name, folder or hub id)."""
    if name in TINY_BUILDERS:
        model, tok = build_tiny(name, 2, dtype)
        return model.base_model, tok
    path = resolve_model_path(name)
    try:
        return (AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=False),
                AutoTokenizer.from_pretrained(path, trust_remote_code=False))
    except LOAD_ERRORS as exc:
        raise UserError(f"could not load teacher encoder {name!r}: {load_error_reason(exc)}") from None


def teacher_dir(path: str | Path) -> Path:
    """The folder holding a saved teacher's files: a teacher run folder's model/, or the folder itself."""
    path = Path(path)
    if unfinished(path):
        raise UserError(f"{path} is an unfinished teacher run (stopped before its last step): rerun the command "
                        "that made it to finish it")
    return path / MODEL_DIR if (path / MODEL_DIR / META_FILE).is_file() else path


def teacher_labels(teacher: str | Path) -> int:
    """How many labels a saved teacher classifies, read from its record; refuses a folder that holds none."""
    folder = teacher_dir(teacher)
    if not (folder / META_FILE).is_file():
        raise UserError(f"{teacher} is not a saved teacher (no {META_FILE}); run `w2sdefense teacher` first")
    try:
        return json.loads((folder / META_FILE).read_text())["num_labels"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{folder / META_FILE}: no num_labels; retrain the teacher") from None


def check_teacher_labels(teacher: str | Path, num_labels: int, student: str) -> None:
    """Before any work: the teacher must classify the student's labels (its KD targets are per class)."""
    taught = teacher_labels(teacher)
    if taught != num_labels:
        raise UserError(f"the teacher {teacher} classifies {taught} labels, but the student {student} and its data "
                        f"have {num_labels}: train the teacher on data with the same labels")


def random_teacher(path: str | Path, dtype: torch.dtype, seed: int) -> TeacherClassifier:
    """A saved teacher's architecture (encoder and head) at a seeded random initialisation, never trained:
    the control that tells what the trained teacher adds. The global random state is left as it was."""
    meta = json.loads((Path(path) / META_FILE).read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = AutoConfig.from_pretrained(Path(path) / "encoder", trust_remote_code=False)
        encoder = AutoModel.from_config(config, dtype=dtype, trust_remote_code=False)
        teacher = TeacherClassifier(encoder, meta["feature_dim"], meta["num_labels"])
    return teacher.to(dtype)


def load_teacher(path: str | Path, dtype: torch.dtype = torch.float32,
                 random_init_seed: int | None = None) -> Classifier:
    """A saved teacher with its tokenizer, frozen and in eval mode; with `random_init_seed`, its architecture
    at random initialisation instead of its trained weights (see random_teacher)."""
    path = teacher_dir(path)
    if random_init_seed is None:
        teacher = TeacherClassifier.from_pretrained(path, dtype)
    else:
        teacher = random_teacher(path, dtype, random_init_seed)
    teacher.eval().requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    limit_length(teacher, tok)
    return Classifier(teacher, tok)


def hidden_size_of(name: str) -> int:
    """The hidden size of a student given by name, folder, run folder, adapter or hub id."""
    hidden = model_shape(name).hidden_size
    if hidden is None:
        raise UserError(f"the config of {name} gives no hidden size: set teacher.feature_dim to the student's width")
    return hidden


def build_teacher(cfg: TeacherConfig, num_labels: int, feature_dim: int, rt: Runtime, seed: int) -> Classifier:
    """A fresh teacher: pretrained encoder + randomly initialised head of width `feature_dim`."""
    set_seed(seed)
    encoder, tok = load_encoder(cfg.model, rt.dtype)
    teacher = TeacherClassifier(encoder, feature_dim, num_labels).to(rt.dtype)
    fix_padding(teacher, tok)
    return Classifier(teacher, tok)
