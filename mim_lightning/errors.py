"""The one exception type the CLI turns into a one-line message, and the one place where an
operating-system error (OSError) becomes such a line."""

import errno
import os
from pathlib import Path


class MimError(Exception):
    """A user-facing error: its message names the culprit and what is allowed."""


class RunFailed(MimError):
    """A run whose training failed on its own terms (weights diverged or vanished): training it
    again with the same config would fail the same way."""


def os_error_line(exc: OSError, path=None) -> str:
    """One line for an OSError, in plain words: the path it concerns (``exc.filename``, else
    ``path``, else none), what went wrong and what to do. The exception's class and errno stay
    out of it (``mim --debug`` shows them)."""
    name = exc.filename if exc.filename is not None else path
    name = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else None
    code = exc.errno
    blocking = _first(name, os.path.isfile)  # a file where a folder should be: the path or a parent
    dangling = _first(name, lambda p: os.path.islink(p) and not os.path.exists(p))
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full (no space left on the device); free disk space or write elsewhere, then run the command again"
    elif code == errno.EROFS:
        what = "it is on a read-only file system; choose a path on a writable disk"
    elif code == errno.EISDIR:
        what = "it is a folder where mim needs a file; remove or rename that folder"
    elif code in (errno.ENOTDIR, errno.EEXIST) and blocking is not None:
        what = f"{_which(blocking, name)} a file where a folder should be; move that file away or choose another path"
    elif code == errno.ENAMETOOLONG:
        what = f"{_too_long(name)}; choose a shorter path"
    elif code in (errno.EACCES, errno.EPERM):
        what = "permission denied; give yourself write access to it or choose another path"
    elif code in (errno.ENOENT, errno.EEXIST) and dangling is not None:
        what = (f"{_which(dangling, name)} a symbolic link to {_cut(os.readlink(dangling))!r}, which does not exist;"
                " remove the link or create its target")
    elif code == errno.ENOENT:
        what = "no such file or folder; check the path"
    else:
        reason = (exc.strerror or str(exc) or "an operating-system error").rstrip(".")
        what = f"{reason[0].lower()}{reason[1:]} (run 'mim --debug ...' for the details)"
    return f"{_cut(name)!r}: {what}" if name is not None else what


def _first(name: str | None, test) -> str | None:
    """The first of the path's parents (from the root), or the path itself, that passes ``test``."""
    if name is None:
        return None
    path = Path(name)
    return next((str(p) for p in reversed([path, *path.parents]) if test(p)), None)


def _which(part: str, name: str) -> str:
    """'it is' when ``part`` is the path itself, else "'<part>' is"."""
    return "it is" if Path(part) == Path(name) else f"{_cut(part)!r} is"


def _cut(text: str, limit: int = 80) -> str:
    """``text`` at most ``limit`` characters: its start and end around '...'."""
    return text if len(text) <= limit else f"{text[:limit // 2 - 2]}...{text[-(limit // 2 - 1):]}"


def _too_long(name: str | None) -> str:
    """Why a path is too long: its longest name in bytes (file systems allow 255), else its whole length."""
    if name is None:
        return "a file name is too long for the file system"
    raw = os.fsencode(name)
    longest = max(len(part) for part in raw.split(b"/"))
    if longest > 255:
        return f"a name in it is {longest} bytes long, and file systems allow at most 255"
    return f"the path is {len(raw)} bytes long, more than the file system allows"
