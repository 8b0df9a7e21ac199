"""Finding a dataset's split files (named, folder, explicit or hub-cached) and loading them."""

from __future__ import annotations

import os
from pathlib import Path

from w2sdefense.config import DataConfig
from w2sdefense.data.loading import ARROW_STATE, FORMATS, HUB_EXTRA, read_split
from w2sdefense.data.records import Example, Splits
from w2sdefense.errors import UserError
from w2sdefense.fileio import cache_root, write_jsonl

SPLIT_NAMES = ("train", "dev", "test")
ENV_DATA_DIR = "W2S_DATA_DIR"
# The names a split goes by: ours first, then the Hugging Face ones (hub datasets say "validation").
SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "validation", "valid"), "test": ("test",)}
# Datasets that may come from the hub when no local copy exists: hub id and split names.
HUB_DATASETS = {"sst2": ("SetFit/sst2", {"train": "train", "dev": "validation", "test": "test"})}


class _HubUnavailable(Exception):
    """The hub fallback could not run here (package missing, offline)."""


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The folder that holds named datasets: the argument, else $W2S_DATA_DIR, else None."""
    value = data_dir or os.environ.get(ENV_DATA_DIR)
    return Path(value).expanduser() if value else None


def _split_file(folder: Path, split: str) -> Path | None:
    """The folder's source for `split`: a file named after it or an alias (dev: validation, valid) in one
    of FORMATS (two, e.g. train.jsonl and train.csv, are refused: which one is meant?); a single Parquet
    shard (`train-00000-of-00001.parquet`, also under `data/`, the hub's layout); or a subfolder written by
    `DatasetDict.save_to_disk`."""
    for name in SPLIT_ALIASES[split]:
        found = [folder / f"{name}{ext}" for ext in FORMATS if (folder / f"{name}{ext}").is_file()]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise UserError(f"{folder}: the {split} split is in {len(found)} files ({names}); keep one, or set "
                            f"data.{split}_file to the one meant")
        if found:
            return found[0]
        if (folder / name / ARROW_STATE).is_file():
            return folder / name
        for where in (folder, folder / "data"):
            shards = sorted(where.glob(f"{name}-*.parquet"))
            if len(shards) > 1:
                raise UserError(f"{where}: the {split} split is in {len(shards)} Parquet shards "
                                f"({shards[0].name}, ...); join them into one file or set data.{split}_file")
            if shards:
                return shards[0]
    return None


def _hub_cache(name: str) -> Path:
    return cache_root() / "datasets" / name


def _hub_folder(hub_id: str, config: str | None) -> Path:
    """Where a `data.hub` dataset is kept once downloaded (a DatasetDict.save_to_disk folder)."""
    name = hub_id.replace("/", "--") + (f"--{config}" if config else "")
    return cache_root() / "datasets" / "hub" / name


def _from_hub(cfg: DataConfig) -> Path:
    """Download `data.hub` once (any hub dataset, its config and splits as they are) and keep it as a
    save_to_disk folder; text and label columns are chosen when reading (data.text_field/label_field)."""
    folder = _hub_folder(cfg.hub, cfg.hub_config)
    if (folder / "dataset_dict.json").is_file():
        return folder
    try:
        import datasets
    except ImportError:
        raise UserError(f"data.hub needs the optional `datasets` package ({HUB_EXTRA})") from None
    try:
        loaded = datasets.load_dataset(cfg.hub, cfg.hub_config)
    except Exception as exc:  # offline, unknown name, auth, a config needed: say which in one line
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"could not load the hub dataset {cfg.hub}"
                        f"{f' ({cfg.hub_config})' if cfg.hub_config else ''}: {type(exc).__name__}: {detail}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise UserError(f"the hub dataset {cfg.hub} came back as one table, not named splits")
    missing = [split for split in SPLIT_NAMES
               if getattr(cfg, f"{split}_file") is None and not any(a in loaded for a in SPLIT_ALIASES[split])]
    if missing:
        raise UserError(f"the hub dataset {cfg.hub} has the splits {', '.join(loaded)}; none for "
                        f"{', '.join(missing)} (looked for {', '.join(a for m in missing for a in SPLIT_ALIASES[m])}); "
                        f"set {', '.join(f'data.{m}_file' for m in missing)}")
    partial = folder.with_name(folder.name + ".partial")
    loaded.save_to_disk(str(partial))
    partial.replace(folder)
    return folder


def _local_dataset_folder(cfg: DataConfig) -> Path | None:
    """The dataset's folder on disk: a folder path, a name under the data dir, or the hub cache."""
    if cfg.hub is not None:
        folder = _hub_folder(cfg.hub, cfg.hub_config)
        return folder if (folder / "dataset_dict.json").is_file() else None
    if cfg.dataset is None:
        return None
    as_path = Path(cfg.dataset).expanduser()
    if as_path.is_dir():  # a folder path the user typed wins over a name lookup
        return as_path
    data_dir = resolve_data_dir(cfg.data_dir)
    if data_dir is not None and (data_dir / cfg.dataset).is_dir():
        return data_dir / cfg.dataset
    cached = _hub_cache(cfg.dataset)
    if cfg.dataset in HUB_DATASETS and cfg.hub_fallback:
        if all(_split_file(cached, split) for split in SPLIT_NAMES):
            return cached
    return None


def _not_found(cfg: DataConfig, hub_note: str) -> UserError:
    data_dir = resolve_data_dir(cfg.data_dir)
    looked = f"looked in {data_dir / cfg.dataset}" if data_dir else "no data dir is set"
    return UserError(
        f"dataset {cfg.dataset!r} not found ({looked}, and {cfg.dataset} is not a folder); "
        f"point the tool at data with --data-dir or {ENV_DATA_DIR} (a folder holding "
        f"{cfg.dataset}/train.jsonl, dev.jsonl, test.jsonl), or set data.train_file, "
        f"data.dev_file and data.test_file{hub_note}"
    )


def _fetch_from_hub(name: str) -> Path:
    """Download a hub dataset once and cache its splits as JSONL; returns the cache folder."""
    hub_id, split_map = HUB_DATASETS[name]
    try:
        import datasets  # optional dependency: only this fallback needs it
    except ImportError:
        raise _HubUnavailable(
            "the optional `datasets` package is not installed (pip install 'w2sdefense[hub]')"
        ) from None
    try:
        loaded = datasets.load_dataset(hub_id)
        tables = {split: loaded[hub_split] for split, hub_split in split_map.items()}
        rows = {
            split: [{"text": r["text"], "label": int(r["label"])} for r in table]
            for split, table in tables.items()
        }
    except Exception as exc:  # offline, auth, changed schema: every failure means "no hub here"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _HubUnavailable(f"could not load {hub_id} ({type(exc).__name__}: {detail})") from None
    folder = _hub_cache(name)
    for split, split_rows in rows.items():
        write_jsonl(folder / f"{split}.jsonl", split_rows)
    return folder


def _dataset_folder(cfg: DataConfig, needed: list[str]) -> Path:
    """The folder that supplies the `needed` splits, downloading from the hub if allowed."""
    folder = _local_dataset_folder(cfg)
    if folder is not None:
        return folder
    if cfg.hub is not None:
        return _from_hub(cfg)
    if cfg.dataset is None:
        raise UserError(
            f"no file for the {', '.join(needed)} split(s): set data.dataset or "
            + ", ".join(f"data.{split}_file" for split in needed)
        )
    hub_note = ""
    if cfg.dataset in HUB_DATASETS and cfg.hub_fallback:
        try:
            return _fetch_from_hub(cfg.dataset)
        except _HubUnavailable as exc:
            hub_note = f"; the hub fallback failed: {exc}"
    raise _not_found(cfg, hub_note)


def dataset_files(cfg: DataConfig) -> dict[str, Path]:
    """The source file of each split (train, dev, test): explicit files override the dataset's."""
    files = {
        split: Path(getattr(cfg, f"{split}_file")).expanduser()
        for split in SPLIT_NAMES
        if getattr(cfg, f"{split}_file")
    }
    needed = [split for split in SPLIT_NAMES if split not in files]
    if needed:
        folder = _dataset_folder(cfg, needed)
        for split in needed:
            path = _split_file(folder, split)
            if path is None:
                names = ", ".join(f"{name}{ext}" for name in SPLIT_ALIASES[split] for ext in FORMATS)
                raise UserError(f"{folder}: no {split} split (looked for {names}, a {split}-*.parquet "
                                f"shard, or a save_to_disk subfolder {split}/); set data.{split}_file")
            files[split] = path
    return {split: files[split] for split in SPLIT_NAMES}


def data_inputs(cfg: DataConfig, missing_ok: bool = False) -> dict[str, Path]:
    """The split files a DataConfig reads and, unless the files are explicit, the dataset folder."""
    # missing_ok: data that cannot be found has nothing to protect, and a `run` whose stages are
    # all finished must still work where the data is gone.
    try:
        files = dataset_files(cfg)
    except UserError:
        if missing_ok:
            return {}
        raise
    folders = {"data folder": path.parent for split, path in files.items()
               if getattr(cfg, f"{split}_file") is None}  # explicit files: not their whole folder
    return {**folders, **{f"{split} data file": path for split, path in files.items()}}


def transforms_dir(cfg: DataConfig) -> Path | None:
    """The `<dataset folder>/transforms` folder (it may not exist), or None with no folder."""
    if all(getattr(cfg, f"{split}_file") for split in SPLIT_NAMES):
        # Every split is explicit, so the dataset name is unused; transforms sit beside the files.
        return Path(cfg.train_file).expanduser().parent / "transforms"
    folder = _local_dataset_folder(cfg)
    return folder / "transforms" if folder is not None else None


def load_splits(cfg: DataConfig) -> Splits:
    """Load train/dev/test, infer or check the number of classes, and apply the row limits."""
    files = dataset_files(cfg)
    loaded: dict[str, list[tuple[str, Example]]] = {}
    for split, path in files.items():
        rows = read_split(path, cfg.text_field, cfg.label_field)
        if not rows:
            raise UserError(f"{path}: the {split} split has no rows")
        for where, example in rows:
            if not example.text.strip():
                # A model reads nothing from it, and a decoder without a start token gets zero tokens.
                raise UserError(f"{where}: the text is empty{' (only whitespace)' if example.text else ''}; "
                                "give the row a text or remove it")
        loaded[split] = rows
    # Classes come from the full splits, so a small max_* cannot shrink the label space.
    num_labels = _num_labels(loaded, cfg.num_labels)
    limits = {"train": cfg.max_train, "dev": cfg.max_dev, "test": cfg.max_test}
    examples = {split: [example for _, example in rows] for split, rows in loaded.items()}
    for split, limit in limits.items():
        if limit is not None:
            examples[split] = examples[split][:limit]
    return Splits(train=examples["train"], dev=examples["dev"], test=examples["test"],
                  num_labels=num_labels)


def _num_labels(loaded: dict[str, list[tuple[str, Example]]], configured: int | None) -> int:
    """data.num_labels (every label below it), else 0..N-1 with N = max(2, highest training label + 1).

    Inferring from the labels alone would turn one stray label (a 5 in binary data, a class only the
    test split has) into classes without a training row; beyond two classes, every class needs a
    training row, and a label that breaks this names its row.
    """
    if configured is not None:
        for rows in loaded.values():
            for where, example in rows:
                if example.label >= configured:
                    raise UserError(f"{where}: label {example.label} is outside 0..{configured - 1} "
                                    f"(data.num_labels={configured})")
        return configured
    present = {example.label for _, example in loaded["train"]}
    top = max(present)
    missing = [label for label in range(top) if label not in present] if top >= 2 else []
    if missing:
        where, example = next((w, e) for w, e in loaded["train"] if e.label > missing[0])
        raise UserError(f"{where}: label {example.label}, but no training row has label {_or_list(missing)}; "
                        f"labels must be 0..N-1: fix the label, or set data.num_labels={top + 1} if the classes "
                        "without training rows are meant")
    num_labels = max(2, top + 1)
    highest = max(example.label for rows in loaded.values() for _, example in rows)
    for split in ("dev", "test"):
        for where, example in loaded[split]:
            if example.label >= num_labels:
                raise UserError(f"{where}: label {example.label} is not a class of the training split (labels "
                                f"0..{num_labels - 1}); fix the label, or set data.num_labels={highest + 1} to keep "
                                "classes without training rows")
    return num_labels


def _or_list(labels: list[int]) -> str:
    """'2', '2 or 3', '2, 3 or 4'; long lists shortened."""
    if len(labels) > 6:
        return f"{labels[0]}, {labels[1]}, ... or {labels[-1]} ({len(labels)} classes)"
    words = [str(label) for label in labels]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
