"""Checkpoints (written atomically, loaded as plain data) and clean stops on SIGINT / SIGTERM.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, saved at a step boundary
to ``OUT/checkpoints/last.ckpt`` by ``write_atomic`` (temporary file in the same folder, fsync,
rename: a crash or a full disk never leaves a torn or empty file, the previous one is kept) and
loaded with ``torch.load(weights_only=True)``, which refuses anything but plain data: a crafted
file cannot run code. Before loading, the zip archive's declared sizes are bounded (a small
compressed file cannot make the load allocate gigabytes); after, ``validate_checkpoint`` checks
every field against the run before anything is loaded into a module.
"""

from __future__ import annotations

import io
import signal
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mim_lightning.errors import Interrupted, MimError
from mim_lightning.training.run_folder import write_atomic

CHECKPOINT = Path("checkpoints") / "last.ckpt"
FIELDS = {"stage", "step", "config_hash", "seeds", "network", "optimizer", "shift", "history", "stage1"}
OPTIONAL_FIELDS = {"last_loss", "subspace_basis"}   # the last objective (K,); stage 1's tracked blocks (2, K, d, b)
ROW_KEYS = {"step", "subspace_mass", "principal_cosines", "weight_norm", "loss"}
OUTPUT_KEYS = {"history", "timings", "spectral", "spectral_uncentred", "unbounded_fraction", "direction_mass"}
ORDERS = {"magnitude", "largest", "smallest"}
UNIT = 1 + 1e-3   # a cosine or a mass: at most 1, up to float32 rounding


class StopRequest:
    """While entered, SIGINT and SIGTERM set a flag that the training loop reads at step
    boundaries (and data generation between blocks); a second signal interrupts at once. Leaving
    restores the handlers found on entry. Outside the main thread signals cannot be caught, and
    the object only holds the flag."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def check(self, stage: str) -> None:
        """Raise Interrupted (nothing saved) if a stop was requested."""
        if self.signal_name is not None:
            raise Interrupted(self.signal_name, stage, None, CHECKPOINT)


def save_checkpoint(path: Path, state: dict) -> None:
    """Serialise ``state`` and write it atomically; a write error keeps the previous checkpoint
    and stops the run with one line."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise MimError(f"could not write the checkpoint {str(path)!r} ({exc.strerror or exc}); "
                       f"the previous checkpoint is kept: free disk space and resume") from None


def load_checkpoint(path: Path, max_bytes: int) -> dict:
    """A checkpoint written by ``save_checkpoint``, as plain data (no code runs while loading);
    refused unread when it is not a zip archive (what torch.save writes) or its entries would
    unpack to more than ``max_bytes``."""
    if not path.is_file():
        raise MimError(f"cannot resume: no checkpoint at {str(path)!r} (the run stopped before its first checkpoint: start it again)")
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise MimError(f"cannot resume: {str(path)!r} is not a mim checkpoint (not the zip archive torch.save writes: "
                       f"{exc}) and was not loaded; start the run again with a new --out") from None
    if size > max_bytes:
        raise MimError(f"cannot resume: {str(path)!r} would unpack to {size / 2**20:.1f} MiB, more than a checkpoint of "
                       f"this run holds or free memory allows ({max_bytes / 2**20:.1f} MiB); it was not loaded: "
                       f"start the run again with a new --out")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn, foreign or malicious file
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise MimError(f"cannot resume: {str(path)!r} is not a plain mim checkpoint and was not loaded ({first})") from None
    if not isinstance(state, dict) or "stage" not in state:
        raise MimError(f"cannot resume: {str(path)!r} is not a mim checkpoint")
    return state


@dataclass
class CheckpointSpec:
    """What a checkpoint of one run holds: its config hash and seeds, r, each stage's last step,
    the most stage-1 history rows, a freshly built network's state_dict (meta tensors will do: only
    shapes and dtypes are read) and each stage's freshly built optimiser (None: the stage has none)."""

    config_hash: str
    seeds: list[int]
    r: int
    last_steps: dict[str, int]
    max_rows: int
    network: dict[str, torch.Tensor]
    optimizers: dict[str, torch.optim.Optimizer | None]

    def max_bytes(self) -> int:
        """A generous bound on what such a checkpoint unpacks to: 16 times its network twice over
        (the network and an optimiser's state; LBFGS's 20 pairs of second-layer copies are less)
        and its numbers (the history twice, the stage-1 outputs), 8 bytes each, plus 1 MiB."""
        network = sum(t.numel() * t.element_size() for t in self.network.values())
        numbers = (2 * self.max_rows + 8) * len(self.seeds) * (self.r + 3)
        return 16 * (2 * network + 8 * numbers) + 2**20


class _Invalid(Exception):
    """A checkpoint field that fails its check: (field, what is wrong, what to do)."""


def validate_checkpoint(state: dict, spec: CheckpointSpec, path: Path) -> None:
    """Refuse, with one line naming the field, a checkpoint that this run could not have written:
    missing or unknown fields, another config or seeds, an unknown stage, a step outside
    [1, the stage's last step], tensors or optimiser state that differ from the run's in keys,
    shapes or dtypes, or history and stage-1 outputs of the wrong keys, lengths or ranges."""
    try:
        _check_fields(state, spec)
    except _Invalid as exc:
        field, problem, advice = exc.args
        raise MimError(f"cannot resume: the checkpoint {str(path)!r} is not used: field {field!r} {problem}; "
                       f"{advice}") from None


NEW_RUN = "this run did not write it: start the run again with a new --out"
ANOTHER_CONFIG = "a resume runs exactly the interrupted run: restore config.yaml or start a new run with --out"


def _require(ok: bool, field: str, problem: str, advice: str = NEW_RUN) -> None:
    """Raise _Invalid(field, problem, advice) unless ``ok``."""
    if not ok:
        raise _Invalid(field, problem, advice)


def _check_fields(state: dict, spec: CheckpointSpec) -> None:
    """``validate_checkpoint``'s checks, in order; the first that fails raises _Invalid."""
    for name in sorted(FIELDS):
        _require(name in state, name, "is missing")
    for name in state:
        _require(name in FIELDS | OPTIONAL_FIELDS, str(name)[:40], "is not a field of a mim checkpoint")
    _require(_same(state["config_hash"], spec.config_hash), "config_hash",
             "was written for another configuration than config.yaml now holds", ANOTHER_CONFIG)
    _require(_same(state["seeds"], spec.seeds), "seeds", f"is not this run's seeds {spec.seeds}", ANOTHER_CONFIG)
    stage, step = state["stage"], state["step"]
    _require(isinstance(stage, str) and stage in spec.last_steps, "stage",
             f"is {_show(stage)}; allowed: {', '.join(spec.last_steps)}")
    last = spec.last_steps[stage]
    _require(isinstance(step, int) and _is_array(step, (), 1, last), "step",
             f"is {_show(step)}; allowed: an integer from 1 to {last} (the last step of {stage})")
    _check_tensors(state["network"], spec.network)
    _check_optimizer(state["optimizer"], spec.optimizers[stage])
    K, shift = len(spec.seeds), state["shift"]
    _require(isinstance(shift, torch.Tensor) and shift.dtype.is_floating_point and shift.dim() == 1
             and shift.shape[0] in ((K,) if stage == "stage1" else (0, K)), "shift",
             f"must be a 1-D float tensor of length {K}" + ("" if stage == "stage1" else " (or empty)"))
    loss = state.get("last_loss")
    _require(loss is None or isinstance(loss, torch.Tensor) and loss.dtype.is_floating_point
             and loss.shape == (K,), "last_loss", f"must be None or a float tensor of length {K}")
    _, m, d = spec.network["W"].shape
    basis = state.get("subspace_basis")
    _require(basis is None or isinstance(basis, torch.Tensor) and basis.dtype.is_floating_point and basis.dim() == 4
             and basis.shape[:3] == (2, K, d) and spec.r <= basis.shape[3] <= min(m, d), "subspace_basis",
             f"must be None or a float tensor (2, {K}, {d}, b) with {spec.r} <= b <= {min(m, d)}")
    _check_history(state["history"], "history", spec, step if stage == "stage1" else spec.last_steps["stage1"])
    outputs = state["stage1"]
    if stage == "stage1":
        _require(isinstance(outputs, dict) and not outputs, "stage1", "must be empty before stage 1 has ended")
        return
    _require(isinstance(outputs, dict) and set(outputs) == OUTPUT_KEYS, "stage1",
             f"must hold exactly {', '.join(sorted(OUTPUT_KEYS))}")
    _check_history(outputs["history"], "stage1.history", spec, spec.last_steps["stage1"])
    _require(len(outputs["history"]) > 0, "stage1.history", "is empty")
    timings = outputs["timings"]
    _require(isinstance(timings, dict) and all(isinstance(k, str) and _is_array(v, (), 0) for k, v in timings.items()),
             "stage1.timings", "must map names to seconds >= 0")
    for name in ("spectral", "spectral_uncentred"):
        cosines = outputs[name]
        _require(isinstance(cosines, dict) and set(cosines) <= ORDERS
                 and all(_is_array(v, (K, spec.r), 0, UNIT) for v in cosines.values()), f"stage1.{name}",
                 f"must map orders ({', '.join(sorted(ORDERS))}) to {K} x {spec.r} cosines in [0, 1]")
    _require(_is_array(outputs["unbounded_fraction"], (K,), 0, 1), "stage1.unbounded_fraction",
             f"must be {K} fractions in [0, 1]")
    _require(_is_array(outputs["direction_mass"], (K, spec.r), 0, UNIT), "stage1.direction_mass",
             f"must be {K} x {spec.r} masses in [0, 1]")


def _check_tensors(network, expected: dict[str, torch.Tensor]) -> None:
    """The network's tensors: the keys, shapes and dtypes of a freshly built network."""
    _require(isinstance(network, dict) and set(network) == set(expected), "network",
             f"must hold exactly the tensors {', '.join(sorted(expected))}")
    for name, fresh in expected.items():
        tensor = network[name]
        ok = isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided
        _require(ok and tensor.shape == fresh.shape and tensor.dtype == fresh.dtype, f"network.{name}",
                 f"is {_describe(tensor)}; this run's network has {tuple(fresh.shape)} {fresh.dtype}")


def _check_optimizer(saved, fresh: torch.optim.Optimizer | None) -> None:
    """The optimiser's state: None for a stage without one; else the fresh optimiser's parameter
    groups (hyperparameters included), and per parameter numbers and float tensors with one element
    or as many as the parameter."""
    if fresh is None:
        _require(saved is None, "optimizer", "must be None (this stage has no optimiser)")
        return
    _require(isinstance(saved, dict) and set(saved) == {"state", "param_groups"}, "optimizer",
             "must hold exactly state and param_groups")
    _require(_same(saved["param_groups"], fresh.state_dict()["param_groups"]), "optimizer.param_groups",
             "differ from this run's optimiser (its parameters or hyperparameters)")
    sizes = [p.numel() for group in fresh.param_groups for p in group["params"]]
    state = saved["state"]
    _require(isinstance(state, dict), "optimizer.state", "must be a dict")
    for index, entry in state.items():
        field = f"optimizer.state[{_show(index)}]"
        _require(isinstance(index, int) and 0 <= index < len(sizes) and isinstance(entry, dict), field,
                 f"must be keyed by a parameter index below {len(sizes)} and hold a dict")
        values = [v for value in entry.values() for v in (value if isinstance(value, list) else [value])]
        _require(all(v is None or _is_array(v, ()) or isinstance(v, torch.Tensor) and v.dtype.is_floating_point
                     and v.numel() in (1, sizes[index]) for v in values), field,
                 f"must hold numbers and float tensors of 1 or {sizes[index]} elements")


def _check_history(rows, field: str, spec: CheckpointSpec, last_step: int) -> None:
    """Stage-1 history rows: at most ``spec.max_rows``, each with ROW_KEYS, steps increasing from 0
    to at most ``last_step``, and K masses, K x r cosines (in [0, 1]), K norms and K losses or None."""
    K, r = len(spec.seeds), spec.r
    _require(isinstance(rows, list) and len(rows) <= spec.max_rows, field, f"must be a list of at most {spec.max_rows} rows")
    previous = -1
    for i, row in enumerate(rows):
        where = f"{field}[{i}]"
        _require(isinstance(row, dict) and set(row) == ROW_KEYS, where, f"must hold exactly {', '.join(sorted(ROW_KEYS))}")
        _require(isinstance(row["step"], int) and _is_array(row["step"], (), previous + 1, last_step), f"{where}.step",
                 f"is {_show(row['step'])}; allowed: an integer above the previous row's, at most {last_step}")
        previous = row["step"]
        _require(_is_array(row["subspace_mass"], (K,), 0, UNIT), f"{where}.subspace_mass", f"must be {K} masses in [0, 1]")
        _require(_is_array(row["principal_cosines"], (K, r), 0, UNIT), f"{where}.principal_cosines",
                 f"must be {K} x {r} cosines in [0, 1]")
        _require(_is_array(row["weight_norm"], (K,), 0), f"{where}.weight_norm", f"must be {K} norms >= 0")
        _require(row["loss"] is None or _is_array(row["loss"], (K,)), f"{where}.loss", f"must be None or {K} numbers")


def _is_array(value, shape: tuple, low: float = -float("inf"), high: float = float("inf")) -> bool:
    """Whether ``value`` is nested lists of ``shape`` (() : one number) of numbers in [low, high]."""
    if not shape:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    return isinstance(value, list) and len(value) == shape[0] and all(_is_array(v, shape[1:], low, high) for v in value)


def _same(saved, fresh) -> bool:
    """Whether saved plain data equals ``fresh`` (False where a comparison cannot be made)."""
    try:
        return bool(saved == fresh)
    except (RuntimeError, TypeError, ValueError):
        return False


def _show(value) -> str:
    """A value for a one-line message: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value) -> str:
    """A tensor as 'shape dtype', anything else by its type."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}" + ("" if value.layout == torch.strided else f" {value.layout}")
    return f"a {type(value).__name__}"
