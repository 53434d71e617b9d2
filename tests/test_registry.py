"""The generic registry and the keyword-signature checker behind every create_* call."""

from __future__ import annotations

from typing import Literal

import pytest

from cist_bench.errors import ConfigError, HyperparameterTypeError, UnknownNameError
from cist_bench.registry import Registry
from cist_bench.signature import check_kwargs, params_of


def test_register_get_and_did_you_mean() -> None:
    reg: Registry[type] = Registry("widget")

    @reg.register("resnet32")
    class A:
        pass

    reg.add("resnet8", int)
    assert reg.get("resnet32") is A and "resnet8" in reg and reg.names() == ["resnet32", "resnet8"]
    with pytest.raises(UnknownNameError, match="did you mean 'resnet32'") as err:
        reg.get("resnet23")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ConfigError)
    with pytest.raises(ValueError, match="duplicate"):
        reg.add("resnet8", float)


def test_lazy_entry_imported_on_first_use() -> None:
    reg: Registry[object] = Registry("thing")
    reg.add("join", "os.path:join")
    import os.path

    assert reg.get("join") is os.path.join


def _fn(*, a: float = 1.0, b: int = 2, c: bool = False, d: float | Literal["auto"] = "auto",
        e: str | None = None) -> None:
    pass


def test_check_kwargs_types() -> None:
    assert check_kwargs("f", _fn, {"a": 3, "d": 2}) == {"a": 3.0, "d": 2.0}
    assert isinstance(check_kwargs("f", _fn, {"a": 3})["a"], float)
    assert check_kwargs("f", _fn, {"d": "auto", "e": None}) == {"d": "auto", "e": None}
    for bad in ({"a": "x"}, {"b": 1.5}, {"b": True}, {"c": 1}, {"d": "automatic"}, {"e": 3}):
        with pytest.raises(HyperparameterTypeError) as err:
            check_kwargs("f", _fn, bad, field_prefix="loss.")
        key = next(iter(bad))
        assert err.value.field == f"loss.{key}" and key in str(err.value)
    with pytest.raises(UnknownNameError, match="did you mean 'a'"):
        check_kwargs("f", _fn, {"aa": 1.0})
    assert list(params_of(_fn)) == ["a", "b", "c", "d", "e"]
