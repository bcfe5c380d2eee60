"""Type checks for the config dataclasses (recipes, checkpoint configs): a value of the wrong type gets one error
that names the field, what was given and what was expected, instead of a traceback later."""

from __future__ import annotations

import types
import typing
from dataclasses import fields


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
