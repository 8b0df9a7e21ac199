"""Config files: strict YAML reading (bounded aliases, no repeated keys, `extends`), dotted overrides,
and the YAML dump a run folder keeps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from w2sdefense.config.build import from_dict, merge_dicts
from w2sdefense.config.schema import PoisonConfig, to_dict
from w2sdefense.errors import UserError, cut, shown
from w2sdefense.fileio import utf8_error

T = TypeVar("T")



# How many values a YAML text may stand for once its aliases are expanded: a config has a few hundred,
# and a few nested aliases ("billion laughs") would otherwise stand for billions.
MAX_YAML_VALUES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases expand it past MAX_YAML_VALUES, or loop."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        """Refuse a key given twice in one mapping (PyYAML keeps the last silently); `<<` merges may repeat."""
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in lines:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {shown(key)} is given twice (first on line {lines[key]}); keep one",
                        key_node.start_mark)
                lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for with every alias expanded (each distinct node visited once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise yaml.composer.ComposerError(None, None, "an alias refers to a value that contains it (a loop)",
                                          node.start_mark)
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    size = 1
    for child in children:
        size += _expanded_size(child, sizes, open_nodes)
        if size > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"its aliases expand it to more than {MAX_YAML_VALUES:,} values (a config has a few "
                "hundred); write the settings out instead of nesting aliases", node.start_mark)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load, refusing alias expansion past MAX_YAML_VALUES (yaml.YAMLError, as any malformed text);
    every alias loads as a copy of its anchor's value."""
    try:
        return _unshared(yaml.load(text, Loader=_BoundedLoader))
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def _unshared(value: Any) -> Any:
    """YAML data in which no mapping or list sits in two places.

    An alias (`train: *t`, a `<<: *t` merge) loads as the very object of its anchor, so an override of
    one section would change the other too. copy.deepcopy would keep that sharing (its memo).
    """
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, with one-line errors for missing or malformed files (`extends`: see _extend)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} {utf8_error(path)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({cut(str(getattr(exc, 'problem', exc)))})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of settings")
    return _extend(path, data, _seen)


def _extend(path: Path, data: dict, seen: tuple[Path, ...]) -> dict:
    """A file with `extends: OTHER.yaml` (relative to its own folder) is that file's settings with its own over
    them: mappings merge, `defenses` merge row by row (a row of the same label, or name when it has none,
    takes the new keys; other rows are added at the end), anything else replaces."""
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise UserError(f"{path}: extends must name a YAML file; got {parent!r}")
    if path.resolve() in seen:
        raise UserError(f"{path}: its extends chain comes back to it ({' -> '.join(str(p) for p in seen)})")
    base = read_yaml(path.parent / parent, (*seen, path.resolve()))
    merged = merge_dicts(base, {k: v for k, v in data.items() if k != "defenses"})
    if "defenses" in data:
        merged["defenses"] = merge_rows(base.get("defenses") or [], data["defenses"] or [], path)
    return merged


def merge_rows(base: list, update: list, where: Path | str) -> list:
    """Defense rows of `update` merged into those of `base` by row name (label, else name), new ones appended."""
    def row_name(row: Any) -> str:
        if not isinstance(row, dict) or not row.get("name"):
            raise UserError(f"{where}: every defenses item needs a name; got {row!r}")
        return row.get("label") or row["name"]

    rows = {row_name(r): dict(r) for r in base}
    if len(rows) != len(base):
        raise UserError(f"{where}: the file it extends has two defenses rows of one name (give each a label)")
    for item in update:
        name = row_name(item)
        rows[name] = merge_dicts(rows[name], item) if name in rows else dict(item)
    return list(rows.values())


# Sections (by key) whose classes declare exclusive settings, for overrides applied to raw data.
_SECTIONS: dict[str, type] = {"poison": PoisonConfig}


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (numbers, lists)."""
    if "=" not in assignment:
        raise UserError(f"override {shown(assignment)} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"override {shown(assignment)} has an empty key")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = cut(getattr(exc, "problem", None) or str(exc).splitlines()[0])
        raise UserError(f"override {shown(assignment)}: cannot read the value {shown(raw.strip())} ({problem}); "
                        "for a text that starts with [ { * & ! | > @ ` % or a quote, quote it: "
                        f"--set \"{cut(key.strip())}='...'\"") from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: i + 1]))
            continue
        if not isinstance(node, dict):
            raise UserError(f"override {cut(key)}: {cut('.'.join(parts[:i]))} is a value, not a section")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        node = child
    last = parts[-1]
    if not isinstance(node, (dict, list)):
        raise UserError(f"override {cut(key)}: {cut('.'.join(parts[:-1]))} is a value, not a section")
    if isinstance(node, list):
        _list_item(node, last, key)
        node[int(last)] = value
    else:
        node[last] = value
        if value is not None and len(parts) > 1:
            for group in getattr(_SECTIONS.get(parts[-2]), "EXCLUSIVE", ()):
                if last in group:  # setting one of them clears the others (poison.count, poison.rate)
                    for other in group:
                        if other != last:
                            node.pop(other, None)


def _list_item(node: list, part: str, key: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"override {cut(key)}: no list item {shown(part)} (the list has {len(node)})")
    return node[int(part)]


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Load `cls` from an optional YAML file plus dotted overrides."""
    data = read_yaml(path) if path else {}
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(cls, data)


def dump_yaml(config: Any) -> str:
    """YAML text of a config dataclass, keys in declaration order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def build_job(cls: type[T], data: dict, flags: Mapping[str, Any], overrides: Iterable[str] = ()) -> T:
    """A command's job: its config file's `data`, then its flags (dotted keys; None: not given; values verbatim, no
    YAML parsing, so a path like `1e3` stays a text), then dotted `overrides` (YAML values), as `--set` gives them."""
    data = dict(data)
    for key, value in flags.items():
        if value is not None:
            _set_verbatim(data, key, value)
    for assignment in overrides:
        apply_override(data, assignment)
    if hasattr(cls, "normalise"):
        data = cls.normalise(data)
    return from_dict(cls, data)


def _set_verbatim(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(data.get(part), dict):
            data[part] = {}  # absent, or an empty `section:` in the YAML
        data = data[part]
    data[last] = value
