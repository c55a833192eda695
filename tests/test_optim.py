import pytest
import torch

from bigmodel.config import OptimConfig
from bigmodel.engine.optim import build_optimizer, build_scheduler


def lrs(cfg: OptimConfig, steps_per_epoch: int = 10, epochs: int = 10) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_weight_decay_skips_biases():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, OptimConfig(name="sgd", weight_decay=0.1))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [(4, 3)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_each_optimizer_reduces_a_quadratic(name: str):
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    model = torch.nn.Module()
    model.w = w
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.1, nesterov=name == "sgd"))
    for _ in range(100):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert w.norm() < 0.5


def test_schedules():
    constant = lrs(OptimConfig(lr=0.1, schedule="constant"))
    assert set(constant) == {0.1}
    warm = lrs(OptimConfig(lr=0.1, schedule="constant", warmup_epochs=2))
    assert warm[0] == pytest.approx(0.001) and warm[10] < warm[19] and warm[20] == pytest.approx(0.1)
    step = lrs(OptimConfig(lr=0.1, schedule="step", step_epochs=3, gamma=0.5))
    assert (
        step[29] == pytest.approx(0.1)
        and step[30] == pytest.approx(0.05)
        and step[60] == pytest.approx(0.025)
    )
    cosine = lrs(OptimConfig(lr=0.1, schedule="cosine", min_lr=0.01))
    assert cosine[0] == pytest.approx(0.1) and cosine[50] == pytest.approx(0.055, abs=1e-3)
    assert cosine[-1] == pytest.approx(0.01, abs=1e-3)
    onecycle = lrs(OptimConfig(lr=0.1, schedule="onecycle"))
    peak = max(range(len(onecycle)), key=onecycle.__getitem__)
    assert onecycle[peak] == pytest.approx(0.1) and 25 <= peak <= 35
    assert onecycle[0] < 0.01 and onecycle[-1] < 1e-4
