"""Exceptions with a field path, so every configuration error can name what is wrong."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is wrong. ``field`` names it (e.g. ``methods[2].tau_min``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a registry (loss, model, task, hyperparameter)."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0])


class HyperparameterTypeError(ConfigError, TypeError):
    """A hyperparameter of the wrong type (e.g. a string where a float is expected)."""


class DataNotFoundError(FileNotFoundError):
    """Data for a task is missing; the message says what to install or where to put it."""
