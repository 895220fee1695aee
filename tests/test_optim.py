"""§5's update rule: v ← μ·v − λ·ε·w − ε·g, w ← w + v, checked against the rule written out here."""

import pytest
import torch
from torch import nn

from alexrepro.optim import PaperSGD, apply_hyperparameters, decay_groups, make_optimizer, paper_update
from alexrepro.recipe import OptimConfig

MU, WD = 0.9, 0.0005  # §5: momentum 0.9, weight decay 0.0005


def rule(w, v, g, eps):
    """§5 written out on plain floats."""
    v = 0.9 * v - 0.0005 * eps * w - eps * g
    return w + v, v


def test_paper_update_is_the_rule():
    w, v, g = torch.tensor([1.0, -2.0]), torch.tensor([0.1, 0.0]), torch.tensor([0.5, 3.0])
    w2, v2 = paper_update(w, v, g, lr=0.01, momentum=MU, weight_decay=WD)
    for i in range(2):
        ew, ev = rule(w[i].item(), v[i].item(), g[i].item(), 0.01)
        assert w2[i].item() == pytest.approx(ew, rel=1e-6) and v2[i].item() == pytest.approx(ev, rel=1e-6)


def _run(opt_name, grads, lrs):
    p = nn.Parameter(torch.tensor([1.0, -0.5], dtype=torch.float64))
    groups = [{"params": [p], "weight_decay": WD}]
    opt = PaperSGD(groups, lr=lrs[0], momentum=MU) if opt_name == "paper" else torch.optim.SGD(groups, lr=lrs[0], momentum=MU)
    out = []
    for g, lr in zip(grads, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().clone())
    return out


def test_optimiser_follows_rule_across_an_lr_change_and_torch_sgd_differs_there():
    grads = [[0.3, -1.0], [0.2, 0.4], [-0.5, 0.1], [0.7, 0.7], [0.1, -0.2]]
    lrs = [0.01, 0.01, 0.001, 0.001, 0.001]  # divided by 10 after two steps (§5)
    ours = _run("paper", grads, lrs)
    sgd = _run("sgd", grads, lrs)
    w, v = [1.0, -0.5], [0.0, 0.0]
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True)):
        for i in range(2):
            w[i], v[i] = rule(w[i], v[i], g[i], lr)
        assert ours[t].tolist() == pytest.approx(w, rel=1e-12, abs=1e-15)
    # Before the change the two rules agree; after it torch's velocity carries old gradients at the new ε.
    assert torch.allclose(ours[1], sgd[1], rtol=1e-12, atol=1e-15)
    assert not torch.allclose(ours[2], sgd[2], rtol=1e-6, atol=1e-9)
    assert (ours[2] - sgd[2]).abs().max() > 1e-4


def test_weight_decay_on_weights_only_spares_biases():
    lin = nn.Linear(3, 2)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt = make_optimizer(lin, OptimConfig(lr=0.1, weight_decay=0.5, weight_decay_on="weights"))
    assert isinstance(opt, PaperSGD)
    lin.weight.grad, lin.bias.grad = torch.zeros_like(lin.weight), torch.zeros_like(lin.bias)
    opt.step()
    # zero gradient: v = −λ·ε·w, so w ← w·(1 − λ·ε) = w·0.95; biases untouched
    assert torch.allclose(lin.weight, w0 * (1 - 0.5 * 0.1))
    assert torch.equal(lin.bias.detach(), b0)
    groups = decay_groups(lin, 0.5, "all")
    assert len(groups) == 1 and len(groups[0]["params"]) == 2


def test_torch_sgd_is_selectable_and_resume_uses_new_hyperparameters():
    lin = nn.Linear(2, 2)
    assert isinstance(make_optimizer(lin, OptimConfig(name="torch-sgd")), torch.optim.SGD)
    opt = make_optimizer(lin, OptimConfig(lr=0.5))
    saved = opt.state_dict()
    fresh = make_optimizer(lin, OptimConfig(lr=0.02))
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["lr"] == 0.5  # what torch does: the saved lr comes back (examples#816)
    apply_hyperparameters(fresh, OptimConfig(lr=0.02, momentum=0.8), lr=0.02)
    assert [g["lr"] for g in fresh.param_groups] == [0.02, 0.02]
    assert fresh.param_groups[0]["momentum"] == 0.8 and fresh.param_groups[1]["weight_decay"] == 0.0
