"""Argument checks shared by the public entry points (internal)."""

from __future__ import annotations

import numbers


def check_unit_interval(name: str, value: object) -> float:
    """Return ``value`` as a float after checking that it lies in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` should be a real number in the interval [0.0, 1.0], but got {type(value).__name__}.")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"`{name}` should be in the interval [0.0, 1.0], but got {value} instead.")
    return value
