"""The exception tree of the fault injector.

::

    FaultError
    └── FaultConfigError   (also a ValueError) an unknown fault name or a bad parameter

Every error names the offending fault or parameter and the value it was given, so a
misconfigured fault plan fails at start-up with a one-line message.
"""

from __future__ import annotations

__all__ = ["FaultConfigError", "FaultError"]


class FaultError(Exception):
    """Base class of every error raised by the fault injector."""


class FaultConfigError(FaultError, ValueError):
    """An unknown fault name, an unknown parameter or an out-of-range parameter value."""
