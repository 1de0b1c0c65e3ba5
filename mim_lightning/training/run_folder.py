"""One run folder's lifecycle, shared by ``mim train`` and ``mim sweep``.

A run folder holds ``config.yaml`` (the resolved config), ``status.json`` (running, finished,
failed, interrupted), ``results.json`` (only once finished), ``checkpoints/`` and
``tensorboard/``. Every file is written atomically (temporary file in the same folder, fsync,
rename), so a reader never sees half a file, and with the permissions the umask allows, as other
tools' files; an exclusive lock (``.lock``, flock) keeps two processes from writing one folder at
once.

mim writes only into folders it owns: a new or empty folder, or a run folder (``config.yaml`` and
``status.json``). A sweep folder (``sweep.yaml``) is never taken for a run folder, and a folder
holding anything else is refused untouched. Starting afresh removes only the files mim writes
(``results.json``, ``checkpoints/last.ckpt``, TensorBoard event files), never a user's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from mim_lightning.errors import Interrupted, MimError, error_line, os_error_line

CONFIG, STATUS, RESULTS, LOCK = "config.yaml", "status.json", "results.json", ".lock"
SWEEP_FILE = "sweep.yaml"  # marks a sweep folder
CHECKPOINT_FILE = Path("checkpoints") / "last.ckpt"
EVENT_FILES = "events.out.tfevents.*"  # TensorBoard event files (training.event_file names them so)
LOCK_GRACE = 0.05  # seconds a claim retries a lock held for an instant (another process's in_use probe)


def file_mode() -> int:
    """The permissions a new file gets under the process's umask (0o666 & ~umask), as ``open`` gives."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def folder_kind(path: Path) -> str:
    """'new' (missing, or empty but for a stale lock), 'run' (config.yaml and status.json), 'sweep'
    (sweep.yaml) or 'other' (a non-empty folder mim did not make, or not a folder)."""
    path = Path(path)
    if not path.exists():
        return "new"
    if not path.is_dir():
        return "other"
    if (path / SWEEP_FILE).is_file():
        return "sweep"
    if (path / CONFIG).is_file() and (path / STATUS).is_file():
        return "run"
    return "new" if {p.name for p in path.iterdir()} <= {LOCK} else "other"


def remove_event_files(folder: Path) -> None:
    """Delete the TensorBoard event files in ``folder`` (nothing else), then the folder if empty."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.glob(EVENT_FILES):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that the file is either the old one or the whole new one:
    a temporary file in the same folder, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())   # mkstemp makes 0600; a colleague may need to read results
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def canonical_json(config: dict) -> str:
    """The canonical JSON of a resolved config: sorted keys, no spaces."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict) -> str:
    """sha256 (hex) of a resolved config's canonical JSON: its identity for resume, and, cut to 16
    digits, a sweep run's folder name (``grid.run_key``)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def new_run_folder(parent: Path) -> "RunFolder":
    """A run folder of its own under ``parent``, named by the local date and time
    (``20261207-193015``, ``-2`` and so on when taken), created at once so that no other run
    takes it; ``parent/latest`` (a symbolic link, left alone when it is anything else) points at it."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MimError(f"cannot create the folder for the run: {os_error_line(exc, parent)}") from None
    stem = time.strftime("%Y%m%d-%H%M%S")
    for attempt in itertools.count(1):
        path = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    latest = parent / "latest"
    if latest.is_symlink() or not latest.exists():
        link = parent / f".latest.{os.getpid()}.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(path.name)
        os.replace(link, latest)
    return RunFolder(path)


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
            raise MimError(f"--out: cannot create the folder: {os_error_line(exc, self.path)}") from None

    @contextmanager
    def locked(self):
        """Hold the folder's exclusive lock; another process holding it is refused within
        ``LOCK_GRACE`` seconds (the time another process's ``in_use`` probe holds it for)."""
        self.prepare()
        handle = open(self._file(LOCK), "a")
        deadline = time.monotonic() + LOCK_GRACE
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    raise self.busy() from None
                time.sleep(0.005)
        try:
            yield self
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def check_new_run(self, overwrite: bool = False) -> None:
        """Refuse, touching nothing, to start a run in a folder mim does not own (not empty, not a
        run folder), in a sweep folder, or over a run whose results or checkpoint would be lost
        (finished, or interrupted with a checkpoint) unless ``overwrite``."""
        where, kind = f"--out {str(self.path)!r}", folder_kind(self.path)
        if kind == "sweep":
            raise MimError(f"{where} is a mim sweep folder ({SWEEP_FILE}), not a run folder; give the run its own --out")
        if kind == "other":
            what = "is not a folder" if not self.path.is_dir() else "is not empty and is not a mim run folder (no config.yaml and status.json)"
            raise MimError(f"{where} {what}; mim writes only into new, empty or mim run folders: choose another --out")
        if kind == "run" and self.in_use():
            raise self.busy()
        if kind == "run" and not overwrite:
            if self._file(RESULTS).exists() or self.status().get("status") == "finished":
                raise MimError(f"{where} holds a finished run (results.json); choose a new --out, or pass --overwrite to replace it")
            if self._file(CHECKPOINT_FILE).exists():
                raise MimError(f"{where} holds an unfinished run with a checkpoint: continue it with "
                               f"mim train --resume {str(self.path)!r}, or pass --overwrite to start again")

    def start(self, config: dict, fresh: bool) -> None:
        """Status 'running' with the resolved config; a fresh run first removes the files an
        earlier run wrote here (results.json, its checkpoint, TensorBoard event files) and only
        those."""
        self.prepare()
        self.set_status("running")   # first: a folder whose clearing fails never reads as finished
        if fresh:
            self.clear_outputs()
            write_atomic(self._file(CONFIG), yaml.safe_dump(config, sort_keys=False))

    @contextmanager
    def attempt(self, config: dict, fresh: bool, **extra):
        """One attempt at the run, for a caller that holds ``locked()``: status 'running' with the
        config (``start``; ``extra`` recorded with it), then how the attempt ends. A stop (a signal
        at a step boundary, Ctrl-C or a second signal) is recorded as 'interrupted', any other
        error as 'failed' with ``errors.error_line``, both with ``extra`` and re-raised; a finished
        attempt calls ``finish`` or records a final failure itself."""
        self.start(config, fresh=fresh)
        if extra:
            self.set_status("running", **extra)
        try:
            yield self
        except Interrupted as exc:
            self.set_status("interrupted", str(exc), **extra)
            raise
        except KeyboardInterrupt:
            self.set_status("interrupted", "stopped at once by a second signal (or Ctrl-C outside a step)", **extra)
            raise
        except BaseException as exc:
            self.set_status("failed", error_line(exc, self.path), **extra)
            raise

    def clear_outputs(self) -> None:
        """Delete what a run writes besides config.yaml and status.json: results.json,
        checkpoints/last.ckpt and the event files in tensorboard/ (empty folders go too)."""
        self._file(RESULTS).unlink(missing_ok=True)
        self._file(CHECKPOINT_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._file(CHECKPOINT_FILE).parent.rmdir()
        remove_event_files(self._file("tensorboard"))

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

    def busy(self) -> MimError:
        """The refusal when another process holds the folder's lock."""
        return MimError(f"run folder {str(self.path)!r} is in use by another mim process; wait for it or choose another --out")

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

    def config_dump(self) -> dict | None:
        """The stored config.yaml as a mapping, None when it is missing or unreadable."""
        try:
            return yaml.safe_load(self._file(CONFIG).read_text())
        except (OSError, yaml.YAMLError):
            return None

    def config_tree(self) -> dict:
        """The stored config.yaml as a mapping (MimError when it is missing)."""
        path = self._file(CONFIG)
        if not path.is_file():
            raise MimError(f"cannot resume {str(self.path)!r}: it has no {CONFIG} (was it a run folder?)")
        return yaml.safe_load(path.read_text()) or {}
