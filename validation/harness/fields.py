"""What each experiment field may hold, declared once per field.

A :class:`Field` reads a value from the text of ``--set KEY=VALUE`` and says which values are
allowed; an experiment's config class lists its fields in ``FIELDS``.  The same declaration
validates every config (:func:`check_fields`, from ``__post_init__``) and every ``--set``
(:func:`parse_overrides`, before anything runs), so an error names the key, the value and what
is allowed::

    --set steps=-5: steps must be an integer >= 1
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

from gpmargin.errors import GpmarginError


@dataclasses.dataclass(frozen=True)
class Field:
    """``parse``: text -> value (raises ``ValueError`` or :class:`GpmarginError`); ``ok``: whether a
    value is allowed; ``allowed``: what is allowed, in words."""

    parse: Callable[[str], Any]
    ok: Callable[[Any], bool]
    allowed: str


def integer(lo: int | None = None, hi: int | None = None) -> Field:
    """An integer in ``[lo, hi]`` (either bound optional)."""
    words = ("an integer" + (f" >= {lo}" if lo is not None else "") + (f" and <= {hi}" if hi is not None else ""))

    def ok(v):
        return (isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)
                and (hi is None or v <= hi))

    return Field(_int, ok, words)


def number(lo: float | None = None, hi: float | None = None, *, above: bool = False, below: bool = False) -> Field:
    """A finite number in ``[lo, hi]``; ``above``/``below`` make the bound strict (``> lo``, ``< hi``)."""
    parts = ["a finite number"]
    if lo is not None:
        parts.append(f"{'>' if above else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if below else '<='} {hi:g}")

    def ok(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if above else v < lo):
            return False
        return hi is None or (v < hi if below else v <= hi)

    return Field(float, ok, " ".join(parts[:2]) + (" and " + parts[2] if len(parts) > 2 else ""))


def choice(*options: str) -> Field:
    """One of ``options``."""
    return Field(str, lambda v: v in options, "one of " + ", ".join(options))


def text() -> Field:
    """Any non-empty text (checked elsewhere, e.g. a dataset name against the registry)."""
    return Field(str, lambda v: isinstance(v, str) and bool(v), "a non-empty name")


def optional(field: Field) -> Field:
    """``field``, or ``none``."""
    return Field(lambda s: None if s.strip().lower() == "none" else field.parse(s),
                 lambda v: v is None or field.ok(v), f"none or {field.allowed}")


def listed(field: Field, *, distinct: bool = False, empty: bool = False) -> Field:
    """A comma list of values of ``field`` (a tuple); at least one unless ``empty``."""
    def parse(s: str):
        s = s.strip()
        if empty and s.lower() in ("", "none"):
            return ()
        return tuple(field.parse(p.strip()) for p in s.split(","))

    def ok(v):
        return (isinstance(v, tuple) and (empty or len(v) > 0) and all(field.ok(x) for x in v)
                and (not distinct or len(set(v)) == len(v)))

    words = f"a comma list of {'distinct ' if distinct else ''}values, each {field.allowed}"
    return Field(parse, ok, words + ("" if empty else " (at least one)"))


def _int(s: str) -> int:
    s = s.strip()
    try:
        return int(s)
    except ValueError:
        f = float(s)  # 1e3 is an integer; 2.5 is not
        if not f.is_integer():
            raise
        return int(f)


def check_fields(config: Any, fields: Mapping[str, Field]) -> None:
    """Raise a one-line :class:`GpmarginError` naming the first field of ``config`` whose value
    ``fields`` does not allow."""
    for name, field in fields.items():
        value = getattr(config, name)
        if not field.ok(value):
            raise GpmarginError(f"{name}={_show(value)}: {name} must be {field.allowed}")


def parse_overrides(assignments: Sequence[str], fields: Mapping[str, Field]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to ``{key: value}``, each parsed and checked by its field."""
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key not in fields:
            raise GpmarginError(f"--set {item!r}: write KEY=VALUE with KEY one of {', '.join(fields)}")
        field = fields[key]
        try:
            parsed = field.parse(value)
        except GpmarginError as exc:  # the parser says what is wrong
            raise GpmarginError(f"--set {key}={value}: {exc}") from None
        except (ValueError, TypeError):
            raise GpmarginError(f"--set {key}={value}: {key} must be {field.allowed}") from None
        if not field.ok(parsed):
            raise GpmarginError(f"--set {key}={value}: {key} must be {field.allowed}")
        changes[key] = parsed
    return changes


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)
