"""The public optimizer API as a user's script meets it: the short import path, ``copy.deepcopy`` and
``pickle`` round trips whose next ``step()`` equals the original's, and ``skip_nonfinite`` on every
optimizer."""

import copy
import pickle

import pytest
import torch

from largebatch.optim import Lamb, Lars, RMSpropWarmup, param_groups

MAKERS = {
    "lars": lambda groups: Lars(groups, lr=0.5, momentum=0.9, nesterov=True, trust_coefficient=0.01),
    "lamb": lambda groups: Lamb(groups, lr=0.01, weight_decay=0.01),
    "rmsprop_warmup": lambda groups: RMSpropWarmup(
        groups, lr=0.1, steps_per_epoch=3, center_epochs=1.0, period_epochs=2.0, variant="smooth"
    ),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_round_trip_steps_like_the_original(name, how):
    model = _model()
    opt = MAKERS[name](param_groups(model, weight_decay=1e-3, norm_adaptation=False, bias_adaptation=False))
    for seed in range(2):
        _step(model, opt, seed)
    pair = (model, opt)
    model2, opt2 = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
    assert opt2 is not opt and list(opt2.param_groups[0]["params"])[0] is not list(model.parameters())[0]
    public = {k: v for k, v in vars(opt).items() if not k.startswith("_")}
    public2 = {k: v for k, v in vars(opt2).items() if not k.startswith("_")}
    assert public.keys() == public2.keys()
    for seed in (2, 3):  # the copy's next steps equal the original's, bitwise
        _step(model, opt, seed)
        _step(model2, opt2, seed)
        for a, b in zip(_params(model), _params(model2)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_skip_nonfinite_false_removes_the_optimizers_own_check(name):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    guarded = MAKERS[name]([p])
    guarded.step()
    assert guarded.skipped_steps == 1 and torch.equal(p.detach(), torch.ones(3))
    groups = [torch.nn.Parameter(torch.ones(3))]
    groups[0].grad = p.grad.clone()
    make = MAKERS[name]
    opt = make(groups)
    opt.skip_nonfinite = False  # the attribute and the constructor argument are the same switch
    opt.step()
    assert opt.skipped_steps == 0 and not torch.isfinite(groups[0].detach()).all()
    cls = type(opt)
    kwargs = {"steps_per_epoch": 3} if cls is RMSpropWarmup else {}
    q = torch.nn.Parameter(torch.ones(3))
    q.grad = p.grad.clone()
    cls([q], lr=0.1, skip_nonfinite=False, **kwargs).step()
    assert not torch.isfinite(q.detach()).all()
