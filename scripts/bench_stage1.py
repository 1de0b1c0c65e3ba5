"""Benchmark: the framework's stage-1 step against a minimal hand-written PyTorch loop.

Both do the same full-batch gradient descent on the first layer (same data, same network, same
autograd maths) on the same device. The framework's per-step time is measured as
(time of a fit with 2T steps - time of a fit with T steps) / T, which cancels the one-off costs
(set-up, the first recorded step); the loop's likewise. The ratio is the median over repeats of
framework / loop measured back to back (the shared machine's speed drifts between repeats). The
framework's fit is the stage-1 loop of
``mim train`` with its default per-step metrics, TensorBoard logging and divergence guard. Runs are
interleaved and repeated; medians are reported. Prints a table and writes JSON.

    python scripts/bench_stage1.py                      # CPU, the default grid
    python scripts/bench_stage1.py --device cuda --sizes 4096:16:1024 --precision tf32
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mim_lightning.config import load_config
from mim_lightning.training.callbacks import DivergenceGuard
from mim_lightning.training.history import MetricHistory
from mim_lightning.training.loop import fit_stage, make_fabric
from mim_lightning.training.run import build, eigenvectors
from mim_lightning.training.tensorboard import Board
from mim_lightning.training.stages import Stage1Module


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def config(d: int, alpha: float, width: int, steps: int, device: str, extra=()):
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    return load_config(None, [f"data.d={d}", f"data.alpha={alpha}", f"model.width={width}", f"stage1.steps={steps}",
                              f"trainer.accelerator={accelerator}", "data.n_test=2", "data.alpha2=1",
                              "checkpoint.every_n_steps=1000000", *extra])


def framework_fit_seconds(cfg) -> float:
    """Wall time of one stage-1 fit as ``mim train`` runs it (Fabric loop, default per-step metrics,
    TensorBoard logging, the divergence guard); data generated beforehand, outside the timing."""
    with tempfile.TemporaryDirectory() as tmp:
        board = Board(Path(tmp) / "tensorboard")
        callbacks = [MetricHistory(cfg, board.scalars, eigenvectors(cfg)), DivergenceGuard(cfg)]
        fabric = make_fabric(cfg)
        components, dm, network = build(cfg, fabric=fabric)
        module = Stage1Module(network, components.stage1_loss, cfg, dm.n("d1"), 1, lambda t: t,
                              torch.zeros(1, device=fabric.device), dm.U)
        sync(fabric.device.type)
        start = time.perf_counter()
        fit_stage(fabric, module, lambda: dm.chunks("d1"), "stage1", 1, cfg.stage1.steps, module.configure_optimizers(),
                  callbacks=callbacks)
        sync(fabric.device.type)
        seconds = time.perf_counter() - start
        board.close()
        return seconds


def hand_loop_seconds(cfg, device: str) -> float:
    """The loop a researcher would write: same data, same init, same update, nothing else."""
    components, dm, network = build(cfg)
    x, y = (t.to(device) for t in dm.tensors["d1"])
    network = network.to(device)
    W = network.W
    network.a.requires_grad_(False)
    network.b.requires_grad_(False)
    optimizer = torch.optim.SGD([W], lr=cfg.stage1.lr, weight_decay=cfg.stage1.weight_decay)
    loss_fn, n = components.stage1_loss, x.shape[1]
    sync(device)
    start = time.perf_counter()
    for _ in range(cfg.stage1.steps):
        loss = loss_fn(network(x), y).sum() / n
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def per_step(measure, cfg_of, steps: int) -> float:
    return (measure(cfg_of(2 * steps)) - measure(cfg_of(steps))) / steps


def step_flops(d: int, n: int, m: int) -> float:
    """Matmul FLOPs of one full-batch step: forward X W^T and backward G^T X, 2 n d m each."""
    return 4.0 * n * d * m


def matmul_seconds(d: int, n: int, m: int, device: str, repeats: int = 10) -> float:
    """The two matmuls of a step alone (the hardware's throughput for these shapes)."""
    x, w = torch.randn(n, d, device=device), torch.randn(m, d, device=device)
    g = torch.randn(n, m, device=device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        x @ w.T
        g.T @ x
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["64:8:64", "256:8:256", "512:8:512", "1024:8:512"],
                        help="d:alpha:width triples")
    parser.add_argument("--steps", type=int, default=0,
                        help="T: fits of T and 2T steps are compared (0: T such that a fit takes about 2 s, "
                             "between 20 and 150 steps; longer fits at d = 64 let the default run's weights vanish)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config overrides")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", default="bench_stage1.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for size in args.sizes:
        d, alpha, width = size.split(":")
        d, alpha, width = int(d), float(alpha), int(width)
        n = round(alpha * d)

        def cfg_of(steps):
            return config(d, alpha, width, steps, args.device, args.extra)

        steps = args.steps
        if not steps:   # about 2 s per fit of T steps, from a short hand loop
            probe = per_step(lambda cfg: hand_loop_seconds(cfg, args.device), cfg_of, 5)
            steps = int(min(150, max(20, 2.0 / max(probe, 1e-6))))

        framework, hand = [], []
        for _ in range(args.repeats):  # interleaved
            framework.append(per_step(framework_fit_seconds, cfg_of, steps))
            hand.append(per_step(lambda cfg: hand_loop_seconds(cfg, args.device), cfg_of, steps))
        fw, hl = statistics.median(framework), statistics.median(hand)
        ratio = statistics.median(f / h for f, h in zip(framework, hand, strict=True))   # paired: same minute
        mm = matmul_seconds(d, n, width, args.device)
        flops = step_flops(d, n, width)
        rows.append({"d": d, "alpha": alpha, "n": n, "width": width, "device": args.device, "steps": steps,
                     "framework_ms": fw * 1e3, "hand_loop_ms": hl * 1e3, "ratio": ratio,
                     "framework_gflops": flops / fw / 1e9, "matmul_only_ms": mm * 1e3,
                     "fraction_of_matmul_throughput": mm / fw})
    header = f"{'d':>6} {'n':>7} {'m':>5} {'framework ms':>13} {'hand loop ms':>13} {'ratio':>6} {'GFLOP/s':>8} {'of matmul':>9}"
    print(header)
    for r in rows:
        print(f"{r['d']:>6} {r['n']:>7} {r['width']:>5} {r['framework_ms']:>13.2f} {r['hand_loop_ms']:>13.2f} "
              f"{r['ratio']:>6.3f} {r['framework_gflops']:>8.1f} {r['fraction_of_matmul_throughput']:>9.2f}")
    with open(args.json, "w") as handle:
        json.dump(rows, handle, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
