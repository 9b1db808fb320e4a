"""User-facing errors.

Every mistake a user can make (bad config key, missing file, wrong shape, out-of-range number,
unknown model) raises :class:`PrunekitError`. The CLI prints its message on one line and exits
with status 2; anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrunekitError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""

    exit_code = 2


class UnsupportedGraphError(PrunekitError):
    """The model contains a pattern that the channel dependency graph cannot prune safely."""


class VerificationError(PrunekitError):
    """A transformed model does not reproduce the reference outputs."""


def closest(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> PrunekitError:
    """Build the standard 'unknown X' error that lists the valid choices."""
    choices = sorted(choices)
    return PrunekitError(f"unknown {kind} '{name}'{closest(name, choices)}; valid: {', '.join(choices)}")
