"""The two stages against the maths: power iteration, chunking, sharding, the stage-2 fits."""

import pytest
import torch

from mim_lightning.core.measures import subspace_iteration
from mim_lightning.core.streams import make_split, random_subspace
from mim_lightning.training.data import MultiIndexDataModule
from mim_lightning.plugins.builtins.links import z1z2
from mim_lightning.errors import MimError
from mim_lightning.training.run import build, run_stage1, run_stage2
from mim_lightning.training.stages import Stage1Module

from helpers import tiny_config


@pytest.mark.parametrize("signs", ["pairs", "positive", "negative"])
def test_one_stage1_step_is_power_iteration(signs):
    """Quadratic activation, tiny init (f = 0 exactly for pairs, O(eps^2) otherwise):
    W1 = (1 - eta beta) W0 - eta diag(a) W0 Sigmahat, Sigmahat = (1/n) sum_i (loss'(0, y_i) + mean T) x_i x_i^T."""
    cfg = tiny_config("model.activation=quadratic", "stage1.steps=1", "stage1.lr=0.7", f"model.signs={signs}",
                      "stage1.weight_decay=0.4", "data.link=z1z2", "model.init_scale=1e-5", "stage1.loss=squared")
    components, dm, network = build(cfg)
    if signs != "pairs":
        assert (network.a == (1.0 if signs == "positive" else -1.0)).all()
        assert not torch.equal(network.W[0, 0], network.W[0, cfg.model.width // 2])
    W0 = network.W.detach().clone()[0]
    a = network.a.detach()[0]
    run_stage1(cfg, components, dm, network)
    x, y = dm.tensors["d1"]
    x, y = x[0].double(), y[0].double()
    T = y - y.mean()                                   # squared loss: T(y) = y, centred
    sigma = -(x.T * T) @ x / x.shape[0]                # (1/n) sum loss'(0, y) x x^T
    eta, beta = 0.7, 0.4
    want = (1 - eta * beta) * W0.double() - eta * a.double()[:, None] * (W0.double() @ sigma)
    assert torch.allclose(network.W.detach()[0].double(), want, rtol=1e-4, atol=1e-11)


def test_stage1_logs_the_objective_it_descends():
    """With centring and weight decay the logged loss is (1/n) sum [loss(f, y) + mean(T) f] +
    (beta1 / 2) |W|_F^2 at the weights before the step, and a small step lowers it."""
    cfg = tiny_config("stage1.steps=1", "stage1.lr=0.01", "stage1.weight_decay=0.3", "model.init_scale=0.5",
                      "stage1.loss=squared")
    components, dm, network = build(cfg)
    x, y = dm.tensors["d1"]
    yd = y[0].double()

    def objective() -> float:   # squared loss: loss(t, y) = (t - y)^2 / 2, T(y) = y, mean(T) = mean(y)
        with torch.no_grad():
            f = network(x)[0].double()
            return ((0.5 * (f - yd).square() + yd.mean() * f).mean()
                    + 0.15 * network.W.detach()[0].double().square().sum()).item()

    before = objective()
    shift = torch.full((1,), yd.mean().item())
    module = Stage1Module(network, components.stage1_loss, cfg, dm.n("d1"), 1, lambda t: t, shift, dm.U)
    module.select_trained()
    optimizer = module.configure_optimizers()
    module.training_step((x, y), 0).backward()
    module.finish_step(optimizer)
    assert module.last_loss[0].item() == pytest.approx(before, rel=1e-5)
    assert objective() < before


def test_chunked_full_batch_equals_one_chunk():
    base = tiny_config("data.alpha=10")
    chunked = tiny_config("data.alpha=10", "data.chunk_size=100")
    weights = []
    for cfg in (base, chunked):
        components, dm, network = build(cfg)
        run_stage1(cfg, components, dm, network)
        weights.append(network.W.detach().clone())
        assert len(dm.chunks("d1")) == (1 if cfg is base else 4)
    assert torch.allclose(weights[0], weights[1], rtol=1e-5, atol=1e-12)


def test_shards_of_any_world_size_make_the_same_dataset():
    U = random_subspace(5, 16, 2, "cpu")[None]
    args = (U, z1z2, "z1z2", 0.1)
    x1, y1 = make_split([5], "d1", 3000, *args, 0, 1, "cpu")
    xs = [make_split([5], "d1", 3000, *args, rank, 3, "cpu")[0] for rank in range(3)]
    # rank k owns blocks k, k+3, ... of 1024 rows: 3000 rows are blocks 0, 1, 2
    assert torch.equal(torch.cat([xs[0], xs[1], xs[2]], dim=1), x1)


def test_subspace_is_orthonormal_and_seeded():
    U = random_subspace(3, 50, 4, "cpu")
    assert torch.allclose(U @ U.T, torch.eye(4), atol=1e-6)
    assert torch.equal(U, random_subspace(3, 50, 4, "cpu"))
    assert not torch.equal(U, random_subspace(4, 50, 4, "cpu"))


def test_ridge_solves_the_normal_equations():
    cfg = tiny_config("stage2.ridge=0.01", "data.chunk_size=90")
    components, dm, network = build(cfg)
    run_stage1(cfg, components, dm, network)
    stage2, test_rel_mse = run_stage2(cfg, components, dm, network, [cfg.seed])
    x, y = dm.tensors["d2"]
    phi = network.features(x)[0].double()
    n, m = phi.shape
    want = torch.linalg.solve(phi.T @ phi / n + 2 * 0.01 * torch.eye(m, dtype=torch.float64), phi.T @ y[0].double() / n)
    assert torch.allclose(network.a.detach()[0].double(), want, rtol=1e-4, atol=1e-6)
    f = phi @ want
    xt, yt = dm.tensors["test"]
    pred = network(xt)[0].double()
    rel = ((pred - yt[0]) ** 2).mean() / yt[0].double().var(unbiased=False)
    assert test_rel_mse[0].item() == pytest.approx(rel.item(), rel=1e-4)
    assert stage2.last_loss[0].item() == pytest.approx((0.5 * (f - y[0]).square().mean() + 0.01 * want.square().sum()).item(), rel=1e-4)


def test_lbfgs_reaches_the_ridge_solution_for_squared_loss():
    solutions = []
    for solver in ("ridge", "lbfgs"):
        cfg = tiny_config("stage2.ridge=0.01", f"stage2.solver={solver}", "stage2.steps=200")
        components, dm, network = build(cfg)
        run_stage1(cfg, components, dm, network)
        stage2, test_rel_mse = run_stage2(cfg, components, dm, network, [cfg.seed])
        solutions.append(stage2.last_loss.item())
    assert solutions[1] == pytest.approx(solutions[0], rel=1e-3)


def test_divergence_names_the_stage_step_and_knob(tmp_path):
    from mim_lightning.training.run import train

    cfg = tiny_config("stage1.lr=1e6", "stage1.weight_decay=0", "model.init_scale=1", "stage1.steps=40",
                      "stage1.loss=squared")
    with pytest.raises(MimError, match=r"stage 1 diverged by step \d+.*stage1.lr"):
        train(cfg, tmp_path)


def test_same_seed_same_numbers_other_seed_other_numbers():
    runs = []
    for seed in (0, 0, 1):
        cfg = tiny_config(f"seed={seed}")
        components, dm, network = build(cfg)
        run_stage1(cfg, components, dm, network)
        runs.append(network.W.detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_datamodule_without_trainer_is_single_process():
    dm = MultiIndexDataModule([0], 8, 2, z1z2, "z1z2", 0.0, {"d1": 100, "d2": 50, "test": 10})
    dm.setup()
    assert dm.tensors["d1"][0].shape == (1, 100, 8)
    with pytest.raises(MimError, match="link 'bad' returned shape"):
        MultiIndexDataModule([0], 8, 2, lambda z: z, "bad", 0.0, {"d1": 10}).setup()


@pytest.mark.parametrize("extra", [[], ["stage2.loss=huber", "stage2.solver=gd", "stage2.steps=15", "data.chunk_size=100"]])
def test_batched_replicas_equal_separate_runs(tmp_path, extra):
    from mim_lightning.training.run import train, train_replicas

    cfg = tiny_config(*extra)
    together = train_replicas(cfg, tmp_path / "k", [3, 7])
    for seed, batched in zip([3, 7], together, strict=True):
        alone = train(cfg.model_copy(update={"seed": seed}), tmp_path / f"s{seed}")
        for key in ("principal_cosines", "spectral_principal_cosines", "subspace_mass", "test_rel_mse", "stage2_loss"):
            assert batched[key] == pytest.approx(alone[key], abs=1e-5), key
        for row, other in zip(batched["history"], alone["history"], strict=True):
            assert row["step"] == other["step"]
            # the tracked subspace of a batch of replicas equals each alone to its accuracy
            assert row["principal_cosines"] == pytest.approx(other["principal_cosines"], abs=1e-4)
        assert batched["config"]["seed"] == seed


def test_tracked_subspace_follows_the_exact_one(tmp_path, monkeypatch):
    """The cheap tracked estimate of W's top-r subspace agrees with the eigensolver along a run
    (tracking is used above EXACT_BELOW; lowered here to keep the run small)."""
    from mim_lightning.training import history
    from mim_lightning.training.run import train

    monkeypatch.setattr(history, "EXACT_BELOW", 8)
    calls = []
    monkeypatch.setattr(history, "subspace_iteration", lambda W, *a: calls.append(len(W)) or subspace_iteration(W, *a))
    histories = []
    for mode in ("exact", "tracked"):
        cfg = tiny_config("data.d=64", "data.alpha=16", "model.width=64", "stage1.steps=12", "data.link=z1z2",
                          f"metrics.subspace={mode}")
        histories.append(train(cfg, tmp_path / mode)["history"])
    assert calls == [10, 2]   # one batched call per flush interval: steps 1..10, then 11 and 12 (12 = T1 then exact)
    for exact, tracked in zip(*histories, strict=True):
        assert tracked["principal_cosines"][0] == pytest.approx(exact["principal_cosines"][0], abs=1e-3)


@pytest.mark.parametrize("size", ["data.d=32", "data.d=160"])   # exact and tracked subspaces
def test_metrics_measured_in_batches_equal_metrics_measured_at_each_step(tmp_path, monkeypatch, size):
    """Copies of W kept between flushes and measured together give the history of measuring each W
    at its step, also when the buffer fills up between flushes (two slots): the masses exactly, the
    cosines of the tracked subspace (restarted from another step) to its accuracy."""
    from mim_lightning.training import history
    from mim_lightning.training.run import train

    cfg = tiny_config(size, "model.width=160", "stage1.steps=9", "metrics.flush_every_n_steps=4")
    histories = {}
    for name, snapshot_bytes in (("batched", 32 * 2**20), ("at_once", 0), ("two_slots", 2 * 4 * 160 * cfg.data.d)):
        monkeypatch.setattr(history, "SNAPSHOT_BYTES", snapshot_bytes)
        histories[name] = train(cfg, tmp_path / name)["history"]
    assert [row["step"] for row in histories["batched"]] == list(range(10))
    for key in ("principal_cosines", "subspace_mass"):
        for name in ("at_once", "two_slots"):
            got = torch.tensor([row[key] for row in histories[name]])
            want = torch.tensor([row[key] for row in histories["batched"]])
            assert torch.allclose(got, want, rtol=0, atol=1e-7 if key == "subspace_mass" else 1e-5), (key, name)


def test_ablation_no_sample_splitting_reuses_d1(tmp_path):
    cfg = tiny_config("data.split_samples=false")
    components, dm, network = build(cfg)
    dm.setup()
    assert dm.tensors["d2"] is dm.tensors["d1"] and dm.n("d2") == cfg.n1


def test_ablation_joint_training_moves_both_layers_and_skips_stage2(tmp_path):
    from mim_lightning.training.run import train

    cfg = tiny_config("stage1.joint=true", "stage1.lr=0.5", "model.init_scale=0.5")
    components, dm, network = build(cfg)
    a0 = network.a.detach().clone()
    run_stage1(cfg, components, dm, network)
    assert not torch.equal(network.a.detach(), a0)          # second layer trained by plain GD
    results = train(cfg, tmp_path)
    assert results["stage2_loss"] is None and results["test_rel_mse"] > 0


def test_ablation_without_rescaling_keeps_row_norms():
    cfg = tiny_config("stage2.rescale=false")
    components, dm, network = build(cfg)
    run_stage1(cfg, components, dm, network)
    norms = network.W.detach().norm(dim=-1).clone()
    run_stage2(cfg, components, dm, network, [cfg.seed])
    assert torch.equal(network.W.detach().norm(dim=-1), norms)
    cfg = tiny_config()
    components, dm, network = build(cfg)
    run_stage1(cfg, components, dm, network)
    run_stage2(cfg, components, dm, network, [cfg.seed])
    assert torch.allclose(network.W.detach().norm(dim=-1), torch.ones(1, 32))


@pytest.mark.parametrize("activation", ["logcosh", "one_minus_cos", "quadratic"])
def test_float32_gradient_at_the_tiny_initialisation_is_accurate(activation):
    """Stage 1 starts at |w . x| ~ 1e-7, where a derivative formula that cancels (1 - 2 sigmoid(2u)
    for log cosh) loses most of its digits in float32: the full-batch gradient must match float64."""
    cfg = tiny_config(f"model.activation={activation}", "data.alpha=64", "stage1.loss=squared")
    components, dm, network = build(cfg)
    x, y = dm.tensors["d1"]
    grads = []
    for dtype in (torch.float32, torch.float64):
        W = network.W.detach().to(dtype).requires_grad_(True)
        f = torch.bmm(components.activation(torch.bmm(x.to(dtype), W.transpose(1, 2))),
                      network.a.to(dtype).unsqueeze(-1)).squeeze(-1)
        (components.stage1_loss(f, y.to(dtype)).mean()).backward()
        grads.append(W.grad.double())
    assert ((grads[0] - grads[1]).norm() / grads[1].norm()).item() < 1e-5
