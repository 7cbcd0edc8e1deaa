"""User-facing errors: one line, says what is wrong and what to do; the CLI exits with code 2."""
from __future__ import annotations

import difflib


class UserError(Exception):
    """An error caused by the user's input (path, name, file contents).

    The CLI prints ``str(err)`` as a single line and exits with status 2, never a traceback.
    """

    exit_code = 2


def did_you_mean(name: str, choices) -> str:
    """Return ' (did you mean X?) available: a, b, c' for an unknown ``name``."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"{hint}; available: {', '.join(choices)}"


class InstanceError(Exception):
    """A failure that concerns one instance only (corrupt image, wrong mask size, NaN loss).

    The runner records the instance as failed with this message and goes on with the run.
    """
