"""Type and range checks for the config dataclasses (recipes, checkpoint configs): a value of the wrong type, or a
number out of its range, gets one error that names the field, what was given and a valid example, instead of a
traceback (or a run on a negative learning rate) later."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields


def _matches(value, expected) -> bool:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is typing.Any:
        return True
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # anything else (e.g. a torch.device) is the code's, not a user's


def _describe(expected) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(expected))
    if expected is type(None):
        return "null"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a text", list: "a list", dict: "a mapping"}
    return names.get(origin or expected, getattr(expected, "__name__", str(expected)))


def check_types(instance, error: type[Exception], where: str = "") -> None:
    """Raise ``error`` naming the first field of the dataclass ``instance`` whose value has the wrong type."""
    hints = typing.get_type_hints(type(instance))
    for field in fields(instance):
        value = getattr(instance, field.name)
        if not _matches(value, hints[field.name]):
            raise error(f"{where}{field.name} must be {_describe(hints[field.name])}, got {value!r} "
                        f"({type(value).__name__}); e.g. {field.name}: {_example(hints[field.name])}")


def _example(expected) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return _example(next(o for o in typing.get_args(expected) if o is not type(None)))
    return {bool: "true", int: "8", float: "0.001", str: "name", list: "[...]", dict: "{...}"}.get(origin or expected, "...")


def check_known_keys(data: dict, cls, error: type[Exception], what: str = "", hint: str = "") -> None:
    """Raise ``error`` naming the keys of ``data`` that are not fields of the dataclass ``cls``, and the known ones
    (what ``cls(**data)`` would otherwise report as an ``__init__`` TypeError)."""
    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"unknown {what}keys {unknown} (known: {known}){hint}")


# ------------------------------------------------------------------------------------------------ ranges
@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: finite, within ``[low, high]`` (``low_open``/``high_open``: excluded);
    ``example`` is a valid value the error shows."""

    low: float | None = None
    high: float | None = None
    example: str = ""
    low_open: bool = False
    high_open: bool = False

    def contains(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"within {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def at_least(low: float, example) -> Range:
    return Range(low, example=str(example))


def above(low: float, example) -> Range:
    return Range(low, example=str(example), low_open=True)


def within(low: float, high: float, example, high_open: bool = False) -> Range:
    return Range(low, high, str(example), high_open=high_open)


def check_ranges(values, table: dict[str, Range], error: type[Exception], where: str = "") -> None:
    """Raise ``error`` naming the first field in ``table`` whose value is out of its range, the value given and a
    valid example. ``values``: a dataclass instance or a mapping; None (an optional field left out) and absent
    keys pass; a list is checked item by item. Run after ``check_types``: the values are numbers."""
    for name, allowed in table.items():
        value = values.get(name) if isinstance(values, dict) else getattr(values, name)
        items = value if isinstance(value, (list, tuple)) else [value]
        if value is None or all(item is None or allowed.contains(item) for item in items):
            continue
        each = " each" if isinstance(value, (list, tuple)) else ""
        raise error(f"{where}{name} must{each} be {allowed.describe()}, got {value!r}; e.g. {name}: "
                    f"{allowed.example}")
