"""
Parsers for option values shared by the daemon (C{twistd wsheart}) and the
C{wsheart} command: each turns a string into a number or raises a
L{usage.UsageError} that names the option.
"""

from __future__ import annotations

from typing import Callable

from twisted.python import usage


def positive_float(name: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds, got {value!r}")
        if not number > 0 or number == float("inf"):
            raise usage.UsageError(f"--{name} must be a positive number of seconds, got {value!r}")
        return number

    parse.coerceDoc = "Seconds, a positive number."  # type: ignore[attr-defined]
    return parse


def positive_int(name: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a whole number, got {value!r}")
        if number < 1:
            raise usage.UsageError(f"--{name} must be at least 1, got {value!r}")
        return number

    parse.coerceDoc = "A whole number, at least 1."  # type: ignore[attr-defined]
    return parse


def non_negative_float(name: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds, got {value!r}")
        if not number >= 0 or number == float("inf"):
            raise usage.UsageError(f"--{name} must be zero or more seconds, got {value!r}")
        return number

    parse.coerceDoc = "Seconds, zero or more."  # type: ignore[attr-defined]
    return parse
