"""The small protocol the loop relies on (training.loop.StageModule): both stage modules declare
it, a module missing part of it is refused by name, and a module with nothing else runs."""

import lightning as L
import pytest
import torch

from helpers import tiny_config
from mim_lightning.training.loop import StageModule, fit_stage, make_fabric
from mim_lightning.training.run import build
from mim_lightning.training.stages import Stage1Module, Stage2Module


def test_both_stage_modules_declare_the_protocol():
    cfg = tiny_config()
    components, dm, network = build(cfg)
    stage1 = Stage1Module(network, components.stage1_loss, cfg, dm.n("d1"), 1, lambda t: t, torch.zeros(1), dm.U)
    stage2 = Stage2Module(network, components.stage2_loss, cfg, dm.n("d2"), 1, lambda t: t, "ridge", [cfg.seed])
    for module in (stage1, stage2):
        assert isinstance(module, StageModule)
        assert module.last_loss is None and module.stage_optimizer is None   # declared before the loop sets them
    assert stage1.U is dm.U and stage1.shift.shape == (1,)


class Minimal(L.LightningModule):
    """Only the protocol: least squares on a 2-vector by full-batch gradient descent."""

    def __init__(self):
        super().__init__()
        self.network = torch.nn.Linear(2, 1, bias=False)
        self.last_loss, self.stage_optimizer, self.steps = None, None, 0

    def select_trained(self):
        pass

    def training_step(self, batch, batch_idx):
        x, y = batch
        return (self.network(x).squeeze(-1) - y).square().mean()

    def finish_step(self, optimizer):
        optimizer.step()
        optimizer.zero_grad()
        self.steps += 1


def test_a_module_with_only_the_protocol_trains():
    fabric = make_fabric(tiny_config())
    module = Minimal()
    x = torch.eye(2)
    y = torch.tensor([1.0, -2.0])
    calls = []

    class Hooks:
        def on_step_end(self, fabric, stage, module, step):
            calls.append(step)

    fit_stage(fabric, module, lambda: [(x, y)], "stage1", 1, 200, torch.optim.SGD(module.network.parameters(), lr=0.5),
              callbacks=[Hooks()])
    assert module.steps == 200 and calls == list(range(1, 201))
    assert torch.allclose(module.network.weight.detach(), torch.tensor([[1.0, -2.0]]), atol=1e-4)


def test_a_module_missing_part_of_the_protocol_is_named():
    module = Minimal()
    del module.last_loss
    with pytest.raises(TypeError, match="Minimal lacks last_loss"):
        fit_stage(make_fabric(tiny_config()), module, lambda: [], "stage1", 1, 1)
