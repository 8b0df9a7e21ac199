"""Typed, validated configuration: the schema dataclasses, strict construction from plain data, YAML files
with dotted overrides, and the single-command jobs.

Every setting with experimental meaning lives in `schema`. Unknown keys are errors that list the valid
ones, so a typo never silently falls back to a default.
"""

from w2sdefense.config.build import SEED_MAX, changed_settings, check_seed, from_dict, merge_dicts
from w2sdefense.config.jobs import CleanJob, DefendJob, EvaluateJob, PoisonJob, ScanJob, TeacherJob, TrainJob
from w2sdefense.config.loader import (MAX_YAML_VALUES, apply_override, build_job, dump_yaml, load_config, load_yaml_text,
                                      merge_rows, read_yaml)
from w2sdefense.config.schema import (DEFAULT_POISON_COUNT, AttackConfig, DataConfig, DefenderConfig, DefenseConfig,
                                      EvalConfig, ExperimentConfig, LoraConfig, PoisonConfig, RelearnConfig,
                                      RuntimeConfig, ScanConfig, TeacherConfig, TrainConfig, VictimConfig, check_choice,
                                      check_finite, check_positive, to_dict)

__all__ = [
    "SEED_MAX", "changed_settings", "check_seed", "from_dict", "merge_dicts",
    "CleanJob", "DefendJob", "EvaluateJob", "PoisonJob", "ScanJob", "TeacherJob", "TrainJob",
    "MAX_YAML_VALUES", "apply_override", "build_job", "dump_yaml", "load_config", "load_yaml_text", "merge_rows", "read_yaml",
    "DEFAULT_POISON_COUNT", "AttackConfig", "DataConfig", "DefenderConfig", "DefenseConfig", "EvalConfig",
    "ExperimentConfig", "LoraConfig", "PoisonConfig", "RelearnConfig", "RuntimeConfig", "ScanConfig", "TeacherConfig", "TrainConfig", "VictimConfig",
    "check_choice", "check_finite", "check_positive", "to_dict",
]
