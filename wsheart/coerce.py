"""
Parsers for option values shared by the daemon (C{twistd wsheart}) and the
C{wsheart} command: each turns a string into a number or raises a
L{usage.UsageError} that names the option.
"""

from __future__ import annotations

from typing import Callable

from twisted.python import usage


def _seconds(name: str, allow_zero: bool) -> Callable[[str], float]:
    kind = "zero or more" if allow_zero else "a positive number of"

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds, got {value!r}")
        if not (number >= 0 if allow_zero else number > 0) or number == float("inf"):
            raise usage.UsageError(f"--{name} must be {kind} seconds, got {value!r}")
        return number

    parse.coerceDoc = "Seconds, zero or more." if allow_zero else "Seconds, a positive number."  # type: ignore[attr-defined]
    return parse


def positive_float(name: str) -> Callable[[str], float]:
    return _seconds(name, allow_zero=False)


def non_negative_float(name: str) -> Callable[[str], float]:
    return _seconds(name, allow_zero=True)


def _whole(name: str, minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a whole number, got {value!r}")
        if number < minimum:
            raise usage.UsageError(f"--{name} must be at least {minimum}, got {value!r}")
        return number

    parse.coerceDoc = f"A whole number, at least {minimum}."  # type: ignore[attr-defined]
    return parse


def positive_int(name: str) -> Callable[[str], int]:
    return _whole(name, 1)


def non_negative_int(name: str) -> Callable[[str], int]:
    return _whole(name, 0)
