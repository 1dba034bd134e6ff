"""What a GraphQL document asks for, as plain data: the planner's output and the input of
both the SQL compiler (``persistence.reads``) and the event renderer.

Arguments are either literals or the name of a *slot*: a value bound per request (a
variable, a normalised list argument, the caller's workspace). The same plan serves
every request of a document; only the slot values change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TYPENAME = "__typename"


@dataclass(frozen=True)
class Slot:
    """A value bound per request, by name."""

    name: str


Value = Any  # a literal (str, int, bool, None) or a Slot


@dataclass(frozen=True)
class Pick:
    """One response key of an object: the field it reads, its arguments, what it selects."""

    key: str
    name: str
    arguments: tuple[tuple[str, Value], ...] = ()
    children: Selection | Alternatives | None = None

    def argument(self, name: str, default: Value = None) -> Value:
        for arg_name, value in self.arguments:
            if arg_name == name:
                return value
        return default


@dataclass(frozen=True)
class Selection:
    """The picks of one object type, in response order."""

    type_name: str
    picks: tuple[Pick, ...]


@dataclass(frozen=True)
class Alternatives:
    """A field whose type is an interface: one selection per concrete type."""

    by_type: tuple[Selection, ...]

    def for_type(self, type_name: str) -> Selection:
        for selection in self.by_type:
            if selection.type_name == type_name:
                return selection
        return Selection(type_name, ())


@dataclass(frozen=True, eq=False)
class QueryPlan:
    """Compared by identity: plans are made once per document and kept, and compiled
    statements are cached per plan without hashing the whole tree per request."""

    roots: tuple[Pick, ...]
