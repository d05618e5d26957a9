"""Helpers shared by the daemon subcommands."""

from __future__ import annotations

import sys

__all__ = ["fail"]


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``byzedge COMMAND: message`` on stderr and return ``code``."""
    print(f"byzedge {command}: {message}", file=sys.stderr)
    return code
