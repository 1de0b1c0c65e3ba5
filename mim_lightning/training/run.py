"""One two-stage run (K replicas at once): plan -> data + network -> stage 1 -> spectral baseline ->
stage 2 -> test -> results, on one Fabric.

``plan.plan_run`` decides what is decided once; ``train_replicas`` trains K
independent runs (one per seed) as batched matrix products, each with the numbers of its separate
run, keeping ``OUT/checkpoints/last.ckpt`` fresh so that ``resume`` ends with the same numbers as
an uninterrupted run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import mim_lightning.training.lean_imports  # noqa: F401  (before Lightning: no unused metric back-ends)
import lightning as L
import numpy as np
import torch

from mim_lightning.analysis.theory import population_matrix
from mim_lightning.config import Config
from mim_lightning.core.measures import direction_mass
from mim_lightning.core.network import TwoLayerNetwork
from mim_lightning.core.spectral import matrix_free_cosines, mean_preprocessing, spectral_cosines, unbounded_fraction
from mim_lightning.plugins.validate import RunComponents, resolve_run_components
from mim_lightning.training.callbacks import DivergenceGuard, StepCheckpoint
from mim_lightning.training.history import MetricHistory
from mim_lightning.training.checkpoints import CHECKPOINT, CheckpointSpec, StopRequest, load_checkpoint, validate_checkpoint
from mim_lightning.training.data import MultiIndexDataModule
from mim_lightning.training.loop import Clock, fit_stage, make_fabric
from mim_lightning.training.memory import available_memory, check_run_memory, run_memory
from mim_lightning.training.plan import RunPlan, plan_run, solver_for
from mim_lightning.training.progress import Progress
from mim_lightning.training.metrics import RelativeMSE
from mim_lightning.training.run_folder import config_hash
from mim_lightning.training.stages import Stage1Module, Stage2Module
from mim_lightning.training.results import replica_results, spectral_family
from mim_lightning.training.run_logs import log_final, log_references, log_start
from mim_lightning.training.tensorboard import Board

DENSE_MAX_D = 4096  # baseline.spectral = auto: the dense eigensolver up to this d


@dataclass
class RunContext:
    """One run while it trains (``train_replicas``): what the stages share, passed down whole."""

    cfg: Config
    seeds: list[int]
    plan: RunPlan
    stop: StopRequest
    state: dict | None            # the checkpoint resumed from, if any
    outputs: dict                 # stage 1's results (restored from a stage-2 checkpoint)
    history: MetricHistory
    boards: list[Board]
    callbacks: list               # the loop's callbacks: history, divergence guard, checkpoints, progress
    progress: Progress
    assumptions: list | None

    @property
    def fabric(self) -> L.Fabric:
        return self.plan.fabric

    def resumed(self, stage: str) -> dict | None:
        """The checkpoint when the run resumes inside ``stage``, else None."""
        return self.state if self.state is not None and self.state["stage"] == stage else None


def eigenvectors(cfg: Config) -> np.ndarray:
    """The eigenvectors of M = E[loss'(0, y)(z z^T - I)] (stage-1 loss) as columns (r, r), ordered
    by |eigenvalue| descending. M comes from ``population_matrix`` (cached)."""
    M, _ = population_matrix(cfg.data.link, cfg.stage1.loss, cfg.data.r)
    values, vectors = np.linalg.eigh(0.5 * (M + M.T))
    return vectors[:, np.argsort(-np.abs(values), kind="stable")]


def eigen_direction_mass(cfg: Config, W: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Weight of W along each eigenvector of M (``eigenvectors``), ordered by |eigenvalue|
    descending: (K, r)."""
    vectors = eigenvectors(cfg)
    basis = torch.einsum("lk,nld->nkd", torch.as_tensor(vectors, dtype=U.dtype, device=U.device), U)
    return direction_mass(W.detach(), basis)


def _reducer(fabric):
    """Sum over ranks (identity in one process)."""
    return (lambda t: fabric.all_reduce(t, reduce_op="sum")) if fabric.world_size > 1 else (lambda t: t)


def build(cfg: Config, seeds=None, components: RunComponents | None = None, fabric=None, poll=None):
    """The run's components (looked up and probed unless given), its data placed on the Fabric's
    device and this rank's shard, and its freshly initialised network there."""
    seeds = [cfg.seed] if seeds is None else list(seeds)
    components = components or resolve_run_components(cfg)
    fabric = fabric or make_fabric(cfg)
    dm = MultiIndexDataModule(seeds, cfg.data.d, cfg.data.r, components.link, cfg.data.link, cfg.data.noise,
                              {"d1": cfg.n1, "d2": cfg.n2, "test": cfg.data.n_test}, cfg.data.chunk_size,
                              cfg.data.split_samples, cfg.data.stream)
    dm.choose(fabric.device, fabric.global_rank, fabric.world_size)
    check_run_memory(run_memory(cfg, len(seeds), dm.stored_bytes(fabric.world_size), dm.largest_chunk(), dm.streamed,
                                spectral_method(cfg)), fabric.device)
    dm.place(poll=poll)
    network = TwoLayerNetwork(seeds, cfg.model.width, cfg.data.d, components.activation, cfg.model.init_scale,
                              signs=cfg.model.signs).to(fabric.device)
    return components, dm, network


def polled(chunks: Iterable, poll: Callable[[], None] | None, tick: Callable[[], None] | None = None):
    """``chunks`` with ``poll()`` called before each one (a stop request raises there, so a pass
    outside the training steps never holds a signal back longer than one chunk) and ``tick()``
    after each (progress)."""
    for chunk in chunks:
        if poll is not None:
            poll()
        yield chunk
        if tick is not None:
            tick()


def run_stage1(cfg: Config, components, dm, network, fabric=None, state: dict | None = None, poll=None,
               callbacks=(), progress: Progress | None = None):
    """Stage 1 on D1 (from a stage-1 checkpoint ``state`` if given), then the spectral baseline on the
    same D1 and preprocessing: (shift (K,), baselines) with baselines["spectral"] = {order: principal
    cosines (K, r)} for T(y) - shift, baselines["spectral_uncentred"] the same for T(y) (when
    centring; centring adds -shift X^T X / n, whose noise can hurt the estimator), and
    baselines["unbounded_fraction"] (K,) from ``unbounded_fraction`` (a warning when positive).
    ``poll()`` runs before each chunk of the passes outside the steps; ``callbacks``: the Fabric's
    (their ``on_step_end`` runs after every step); ``progress`` hears each pass and chunk."""
    fabric = fabric or make_fabric(cfg)
    progress = progress or Progress({}, enabled=False)
    reduce = _reducer(fabric)
    d1 = lambda: polled(dm.chunks("d1"), poll, progress.tick)   # noqa: E731
    if state is not None:
        shift = state["shift"].to(fabric.device)
    elif cfg.stage1.center:
        progress.phase("centring T(y) on D1")
        shift = mean_preprocessing(d1(), components.stage1_loss, dm.n("d1"), reduce)
    else:
        shift = torch.zeros(len(dm.seeds), device=fabric.device)
    progress.phase("checking stage 1's objective on D1")
    unbounded = unbounded_fraction(d1(), components.stage1_loss, shift, dm.n("d1"), reduce,
                                   sides=reachable_sides(cfg, components.activation))
    progress.done()   # the status line leaves the warning's line alone
    if fabric.is_global_zero and state is None and float(unbounded.max()) > 0:
        sys.stderr.write(
            f"Warning: stage 1's objective loss(t, y) + mean(T) t is unbounded below in the direction f can move on "
            f"{100 * float(unbounded.max()):.1f}% of D1 (the centred preprocessing T(y) - mean(T) exceeds the loss's "
            f"slope bound there): run long enough, stage 1 sends f to infinity on those samples; set stage1.center=false "
            f"or use a loss whose preprocessing stays within its slope bound\n")
    stage1 = Stage1Module(network, components.stage1_loss, cfg, dm.n("d1"), fabric.world_size, reduce, shift, dm.U)
    clock = Clock(fabric)
    fit_stage(fabric, stage1, lambda: dm.chunks("d1"), "stage1", 1 if state is None else state["step"] + 1,
              cfg.stage1.steps, stage1.configure_optimizers(), None if state is None else state["optimizer"], callbacks)
    steps_seconds = clock.lap()
    centred = bool((shift != 0).any())   # else the uncentred baseline is the same one
    shifts = [shift, torch.zeros_like(shift)] if centred and cfg.baseline.uncentred else [shift]
    progress.phase(f"spectral baseline ({spectral_method(cfg)})")
    found = spectral_baseline(cfg, components, d1, dm, shifts, reduce)
    progress.done()
    baselines = {"spectral": found[0], "unbounded_fraction": unbounded,
                 "spectral_uncentred": found[1] if len(found) > 1 else ({} if centred else found[0])}
    baselines["seconds"] = {"stage1_steps": steps_seconds, "baseline": clock.lap()}
    return shift, baselines


def reachable_sides(cfg: Config, activation) -> str:
    """Which way f = sum_j a_j sigma(w_j . x + b_j) can run off: with every a_j = +1 (-1) and an
    activation that is never negative (checked on [-50, 50]), f >= 0 ("up") or f <= 0 ("down");
    otherwise either ("both")."""
    if cfg.model.signs == "pairs":
        return "both"
    with torch.no_grad():
        nonnegative = bool(activation(torch.linspace(-50, 50, 2001)).min() >= 0)
    if not nonnegative:
        return "both"
    return "up" if cfg.model.signs == "positive" else "down"


def spectral_method(cfg: Config) -> str:
    """baseline.spectral resolved: 'auto' is dense up to d = DENSE_MAX_D, else matrix_free."""
    method = cfg.baseline.spectral
    return ("dense" if cfg.data.d <= DENSE_MAX_D else "matrix_free") if method == "auto" else method


def spectral_baseline(cfg: Config, components, d1: Callable[[], Iterable], dm, shifts: list[torch.Tensor],
                      reduce) -> list[dict]:
    """Principal cosines (K, r) of the spectral estimator on D1 (``d1()``: its chunks) with the stage-1
    preprocessing T(y) - shift, per order, for each shift of ``shifts`` ({} each when
    baseline.spectral = off). The matrix-free solver serves every shift from the same passes."""
    method, orders = spectral_method(cfg), ("magnitude", "largest", "smallest")
    if method == "off":
        return [{} for _ in shifts]
    if method == "dense":
        return [spectral_cosines(d1(), components.stage1_loss, shift, dm.n("d1"), dm.U, reduce, orders)
                for shift in shifts]
    return matrix_free_cosines(d1, components.stage1_loss, shifts, dm.n("d1"), dm.U, reduce, orders)


def run_stage2(cfg: Config, components, dm, network, seeds, fabric=None, state: dict | None = None, poll=None,
               callbacks=(), progress: Progress | None = None, solver: str | None = None):
    """Stage 2 on D2 (from a stage-2 checkpoint ``state`` if given, its last objective included) and
    the test pass: (the stage-2 module, test relative MSE (K,)). ``poll()`` runs before each chunk of
    the passes outside the steps; ``progress`` hears the test pass; ``solver``: the plan's (else
    ``solver_for``)."""
    fabric = fabric or make_fabric(cfg)
    progress = progress or Progress({}, enabled=False)
    solver = solver or solver_for(cfg, replicas=len(seeds))
    stage2 = Stage2Module(network, components.stage2_loss, cfg, dm.n("d2"), fabric.world_size, _reducer(fabric),
                          solver, seeds)
    if state is not None and state.get("last_loss") is not None:
        stage2.last_loss = state["last_loss"].to(fabric.device)
    if not cfg.stage1.joint:  # the joint ablation trained both layers in stage 1: test it as it is
        if state is None:
            stage2.prepare_network()
        if solver == "gd":
            stage2.scale_step_size(polled(dm.chunks("d2"), poll))
        fit_stage(fabric, stage2, lambda: dm.chunks("d2"), "stage2", 1 if state is None else state["step"] + 1,
                  1 if solver == "ridge" else cfg.stage2.steps, None if solver == "ridge" else stage2.configure_optimizers(),
                  None if state is None else state["optimizer"], callbacks)
    metric = RelativeMSE(replicas=len(seeds)).to(fabric.device)
    progress.phase("test pass")
    with torch.no_grad(), fabric.autocast():
        for x, y in polled(dm.chunks("test"), poll, progress.tick):
            metric.update(network(x), y)
    progress.done()
    return stage2, metric.compute().reshape(-1)  # torchmetrics squeezes K = 1


def train(cfg: Config, out: Path, assumptions=None, resume: bool = False, stop: StopRequest | None = None,
          plan: RunPlan | None = None, progress: bool = False) -> dict:
    """One run: ``train_replicas`` with the config's seed."""
    return train_replicas(cfg, out, [cfg.seed], assumptions, resume, stop, plan, progress=progress)[0]


def _resume_state(cfg: Config, out: Path, seeds: list[int], plan: RunPlan, last: dict[str, int]) -> dict:
    """The checkpoint of the interrupted run in ``out``, refused unread when it would unpack to more
    than this run's checkpoint can hold or free memory allows, and refused field by field
    (``validate_checkpoint``) when this run (config, seeds, ``last`` steps, network and optimisers
    built on the meta device: shapes only, nothing allocated) could not have written it."""
    with torch.device("meta"):
        network = TwoLayerNetwork(seeds, cfg.model.width, cfg.data.d, plan.components.activation, cfg.model.init_scale,
                                  signs=cfg.model.signs)
        stage1 = Stage1Module(network, None, cfg, 1, 1, None, None).configure_optimizers()
        stage2 = Stage2Module(network, None, cfg, 1, 1, None, plan.solver, seeds).configure_optimizers()
    spec = CheckpointSpec(config_hash(cfg.model_dump()), seeds, cfg.data.r, last,
                          cfg.stage1.steps // cfg.metrics.every_n_steps + 2, network.state_dict(),
                          {"stage1": stage1, "stage2": None if plan.solver == "ridge" else stage2})
    free = available_memory(torch.device("cpu"))
    state = load_checkpoint(out / CHECKPOINT, spec.max_bytes() if free is None else min(spec.max_bytes(), free))
    validate_checkpoint(state, spec, out / CHECKPOINT)
    return state


def train_replicas(cfg: Config, out: Path, seeds, assumptions=None, resume: bool = False,
                   stop: StopRequest | None = None, plan: RunPlan | None = None,
                   tensorboard_dirs: list[Path] | None = None, progress: bool = False) -> list[dict]:
    """K independent runs (one per seed) trained at once: one results dict per seed (the contract
    fields of results.json). ``plan``: from ``plan_run`` with as many replicas (made here if not
    given).

    TensorBoard: by default the first replica, in ``OUT/tensorboard`` (its HParams trial id OUT's
    name, with the HParams experiment: the columns); with ``tensorboard_dirs`` (one folder per seed)
    each replica in its own folder, its trial id the folder's name, and no experiment (the caller,
    e.g. a sweep, writes it once with its swept keys first). ``progress``: rank zero shows what the
    run is doing on stderr (``training.progress``)."""
    seeds, out = list(seeds), Path(out)
    plan = plan or plan_run(cfg, check=False, replicas=len(seeds))
    stop = stop or StopRequest()
    last = {"stage1": cfg.stage1.steps, "stage2": 1 if plan.solver == "ridge" else cfg.stage2.steps}
    state = _resume_state(cfg, out, seeds, plan, last) if resume else None
    if tensorboard_dirs is not None and len(tensorboard_dirs) != len(seeds):
        raise ValueError(f"tensorboard_dirs: one folder per seed ({len(seeds)}), got {len(tensorboard_dirs)}")
    dirs = [out / "tensorboard"] if tensorboard_dirs is None else [Path(p) for p in tensorboard_dirs]
    trials = [out.resolve().name] if tensorboard_dirs is None else [p.name for p in dirs]
    boards = [Board(p) for p in dirs]
    history = MetricHistory(cfg, [board.scalars for board in boards], eigenvectors(cfg))
    run = RunContext(cfg, seeds, plan, stop, state, {}, history, boards, [], Progress(last, enabled=False), assumptions)
    if run.resumed("stage2") is not None:
        run.outputs = state["stage1"]
    if run.resumed("stage1") is not None:
        history.restore(state["history"], state.get("subspace_basis"))
    saver = StepCheckpoint(out / CHECKPOINT, cfg.checkpoint.every_n_steps, stop, lambda *a: snapshot(run, *a), last)
    run.callbacks = [history, DivergenceGuard(cfg), saver, run.progress]
    fabric = run.fabric
    fabric.launch()
    run.progress.enabled = progress and fabric.is_global_zero
    from mim_lightning.training.ranks import watch
    ranks = watch(fabric, stop)   # a rank that stops or dies ends every rank, with one line naming it
    for k, board in enumerate(run.boards):
        board.enabled = fabric.is_global_zero
        if state is None:
            log_start(board, cfg.model_copy(update={"seed": seeds[k]}), trials[k], assumptions, tensorboard_dirs is None)
    try:
        return run_stages(run)
    except BaseException as exc:
        ranks.explain(exc)
        raise
    finally:  # a failed run's TensorBoard files keep what it logged; an error starts on its own line
        run.progress.done()
        for board in run.boards:
            board.close()


def snapshot(run: RunContext, stage: str, step: int, module) -> dict:
    """The checkpoint of ``run`` at ``step`` of ``stage`` (its metrics and TensorBoard files are
    flushed first, so that the curves up to a checkpoint survive a kill: a resume has no gap)."""
    run.history.flush()
    for board in run.boards:
        board.flush()
    optimizer, history = module.stage_optimizer, run.history
    return {"stage": stage, "step": step, "config_hash": config_hash(run.cfg.model_dump()), "seeds": run.seeds,
            "network": {k: v.detach().cpu() for k, v in module.network.state_dict().items()},
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "shift": getattr(module, "shift", torch.zeros(0)).detach().cpu(),
            "last_loss": None if module.last_loss is None else module.last_loss.detach().cpu(),
            "history": history.rows, "stage1": run.outputs,
            "subspace_basis": None if history.tracker is None else history.tracker.state()}


def run_stages(run: RunContext) -> list[dict]:
    """The stages of a run on its launched Fabric, from its checkpoint if it resumes: data and
    network, stage 1 and the spectral baseline, stage 2 and the test pass, the results."""
    cfg, stop, progress = run.cfg, run.stop, run.progress
    timings = dict(run.outputs.get("timings", {}))
    start = time.perf_counter()
    progress.phase("generating the data", "blocks of samples")

    def poll_generation():
        stop.check("data generation")
        progress.tick()

    components, dm, network = build(cfg, run.seeds, run.plan.components, run.fabric, poll=poll_generation)
    progress.done()
    if run.state is not None:
        network.load_state_dict(run.state["network"])
    if run.resumed("stage2") is None:
        shift, baselines = run_stage1(cfg, components, dm, network, run.fabric, run.resumed("stage1"),
                                      poll=lambda: stop.check("the spectral baseline and data passes of stage 1"),
                                      callbacks=run.callbacks, progress=progress)
        stop.check("stage1")
        timings["stage1"] = time.perf_counter() - start
        timings.update(baselines["seconds"])
        run.outputs.update({
            "history": run.history.rows, "timings": dict(timings),
            "spectral": {order: cos.tolist() for order, cos in baselines["spectral"].items()},
            "spectral_uncentred": {order: cos.tolist() for order, cos in baselines["spectral_uncentred"].items()},
            "unbounded_fraction": baselines["unbounded_fraction"].tolist(),
            "direction_mass": eigen_direction_mass(cfg, network.W, dm.U).tolist()})
        for k, board in enumerate(run.boards):
            log_references(board, cfg, spectral_family(run.outputs, k, cfg.stage1.center), k)
    start = time.perf_counter()
    stage2, test_rel_mse = run_stage2(cfg, components, dm, network, run.seeds, run.fabric, run.resumed("stage2"),
                                      poll=lambda: stop.check("the test pass"), callbacks=run.callbacks,
                                      progress=progress, solver=run.plan.solver)
    stop.check("the test pass")
    timings["stage2"] = time.perf_counter() - start

    results = [replica_results(cfg.model_copy(update={"seed": seed}), k, run.outputs, stage2.last_loss, test_rel_mse,
                               run.assumptions, timings) for k, seed in enumerate(run.seeds)]
    for board, replica in zip(run.boards, results):
        log_final(board, cfg, replica)
    return results
