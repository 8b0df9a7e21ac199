"""Loading labelled splits and trigger transforms; the example record type."""

from w2sdefense.data.datasets import (
    SPLIT_NAMES,
    dataset_files,
    load_splits,
    resolve_data_dir,
    transforms_dir,
)
from w2sdefense.data.loading import (
    iter_rows,
    load_examples,
    load_split,
    load_transform,
    parse_label,
    read_split,
)
from w2sdefense.data.records import Example, Splits

__all__ = [
    "SPLIT_NAMES",
    "Example",
    "Splits",
    "dataset_files",
    "iter_rows",
    "load_examples",
    "load_split",
    "load_splits",
    "load_transform",
    "parse_label",
    "read_split",
    "resolve_data_dir",
    "transforms_dir",
]
