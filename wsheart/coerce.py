"""
Parsers for option values shared by the daemon (C{twistd wsheart}) and the
C{wsheart} command: each turns a string into a number or raises a
L{usage.UsageError} that names the option.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from twisted.python import usage

T = TypeVar("T")


class Coercer(Generic[T]):
    """
    An option value parser with the line C{--help} shows after the
    option's text (twisted.python.usage reads C{coerceDoc}).
    """

    def __init__(self, parse: Callable[[str], T], doc: str) -> None:
        self._parse = parse
        self.coerceDoc = doc

    def __call__(self, value: str) -> T:
        return self._parse(value)


def _number(name: str, allow_zero: bool, unit: str, doc: str) -> Callable[[str], float]:
    """
    A finite number, positive (or zero with C{allow_zero}); C{unit} names
    what it counts in errors ("seconds", "per second", ""), C{doc} in help.
    """
    any_number, wanted = {
        "seconds": ("a number of seconds", "zero or more seconds" if allow_zero else "a positive number of seconds"),
        "per second": ("a number per second", "zero or more per second" if allow_zero else "a positive number per second"),
        "": ("a number", "zero or more" if allow_zero else "a positive number"),
    }[unit]

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be {any_number}, got {value!r}")
        if not (number >= 0 if allow_zero else number > 0) or number == float("inf"):
            raise usage.UsageError(f"--{name} must be {wanted}, got {value!r}")
        return number

    return Coercer(parse, f"{doc}, {'zero or more' if allow_zero else 'a positive number'}.")


def positive_float(name: str) -> Callable[[str], float]:
    """
    Seconds, more than zero.
    """
    return _number(name, False, "seconds", "Seconds")


def non_negative_float(name: str) -> Callable[[str], float]:
    """
    Seconds, zero or more.
    """
    return _number(name, True, "seconds", "Seconds")


def positive_rate(name: str) -> Callable[[str], float]:
    """
    So many per second, more than zero.
    """
    return _number(name, False, "per second", "Per second")


def non_negative_rate(name: str) -> Callable[[str], float]:
    """
    So many per second, zero or more.
    """
    return _number(name, True, "per second", "Per second")


def positive_factor(name: str) -> Callable[[str], float]:
    """
    A plain number (a multiplier), more than zero.
    """
    return _number(name, False, "", "A number")


def _whole(name: str, minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a whole number, got {value!r}")
        if number < minimum:
            raise usage.UsageError(f"--{name} must be at least {minimum}, got {value!r}")
        return number

    return Coercer(parse, f"A whole number, at least {minimum}.")


def positive_int(name: str) -> Callable[[str], int]:
    return _whole(name, 1)


def non_negative_int(name: str) -> Callable[[str], int]:
    return _whole(name, 0)
