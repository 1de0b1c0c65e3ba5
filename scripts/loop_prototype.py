"""Which loop for a full-batch step: the engine overhead per gradient step, measured side by side.

Same data, network and autograd maths; only the loop around them differs:
  hand     a plain Python loop (the floor)
  epoch    Lightning Trainer, one epoch per step (the first version's design)
  batches  Lightning Trainer, one epoch per stage and one batch per step
  fabric   Lightning Fabric driving the same LightningModule in a lean loop
Usage: python scripts/loop_prototype.py [--d 64] [--steps 200]
"""

import argparse
import time
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader

warnings.filterwarnings("ignore")


class Step(L.LightningModule):
    def __init__(self, x, y, m):
        super().__init__()
        self.automatic_optimization = False
        self.x, self.y = x, y
        self.W = torch.nn.Parameter(1e-3 * torch.randn(m, x.shape[1], generator=torch.Generator().manual_seed(1)))
        self.a = torch.ones(m)
        self.a[m // 2:] = -1

    def configure_optimizers(self):
        return torch.optim.SGD([self.W], lr=1.0, weight_decay=1.0)

    def loss(self):
        f = torch.nn.functional.softplus(2 * self.x @ self.W.T) @ self.a
        return 0.5 * (f - self.y).square().mean()

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        self.manual_backward(self.loss())
        opt.step()
        opt.zero_grad()


def hand(module, steps):
    opt = module.configure_optimizers()
    for _ in range(steps):
        module.loss().backward()
        opt.step()
        opt.zero_grad()


def trainer_loop(module, steps, per_epoch):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=steps // per_epoch, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(range(per_epoch), batch_size=None))


def fabric_loop(module, steps):
    fabric = L.Fabric(accelerator="cpu", devices=1)
    opt = module.configure_optimizers()
    module, opt = fabric.setup(module, opt)
    for _ in range(steps):
        fabric.backward(module.loss())
        opt.step()
        opt.zero_grad()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    d, n, m, steps = args.d, 8 * args.d, args.d, args.steps
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] * x[:, 1])
    runs = {
        "hand": lambda mod: hand(mod, steps),
        "epoch": lambda mod: trainer_loop(mod, steps, 1),
        "batches": lambda mod: trainer_loop(mod, steps, steps),
        "fabric": lambda mod: fabric_loop(mod, steps),
    }
    times = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved, medians
        for name, run in runs.items():
            module = Step(x, y, m)
            start = time.perf_counter()
            run(module)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    floor = sorted(times["hand"])[len(times["hand"]) // 2]
    print(f"d={d} n={n} m={m} steps={steps}: ms per step (median of {args.repeats}), ratio to the hand loop")
    for name, values in times.items():
        med = sorted(values)[len(values) // 2]
        print(f"  {name:8s} {med:7.3f} ms  x{med / floor:5.2f}")


if __name__ == "__main__":
    main()
