"""The library's own error types: what a command line reports as a user error.

:class:`InputError` subclasses :class:`ValueError`, so code that catches ``ValueError``
keeps working.
"""

from __future__ import annotations


class CleverjaxError(Exception):
    """Base of the errors cleverjax raises on purpose (never for an internal bug)."""


class InputError(CleverjaxError, ValueError):
    """An argument, file, row or column that cleverjax cannot use; the message names it,
    with what was expected and what was received."""
