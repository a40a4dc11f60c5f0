"""The JSON form of one archive's outcome (status, guarded studies, reports, orders) for the shared store.

The per-session study cache and a search run's progress live in the session store, so that any
process can read what another process's search found. Only outcomes that already passed the
wrong-patient guard are written; reading one back re-creates the same typed objects.

The codec follows the dataclasses' own type hints, so a field added to `Study`, `Report`,
`ArchiveStatus` … travels through the store without a second list of fields to keep in step
(a hand-written one silently dropped fields added later: `tests/test_outcome_json.py` fills every
field and checks the round trip).
"""

from __future__ import annotations

import dataclasses
import types
from datetime import date, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from .federation import ArchiveOutcome

T = TypeVar("T")


_SCALARS = (str, int, float, type(None))  # bool is an int


_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _field_names(cls: type) -> tuple[str, ...] | None:
    """A dataclass's field names (None for any other class): looked up once per class."""
    try:
        return _FIELD_NAMES[cls]
    except KeyError:
        names = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
        return _FIELD_NAMES.setdefault(cls, names)


def encode(value: Any) -> Any:
    """Plain JSON for a dataclass tree (datetimes as ISO 8601, tuples and sets as lists)."""
    if isinstance(value, _SCALARS):  # most values: answered before any other check
        return value
    names = None if isinstance(value, type) else _field_names(type(value))
    if names is not None:
        return {name: encode(getattr(value, name)) for name in names}
    if isinstance(value, date):  # datetime included
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(encode(v) for v in value)
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def decode(tp: Any, data: Any) -> Any:
    """The inverse of `encode` for a value of type `tp` (a dataclass or a typing form)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any or data is None or origin is Literal:
        return data
    if origin in (Union, types.UnionType):
        return decode(next(a for a in args if a is not type(None)), data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        # Fields a newer process wrote that this one does not know are ignored; missing ones default.
        return tp(**{name: decode(hints[name], value) for name, value in data.items() if name in known})
    if tp is datetime:
        return datetime.fromisoformat(data)
    if tp is date:
        return date.fromisoformat(data)
    if origin is tuple:
        return tuple(decode(args[0], v) for v in data)
    if origin is list:
        return [decode(args[0], v) for v in data]
    if origin in (set, frozenset):
        return origin(decode(args[0], v) for v in data)
    if origin is dict:
        return {k: decode(args[1], v) for k, v in data.items()}
    return data


def outcome_to_json(outcome: ArchiveOutcome) -> dict[str, Any]:
    return encode(outcome)


def outcome_of(cls: type[T], data: dict[str, Any]) -> T:
    """An outcome record read back as `cls` (federation.ArchiveOutcome)."""
    return decode(cls, data)
