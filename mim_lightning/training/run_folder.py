"""One run folder's lifecycle, shared by ``mim train`` and ``mim sweep``.

A run folder holds ``config.yaml`` (the resolved config), ``status.json`` (running, finished,
failed, interrupted), ``results.json`` (only once finished), ``checkpoints/`` and
``tensorboard/``. Every file is written atomically (temporary file in the same folder, fsync,
rename), so a reader never sees half a file, and an exclusive lock (``.lock``, flock) keeps two
processes from writing one folder at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml

from mim_lightning.errors import MimError

CONFIG, STATUS, RESULTS, LOCK = "config.yaml", "status.json", "results.json", ".lock"
OUTPUTS = ("tensorboard", "checkpoints")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that the file is either the old one or the whole new one:
    a temporary file in the same folder, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of a resolved config (its identity for resume and caching)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


class RunFolder:
    """The files of one run in ``path``; rank zero writes, other ranks only read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _file(self, name: str) -> Path:
        return self.path / name

    def prepare(self) -> None:
        """Create the folder; a clear line when ``path`` or a parent is a regular file."""
        for parent in (self.path, *self.path.parents):
            if parent.exists() and not parent.is_dir():
                raise MimError(f"--out {str(self.path)!r}: {str(parent)!r} is a file, not a folder; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MimError(f"--out {str(self.path)!r}: cannot create the folder ({exc.strerror})") from None

    @contextmanager
    def locked(self):
        """Hold the folder's exclusive lock; another process holding it is refused at once."""
        self.prepare()
        handle = open(self._file(LOCK), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise MimError(f"run folder {str(self.path)!r} is in use by another mim process; wait for it or choose another --out") from None
        try:
            yield self
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def start(self, config: dict, fresh: bool) -> None:
        """Status 'running' with the resolved config; a fresh run first removes what an earlier
        run left (results, TensorBoard files, checkpoints)."""
        self.prepare()
        if fresh:
            self._file(RESULTS).unlink(missing_ok=True)
            for folder in OUTPUTS:
                shutil.rmtree(self._file(folder), ignore_errors=True)
            write_atomic(self._file(CONFIG), yaml.safe_dump(config, sort_keys=False))
        self.set_status("running")

    def set_status(self, status: str, message: str = "", **extra) -> None:
        """status.json: running (with the process id), finished, failed or interrupted, with a
        one-line message."""
        if status == "running":
            extra = {"pid": os.getpid(), **extra}
        write_atomic(self._file(STATUS), json.dumps({"status": status, "message": message, **extra}, indent=2))

    def finish(self, results: dict) -> None:
        write_atomic(self._file(RESULTS), json.dumps(results, indent=2))
        self.set_status("finished")

    def status(self) -> dict:
        """The recorded status ({} when there is none or it is unreadable). A status 'running' whose
        folder lock nobody holds belonged to a process that ended without recording its outcome
        (SIGKILL, the kernel's out-of-memory killer): it is reported as 'stale'."""
        try:
            status = json.loads(self._file(STATUS).read_text())
        except (OSError, ValueError):
            return {}
        if status.get("status") == "running" and not self.in_use():
            status = {**status, "status": "stale",
                      "message": f"the process (pid {status.get('pid', '?')}) ended without recording an outcome "
                                 f"(killed, e.g. out of memory); resume it or start it again"}
        return status

    def in_use(self) -> bool:
        """Whether another process holds the folder's lock."""
        path = self._file(LOCK)
        if not path.exists():
            return False
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def results(self) -> dict | None:
        """The finished run's results, or None."""
        try:
            return json.loads(self._file(RESULTS).read_text())
        except (OSError, ValueError):
            return None

    def config_tree(self) -> dict:
        """The stored config.yaml as a mapping (MimError when it is missing)."""
        path = self._file(CONFIG)
        if not path.is_file():
            raise MimError(f"cannot resume {str(self.path)!r}: it has no {CONFIG} (was it a run folder?)")
        return yaml.safe_load(path.read_text()) or {}
