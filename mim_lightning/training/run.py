"""One two-stage run: config -> components -> data + modules -> Lightning Trainers -> results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import TensorBoardLogger

from mim_lightning.plugins import manager as plugins
from mim_lightning.training.checkpoints import CHECKPOINT, StepCheckpoint, StopRequest
from mim_lightning.config import Config, flatten
from mim_lightning.training.data import MultiIndexDataModule
from mim_lightning.errors import MimError
from mim_lightning.core.measures import direction_mass
from mim_lightning.core.network import TwoLayerNetwork
from mim_lightning.plugins.validate import probe_components
from mim_lightning.training.stages import Stage1Module, Stage2Module
from mim_lightning.core.spectral import spectral_cosines
from mim_lightning.analysis.theory import population_matrix


@dataclass
class Components:
    link: object
    stage1_loss: object
    stage2_loss: object
    activation: object


def resolve_components(cfg: Config) -> Components:
    """Look up every component of a run (errors name the key and list what is available)."""
    registry = plugins.get_registry()
    found = {}
    for key, kind, name in [("data.link", "link", cfg.data.link), ("stage1.loss", "loss", cfg.stage1.loss),
                            ("stage2.loss", "loss", cfg.stage2.loss), ("model.activation", "activation", cfg.model.activation)]:
        try:
            found[key] = registry.get(kind, name)
        except MimError as exc:
            raise MimError(f"{key}: {exc}") from None
    min_r = found["data.link"].metadata.get("min_r", 1)
    if cfg.data.r < min_r:
        raise MimError(f"data.r = {cfg.data.r} is too small for link {cfg.data.link!r}, which needs r >= {min_r}")
    return Components(*(c.fn for c in found.values()))


def solver_for(cfg: Config, replicas: int = 1) -> str:
    """The stage-2 solver: 'auto' is ridge for squared loss, else lbfgs, whatever the number of
    replicas (so a config means the same numbers batched or alone); ridge needs squared loss, and
    lbfgs, whose line of search would couple batched replicas, needs K = 1."""
    solver = cfg.stage2.solver
    if solver == "auto":
        solver = "ridge" if cfg.stage2.loss == "squared" else "lbfgs"
    if solver == "ridge" and cfg.stage2.loss != "squared":
        raise MimError(f"stage2.solver = ridge needs stage2.loss = squared (got {cfg.stage2.loss!r}); use lbfgs or gd")
    if solver == "lbfgs" and replicas > 1:
        raise MimError("stage2.solver = lbfgs couples batched replicas; train the seeds separately, or use gd")
    return solver


def make_trainer(cfg: Config, max_epochs: int, logger, callbacks=()) -> L.Trainer:
    """A Trainer for one stage (one epoch = one full-batch step); bad trainer.* values -> MimError."""
    t = cfg.trainer
    torch.set_float32_matmul_precision(t.matmul_precision)
    try:
        return L.Trainer(
            accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
            precision=t.precision, max_epochs=max_epochs, logger=logger, callbacks=list(callbacks),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            use_distributed_sampler=False, num_sanity_val_steps=0, log_every_n_steps=1,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MimError(f"trainer settings (accelerator={t.accelerator!r}, devices={t.devices!r}, "
                       f"strategy={t.strategy!r}, precision={t.precision!r}): {first}") from None


def validate(cfg: Config) -> None:
    """Everything about a run that can be checked in milliseconds, before any output or compute:
    component names, the components themselves on probe inputs, the solver, the trainer settings."""
    probe_components(cfg, resolve_components(cfg))
    solver_for(cfg)
    make_trainer(cfg, 1, None)


def build(cfg: Config, seeds=None) -> tuple[Components, MultiIndexDataModule, TwoLayerNetwork]:
    """The run's components (probed on small inputs), its data module and its freshly initialised network."""
    components = resolve_components(cfg)
    probe_components(cfg, components)
    seeds = [cfg.seed] if seeds is None else list(seeds)
    dm = MultiIndexDataModule(
        seeds, cfg.data.d, cfg.data.r, components.link, cfg.data.link, cfg.data.noise,
        {"d1": cfg.n1, "d2": cfg.n2, "test": cfg.data.n_test}, cfg.data.chunk_size, cfg.data.split_samples,
    )
    network = TwoLayerNetwork(seeds, cfg.model.width, cfg.data.d, components.activation, cfg.model.init_scale,
                              signs=cfg.model.signs)
    return components, dm, network


def run_stage1(cfg, components, dm, network, logger=None, checkpoint: StepCheckpoint | None = None,
               ckpt_path=None) -> tuple[Stage1Module, dict]:
    """Stage 1 on D1 (resumed from ``ckpt_path`` if given), then the spectral baseline on the same
    D1: (module, {order: cosines (K, r)})."""
    stage1 = Stage1Module(network, components.stage1_loss, cfg)
    trainer = make_trainer(cfg, cfg.stage1.steps, logger, [checkpoint] if checkpoint else [])
    dm.split = "d1"
    trainer.fit(stage1, datamodule=dm, ckpt_path=ckpt_path)
    if checkpoint is not None:
        checkpoint.raise_if_stopped()
    reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
    shift = stage1.shift.to(trainer.strategy.root_device)
    spectral = spectral_cosines(dm.chunks("d1"), components.stage1_loss, shift, dm.n("d1"), dm.U, reduce,
                                orders=("magnitude", "largest", "smallest"))
    return stage1, spectral


SPECTRAL_ORDER = {"pairs": "magnitude", "positive": "largest", "negative": "smallest"}


def eigen_direction_mass(cfg: Config, W: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Weight of W along each eigenvector of M = E[loss'(0, y)(z z^T - I)] (stage-1 loss), ordered
    by |eigenvalue| descending: (K, r). M comes from ``theory.population_matrix`` (cached)."""
    M, _ = population_matrix(cfg.data.link, cfg.stage1.loss, cfg.data.r)
    values, vectors = np.linalg.eigh(0.5 * (M + M.T))
    vectors = vectors[:, np.argsort(-np.abs(values), kind="stable")]
    basis = torch.einsum("lk,nld->nkd", torch.as_tensor(vectors, dtype=U.dtype, device=U.device), U)
    return direction_mass(W.detach(), basis)


def run_stage2(cfg, components, dm, network, seeds, logger=None, checkpoint: StepCheckpoint | None = None,
               ckpt_path=None, stage1_outputs=None) -> Stage2Module:
    """Stage 2 on D2 (resumed from ``ckpt_path`` if given) and the test evaluation
    (``module.test_rel_mse``, (K,)). ``stage1_outputs`` ride along in its checkpoints."""
    solver = solver_for(cfg, replicas=len(seeds))
    stage2 = Stage2Module(network, components.stage2_loss, cfg, solver, seeds)
    stage2.stage1_outputs = stage1_outputs or {}
    trainer = make_trainer(cfg, 1 if solver == "ridge" else cfg.stage2.steps, logger, [checkpoint] if checkpoint else [])
    dm.split = "d2"
    if not cfg.stage1.joint:  # the joint ablation trained both layers in stage 1: test it as it is
        trainer.fit(stage2, datamodule=dm, ckpt_path=ckpt_path)
        if checkpoint is not None:
            checkpoint.raise_if_stopped()
    trainer.test(stage2, datamodule=dm, verbose=False)
    return stage2


def log_assumptions(logger, assumptions: list[dict]) -> None:
    """The assumption report as a Markdown table in TensorBoard's TEXT tab (rank zero only:
    elsewhere ``logger.experiment`` is a no-op stand-in)."""
    from mim_lightning.analysis.report import markdown_table

    experiment = getattr(logger, "experiment", None)
    if experiment is not None and hasattr(experiment, "add_text"):
        experiment.add_text("assumptions", markdown_table(assumptions), global_step=0)


def read_checkpoint_stage(out: Path) -> tuple[Path, dict]:
    """The checkpoint of an interrupted run in ``out`` and its mim state (which stage, history)."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise MimError(f"cannot resume {str(out)!r}: no checkpoint at {str(path)!r} (was the run started with --out {out}?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["mim"]
    except Exception as exc:  # a file that is not a checkpoint of ours
        raise MimError(f"cannot resume {str(out)!r}: {str(path)!r} is not a readable mim checkpoint ({type(exc).__name__})") from None
    return path, state


def train(cfg: Config, out: Path, assumptions=None, resume: bool = False, stop: StopRequest | None = None) -> dict:
    """Run both stages and return the results dict (contract fields of results.json).

    ``out/checkpoints/last.ckpt`` is kept fresh every ``checkpoint.every_n_steps`` steps of either
    stage; with ``resume`` the run continues from it and ends with the same numbers as an
    uninterrupted run. The reported principal cosines and subspace mass are those of W after
    stage 1 (before the stage-2 rescaling, which changes row norms and hence W's singular subspace).
    """
    return train_replicas(cfg, out, [cfg.seed], assumptions, resume, stop)[0]


def train_replicas(cfg: Config, out: Path, seeds, assumptions=None, resume: bool = False,
                   stop: StopRequest | None = None) -> list[dict]:
    """K independent runs (one per seed) trained at once as batched matrix products: one results
    dict per seed, each the same as a separate run with ``seed`` set to it (stage-2 lbfgs would
    couple the replicas, so ``solver_for`` refuses K > 1 with lbfgs). TensorBoard shows the first
    replica."""
    seeds = list(seeds)
    solver_for(cfg, replicas=len(seeds))
    ckpt, state = read_checkpoint_stage(out) if resume else (out / CHECKPOINT, None)
    components, dm, network = build(cfg, seeds)
    logger = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False)
    if assumptions and not resume:
        log_assumptions(logger, assumptions)
    every = cfg.checkpoint.every_n_steps

    timings = {}
    if state is None or state["stage"] == 1:
        start = time.perf_counter()
        stage1, spectral = run_stage1(cfg, components, dm, network, logger, StepCheckpoint(ckpt, every, 1, stop),
                                      ckpt_path=ckpt if state is not None else None)
        timings["stage1"] = time.perf_counter() - start
        outputs = {"history": stage1.history, "timings": dict(timings),
                   "spectral": {order: cos.tolist() for order, cos in spectral.items()},
                   "direction_mass": eigen_direction_mass(cfg, network.W, dm.U).tolist()}
    else:
        outputs = state["stage1"]
        timings.update(outputs["timings"])
    start = time.perf_counter()
    stage2 = run_stage2(cfg, components, dm, network, seeds, logger, StepCheckpoint(ckpt, every, 2, stop),
                        ckpt_path=ckpt if state is not None and state["stage"] == 2 else None, stage1_outputs=outputs)
    timings["stage2"] = time.perf_counter() - start

    results = [replica_results(cfg.model_copy(update={"seed": seed}), k, outputs, stage2, assumptions, timings)
               for k, seed in enumerate(seeds)]
    first = results[0]
    final_metrics = {
        "final/min_principal_cosine": min(first["principal_cosines"]),
        "final/subspace_mass": first["subspace_mass"],
        "final/test_rel_mse": first["test_rel_mse"],
        "final/spectral_min_principal_cosine": min(first["spectral_principal_cosines"]),
    }
    hparams = {k: str(v) if isinstance(v, (list, dict)) else v for k, v in flatten(cfg.model_dump()).items()}
    logger.log_hyperparams(hparams, metrics=final_metrics)
    logger.finalize("success")
    return results


def replica_results(cfg: Config, k: int, outputs: dict, stage2: Stage2Module, assumptions, timings) -> dict:
    """The results.json fields of replica k."""
    final = outputs["history"][-1]
    return {
        "principal_cosines": final["principal_cosines"][k],
        "subspace_mass": final["subspace_mass"][k],
        "test_rel_mse": float(stage2.test_rel_mse[k]),
        "spectral_principal_cosines": outputs["spectral"][SPECTRAL_ORDER[cfg.model.signs]][k],
        "spectral_order": SPECTRAL_ORDER[cfg.model.signs],
        "spectral_principal_cosines_magnitude": outputs["spectral"]["magnitude"][k],
        "spectral_principal_cosines_largest": outputs["spectral"]["largest"][k],
        "direction_mass": outputs["direction_mass"][k],
        "stage2_loss": None if stage2.last_loss is None else float(stage2.last_loss[k]),
        "config": cfg.model_dump(),
        "assumptions": assumptions if assumptions is not None else [],
        "timings": timings,
        "history": [{"step": h["step"], "subspace_mass": h["subspace_mass"][k],
                     "principal_cosines": h["principal_cosines"][k]} for h in outputs["history"]],
    }
