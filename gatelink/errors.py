"""Errors gatelink raises, each mapped to one documented exit code.

The CLI turns these into a single line on stderr; library callers catch them by type.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_INTERNAL = 70


class GatelinkError(Exception):
    """Base of every error gatelink raises on purpose."""

    exit_code = EXIT_INTERNAL


class UsageError(GatelinkError):
    """Wrong options or arguments (exit 2)."""

    exit_code = EXIT_USAGE


class InputError(GatelinkError):
    """An input file cannot be read or is malformed (exit 3).

    ``path`` names the file; the message says what is wrong with it.
    """

    exit_code = EXIT_INPUT

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
