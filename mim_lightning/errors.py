"""The exception types a run ends with (MimError, the one the CLI turns into a one-line message;
RunFailed; Interrupted) and the one place where any error becomes such a line."""

import errno
import os
from pathlib import Path


class MimError(Exception):
    """A user-facing error: its message names the culprit and what is allowed."""


class RunFailed(MimError):
    """A run whose training failed on its own terms (weights diverged or vanished): training it
    again with the same config would fail the same way."""


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}   # the exit status of a run stopped by each signal


class Interrupted(Exception):
    """The run stopped on a signal; ``step`` is the last step saved in the checkpoint (None when
    the stop came before any step of the stage, so a resume repeats that part)."""

    def __init__(self, signal_name: str, stage: str, step: int | None, path: Path):
        where = f"in {stage} after step {step}; checkpoint saved to {path}" if step is not None else f"during {stage}"
        super().__init__(f"stopped by {signal_name} {where}")
        self.signal_name, self.stage, self.step, self.path = signal_name, stage, step, path

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal_name, 143)


def error_line(exc: BaseException, path=None) -> str:
    """One line, without the exception's class name, for any error: a MimError's own message; out
    of memory with advice; an OSError by ``os_error_line`` (``path``: the folder the command writes,
    named when the error names no file); anything else its first line of text and where to see the
    details."""
    if isinstance(exc, MimError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text.lower():
        return ("out of memory: lower data.d, data.alpha, data.alpha2 or model.width, or set data.chunk_size "
                "to bound the activations of a full-batch pass")
    if isinstance(exc, OSError):
        return os_error_line(exc, path)
    return f"mim stopped on an error it does not explain{f' ({text})' if text else ''}; run 'mim --debug ...' for the details"


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
