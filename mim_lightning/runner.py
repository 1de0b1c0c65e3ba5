"""One two-stage run: config -> components -> data + modules -> Lightning Trainers -> results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mim_lightning import plugins
from mim_lightning.config import Config, flatten
from mim_lightning.data import MultiIndexDataModule
from mim_lightning.errors import MimError
from mim_lightning.model import TwoLayerNetwork
from mim_lightning.module import Stage1Module, Stage2Module
from mim_lightning.spectral import spectral_cosines


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


def solver_for(cfg: Config) -> str:
    """The stage-2 solver: 'auto' is ridge for squared loss, else lbfgs; ridge needs squared loss."""
    solver = cfg.stage2.solver
    if solver == "auto":
        return "ridge" if cfg.stage2.loss == "squared" else "lbfgs"
    if solver == "ridge" and cfg.stage2.loss != "squared":
        raise MimError(f"stage2.solver = ridge needs stage2.loss = squared (got {cfg.stage2.loss!r}); use lbfgs or gd")
    return solver


def make_trainer(cfg: Config, max_epochs: int, logger) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=t.precision, max_epochs=max_epochs, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        num_sanity_val_steps=0, log_every_n_steps=1,
    )


def train(cfg: Config, out: Path, assumptions=None) -> dict:
    """Run both stages and return the results dict (contract fields of results.json).

    The reported principal cosines and subspace mass are those of W after stage 1 (before the
    stage-2 rescaling, which changes row norms and hence W's singular subspace).
    """
    components = resolve_components(cfg)
    solver = solver_for(cfg)
    seeds = [cfg.seed]
    dm = MultiIndexDataModule(
        seeds, cfg.data.d, cfg.data.r, components.link, cfg.data.link, cfg.data.noise,
        {"d1": cfg.n1, "d2": cfg.n2, "test": cfg.data.n_test}, cfg.data.chunk_size,
    )
    network = TwoLayerNetwork(seeds, cfg.model.width, cfg.data.d, components.activation, cfg.model.init_scale)
    logger = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False)

    timings = {}
    start = time.perf_counter()
    stage1 = Stage1Module(network, components.stage1_loss, cfg)
    trainer1 = make_trainer(cfg, cfg.stage1.steps, logger)
    trainer1.fit(stage1, datamodule=dm)
    reduce = lambda t: trainer1.strategy.reduce(t, reduce_op="sum")  # noqa: E731
    spectral = spectral_cosines(dm.chunks("d1"), components.stage1_loss, stage1.shift, dm.n("d1"), dm.U, reduce)
    timings["stage1"] = time.perf_counter() - start

    start = time.perf_counter()
    dm.split = "d2"
    stage2 = Stage2Module(network, components.stage2_loss, cfg, solver, seeds)
    trainer2 = make_trainer(cfg, 1 if solver == "ridge" else cfg.stage2.steps, logger)
    trainer2.fit(stage2, datamodule=dm)
    trainer2.test(stage2, datamodule=dm, verbose=False)
    timings["stage2"] = time.perf_counter() - start

    history = stage1.history
    final = history[-1]
    results = {
        "principal_cosines": final["principal_cosines"][0],
        "subspace_mass": final["subspace_mass"][0],
        "test_rel_mse": float(stage2.test_rel_mse[0]),
        "spectral_principal_cosines": spectral["magnitude"][0].tolist(),
        "spectral_principal_cosines_largest": spectral["largest"][0].tolist(),
        "stage2_loss": float(stage2.last_loss[0]),
        "config": cfg.model_dump(),
        "assumptions": assumptions if assumptions is not None else [],
        "timings": timings,
        "history": [{"step": h["step"], "subspace_mass": h["subspace_mass"][0],
                     "principal_cosines": h["principal_cosines"][0]} for h in history],
    }
    final_metrics = {
        "final/min_principal_cosine": min(results["principal_cosines"]),
        "final/subspace_mass": results["subspace_mass"],
        "final/test_rel_mse": results["test_rel_mse"],
        "final/spectral_min_principal_cosine": min(results["spectral_principal_cosines"]),
    }
    logger.log_hyperparams({k: str(v) if isinstance(v, (list, dict)) else v for k, v in flatten(cfg.model_dump()).items()},
                           metrics=final_metrics)
    logger.finalize("success")
    return results
