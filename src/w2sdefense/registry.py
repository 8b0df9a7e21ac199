"""One registry type for everything chosen by name in a config: attacks, defenses (and later PEFT methods).

A registry maps a canonical name, and any aliases, to one entry. Registering a name or alias twice is a
programming error (ValueError at import time); looking up an unknown name is a user error whose one
line lists the known names, aliases included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from w2sdefense.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind (`kind` names it in messages, e.g. "attack"), by case-insensitive name."""

    def __init__(self, kind: str, setting: str) -> None:
        self.kind = kind
        self.setting = setting  # the config key that names an entry, e.g. "attack.name"
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register `entry` under `name` and `aliases`; any of them taken already is an error."""
        for key in (name, *aliases):
            if key != key.lower():
                raise ValueError(f"{self.kind} name {key!r} must be lower case")
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} name {key!r} is registered twice")
        self._entries[name] = entry
        self._aliases.update({alias: name for alias in aliases})
        return entry

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator form of add()."""
        return lambda entry: self.add(name, entry, aliases)

    def remove(self, name: str) -> None:
        """Unregister `name` and its aliases (tests; plug-ins that are unloaded)."""
        del self._entries[name]
        self._aliases = {alias: target for alias, target in self._aliases.items() if target != name}

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases (case-insensitive)."""
        key = name.strip().lower()
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r} ({self.setting}); known: {self.describe()}")
        return key

    def get(self, name: str) -> T:
        """The entry for `name` or an alias; an unknown name is a UserError listing the known ones."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names, aliases not included, sorted."""
        return sorted(self._entries)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(alias for alias, target in self._aliases.items() if target == name)

    def describe(self) -> str:
        """'a, b (alias c), d': the known names for an error message."""
        parts = []
        for name in self.names():
            aliases = self.aliases_of(name)
            parts.append(f"{name} (alias {', '.join(aliases)})" if aliases else name)
        return ", ".join(parts)

    def __contains__(self, name: str) -> bool:
        key = name.strip().lower()
        return key in self._entries or key in self._aliases

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))
