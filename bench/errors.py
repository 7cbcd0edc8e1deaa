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


_OS_HINTS = {
    "ENOSPC": "the disk is full: free space, then rerun the same command (finished work is kept)",
    "EDQUOT": "the disk quota is exceeded: free space, then rerun the same command (finished work is kept)",
    "EROFS": "the file system is read-only: choose a writable location",
    "EACCES": "permission denied: choose a location you can write, or fix its permissions",
    "EPERM": "permission denied: choose a location you can write, or fix its permissions",
    "ENAMETOOLONG": "a name in the path is too long: choose a shorter path",
    "EEXIST": "a file is in the way of a folder: choose another path or move the file",
    "ENOTDIR": "a file is in the way of a folder: choose another path or move the file",
    "EISDIR": "a folder is in the way of a file: choose another path or move the folder",
    "ENOENT": "it does not exist: check the path",
}


def os_error_message(err: OSError, path=None) -> str:
    """One line for an OS error: the path, what the system said, what to do."""
    import errno as errno_mod

    name = errno_mod.errorcode.get(err.errno or 0, "")
    where = path if path is not None else (err.filename or "")
    what = err.strerror or str(err)
    hint = _OS_HINTS.get(name, "check the path and the file system")
    return f"{where}: {what} — {hint}" if where else f"{what} — {hint}"


def user_error_from_os(err: OSError, path=None) -> UserError:
    return UserError(os_error_message(err, path))
