"""Hyperparameter checks shared by every fault; each raises :class:`FaultConfigError`."""

from __future__ import annotations

import math
import numbers

from byzedge.faults.errors import FaultConfigError

__all__ = [
    "check_fraction",
    "check_non_negative_int",
    "check_positive",
    "check_finite",
    "check_non_negative",
]


def _as_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{name} must be a real number, got {value!r}"
        raise FaultConfigError(msg)
    return float(value)


def check_finite(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise if it is not a finite real number."""
    number = _as_real(name, value)
    if not math.isfinite(number):
        msg = f"{name} must be finite, got {value!r}"
        raise FaultConfigError(msg)
    return number


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise unless it is finite and ``> 0``."""
    number = check_finite(name, value)
    if number <= 0.0:
        msg = f"{name} must be > 0, got {value!r}"
        raise FaultConfigError(msg)
    return number


def check_non_negative(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise unless it is finite and ``>= 0``."""
    number = check_finite(name, value)
    if number < 0.0:
        msg = f"{name} must be >= 0, got {value!r}"
        raise FaultConfigError(msg)
    return number


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise unless it lies in ``[0, 1]``."""
    number = check_finite(name, value)
    if not 0.0 <= number <= 1.0:
        msg = f"{name} must be in [0, 1], got {value!r}"
        raise FaultConfigError(msg)
    return number


def check_non_negative_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise unless it is an integer ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = f"{name} must be an integer, got {value!r}"
        raise FaultConfigError(msg)
    number = int(value)
    if number < 0:
        msg = f"{name} must be >= 0, got {value!r}"
        raise FaultConfigError(msg)
    return number
