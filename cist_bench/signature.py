"""Check keyword arguments against a callable's typed signature before calling it.

Used wherever user configuration becomes a constructor call (losses, tasks, models), so that a
misspelt key or a wrong type is refused with a message naming it instead of being ignored.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cist_bench.errors import HyperparameterTypeError, UnknownNameError
from cist_bench.registry import did_you_mean

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One keyword parameter: its name, annotation and default (``inspect.Parameter.empty``)."""

    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def type_name(self) -> str:
        return type_name(self.annotation)


def params_of(fn: Callable[..., Any]) -> dict[str, Param]:
    """The keyword parameters of ``fn`` (a class means its ``__init__``), with resolved types."""
    target = fn.__init__ if inspect.isclass(fn) else fn  # type: ignore[misc]
    hints = typing.get_type_hints(target)
    out: dict[str, Param] = {}
    for p in inspect.signature(target).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = Param(p.name, hints.get(p.name, Any), p.default)
    return out


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` (int → float only), or raise TypeError."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        if value in typing.get_args(annotation) and not isinstance(value, bool):
            return value
        raise TypeError
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            try:
                return coerce(value, arm)
            except TypeError:
                continue
        raise TypeError
    if annotation is type(None):
        if value is None:
            return None
        raise TypeError
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if annotation in (bool, str):
        if isinstance(value, annotation):
            return value
        raise TypeError
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, (list, tuple)):
            return annotation(value) if annotation in (list, tuple) else origin(value)
        raise TypeError
    if origin is dict or annotation is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise TypeError
    return value


def check_kwargs(owner: str, fn: Callable[..., Any], kwargs: Mapping[str, Any],
                 field_prefix: str = "") -> dict[str, Any]:
    """Validate ``kwargs`` against ``fn``'s signature: names exist and types match.

    Returns the kwargs with ints widened to floats where a float is expected. Raises
    :class:`UnknownNameError` for an unknown name (with a did-you-mean) and
    :class:`HyperparameterTypeError` for a wrong type; both name the field.
    """
    return check_params(owner, params_of(fn), kwargs, field_prefix)


def check_params(owner: str, params: Mapping[str, Param], kwargs: Mapping[str, Any],
                 field_prefix: str = "") -> dict[str, Any]:
    """:func:`check_kwargs` against declared ``params`` (for callables taking ``**kwargs`` that
    declare their options some other way)."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        field = f"{field_prefix}{key}"
        if key not in params:
            raise UnknownNameError(
                f"{owner} has no parameter {key!r}: {did_you_mean(key, list(params))}", field=field
            )
        try:
            out[key] = coerce(value, params[key].annotation)
        except TypeError:
            raise HyperparameterTypeError(
                f"{owner}: {key} must be {params[key].type_name()}, got {value!r} "
                f"({type(value).__name__})",
                field=field,
            ) from None
    return out
