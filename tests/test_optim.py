"""§5's update rule: v ← μ·v − λ·ε·w − ε·g, w ← w + v, checked against the rule written out here."""

import pytest
import torch
from torch import nn

from alexrepro.recipe import OptimConfig
from alexrepro.training.optim import (
    PaperSGD,
    apply_hyperparameters,
    decay_groups,
    group_settings,
    make_optimizer,
    paper_update,
    set_lr,
)

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


def _param(values):
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_a_refused_step_changes_nothing_even_with_nan_gradients():
    p = _param([1.0, -0.5])
    opt = PaperSGD([{"params": [p], "weight_decay": WD}], lr=0.01, momentum=MU)
    p.grad = torch.tensor([0.3, -1.0], dtype=torch.float64)
    opt.step(ok=torch.tensor(True))
    w, v = p.detach().clone(), opt.velocity(p).clone()
    p.grad = torch.tensor([float("nan"), float("inf")], dtype=torch.float64)
    opt.step(ok=torch.tensor(False))
    assert torch.equal(p.detach(), w) and torch.equal(opt.velocity(p), v)
    p.grad = torch.tensor([0.2, 0.4], dtype=torch.float64)
    opt.step(ok=torch.tensor(True))  # and the next accepted step follows §5 from that state
    ew = [rule(w[i].item(), v[i].item(), [0.2, 0.4][i], 0.01) for i in range(2)]
    assert p.tolist() == pytest.approx([e[0] for e in ew], rel=1e-12)
    assert opt.velocity(p).tolist() == pytest.approx([e[1] for e in ew], rel=1e-12)


def test_velocity_and_a_resume_across_an_lr_change_follow_the_rule():
    grads = [[0.3, -1.0], [0.2, 0.4], [-0.5, 0.1], [0.7, 0.7]]
    lrs = [0.01, 0.01, 0.001, 0.001]
    p = _param([1.0, -0.5])
    opt = PaperSGD([{"params": [p], "weight_decay": WD}], lr=lrs[0], momentum=MU)
    w, v = [1.0, -0.5], [0.0, 0.0]
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True)):
        if t == 2:  # save, and go on in a fresh optimiser from the saved state at the new ε (a resume)
            saved = opt.state_dict()
            opt = PaperSGD([{"params": [p], "weight_decay": WD}], lr=0.5, momentum=MU)
            opt.load_state_dict(saved)
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        for i in range(2):
            w[i], v[i] = rule(w[i], v[i], g[i], lr)
        assert p.tolist() == pytest.approx(w, rel=1e-12)
        assert opt.velocity(p).tolist() == pytest.approx(v, rel=1e-12)


def test_a_checkpoint_holding_v_itself_loads_as_the_same_velocity():
    # Checkpoints written before the fused kernel kept §5's v as state["velocity"].
    p = _param([1.0, -0.5])
    opt = PaperSGD([{"params": [p], "weight_decay": WD}], lr=0.01, momentum=MU)
    old = {"state": {0: {"velocity": torch.tensor([0.02, -0.01], dtype=torch.float64)}},
           "param_groups": [{"lr": 0.01, "momentum": MU, "weight_decay": WD, "params": [0]}]}
    opt.load_state_dict(old)
    assert opt.velocity(p).tolist() == pytest.approx([0.02, -0.01], rel=1e-15)
    p.grad = torch.tensor([0.3, -1.0], dtype=torch.float64)
    opt.step()
    expect = [rule(w, v, g, 0.01)[0] for w, v, g in zip([1.0, -0.5], [0.02, -0.01], [0.3, -1.0], strict=True)]
    assert p.tolist() == pytest.approx(expect, rel=1e-12)


def test_fp16_grad_scaler_unscales_in_the_step_and_skips_overflow():
    p = nn.Parameter(torch.tensor([1.0, -0.5]))
    opt = PaperSGD([{"params": [p], "weight_decay": WD}], lr=0.01, momentum=MU)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = torch.tensor([0.3, -1.0])
    scaler.scale((p * g).sum()).backward()  # the gradient arrives ×1024
    scaler.step(opt)
    scaler.update()
    expect = [rule(w, 0.0, gi, 0.01)[0] for w, gi in zip([1.0, -0.5], g.tolist(), strict=True)]
    assert p.tolist() == pytest.approx(expect, rel=1e-6)
    before = p.detach().clone()
    opt.zero_grad()
    scaler.scale((p * float("inf")).sum()).backward()  # overflow: the scaler's found_inf refuses the step
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), before) and scaler.get_scale() == 512.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_fused_update_on_cuda_matches_the_cpu_and_refuses_on_the_device():
    torch.manual_seed(0)
    cpu = nn.Linear(64, 32)
    gpu = nn.Linear(64, 32).cuda()
    gpu.load_state_dict(cpu.state_dict())
    opts = [make_optimizer(m, OptimConfig(lr=0.01)) for m in (cpu, gpu)]
    grads = [(torch.randn(32, 64), torch.randn(32)) for _ in range(4)]
    for step, (gw, gb) in enumerate(grads):
        for m, opt in zip((cpu, gpu), opts, strict=True):
            dev = m.weight.device
            m.weight.grad, m.bias.grad = gw.to(dev), gb.to(dev)
            if step == 2:
                for g in opt.param_groups:
                    g["lr"] = 0.001  # an ε change on the way
            ok = torch.tensor(step != 1, device=dev)  # step 1 refused on the device
            opt.step(ok=ok)
    torch.testing.assert_close(gpu.weight.detach().cpu(), cpu.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opts[1].velocity(gpu.bias).cpu(), opts[0].velocity(cpu.bias), rtol=1e-5, atol=1e-7)


def test_bias_lr_mult_gives_biases_a_multiple_of_epsilon_through_schedule_changes_and_resumes():
    # Caffe's bvlc_alexnet: lr_mult 2 on every bias. With zero weight decay and one gradient step from
    # v = 0, §5 gives Δw = −ε·g for weights and −2ε·g for biases.
    lin = nn.Linear(3, 2)
    cfg = OptimConfig(lr=0.1, weight_decay=0.0, bias_lr_mult=2.0)
    opt = make_optimizer(lin, cfg)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    gw, gb = torch.full((2, 3), 0.5), torch.tensor([1.0, -1.0])
    lin.weight.grad, lin.bias.grad = gw.clone(), gb.clone()
    opt.step()
    torch.testing.assert_close(lin.weight.detach(), w0 - 0.1 * gw)
    torch.testing.assert_close(lin.bias.detach(), b0 - 0.2 * gb)
    set_lr(opt, 0.01)  # the schedule's ÷10: biases at 0.02
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.02])
    saved = opt.state_dict()
    for g in saved["param_groups"]:
        del g["lr_mult"]  # a checkpoint written before lr_mult existed
    fresh = make_optimizer(lin, cfg)
    fresh.load_state_dict(saved)
    apply_hyperparameters(fresh, cfg, lr=0.001)
    assert [g["lr"] for g in fresh.param_groups] == pytest.approx([0.001, 0.002])
    assert [g["weight_decay"] for g in fresh.param_groups] == [0.0, 0.0]
    # §5 by default: one ε for every parameter
    assert [g["lr"] for g in make_optimizer(lin, OptimConfig(lr=0.1)).param_groups] == [0.1, 0.1]


def _channels_last_conv_with_contiguous_grads(device):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3).to(device).to(memory_format=torch.channels_last)
    grads = [torch.randn(6, 4, 3, 3), torch.randn(6)]  # contiguous, as a gradient set by hand is
    return conv, grads


def _channels_last_rule_check(device):
    conv, (gw, gb) = _channels_last_conv_with_contiguous_grads(device)
    w0 = conv.weight.detach().cpu().clone()
    opt = make_optimizer(conv, OptimConfig(lr=0.01))
    for _ in range(2):
        conv.weight.grad, conv.bias.grad = gw.to(device), gb.to(device)
        opt.step()
    # §5 written out for two steps from v = 0: v1 = −λεw0 − εg, w1 = w0 + v1; v2 = 0.9·v1 − λεw1 − εg, w2 = w1 + v2
    v1 = -0.0005 * 0.01 * w0 - 0.01 * gw
    w1 = w0 + v1
    v2 = 0.9 * v1 - 0.0005 * 0.01 * w1 - 0.01 * gw
    torch.testing.assert_close(conv.weight.detach().cpu(), w1 + v2, rtol=1e-5, atol=1e-7)
    assert opt.state[conv.weight]["buffer"].stride() == conv.weight.stride()  # kept in the parameter's layout


def test_channels_last_weights_with_contiguous_gradients_follow_the_rule():
    _channels_last_rule_check("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_channels_last_weights_with_contiguous_gradients_follow_the_rule_on_cuda():
    # The fused CUDA kernel refuses tensors of different strides (check_fast_path_restrictions).
    _channels_last_rule_check("cuda")


def test_defaults_are_momentum_09_and_no_decay_and_lr_must_be_positive():
    # PaperSGD's own defaults (the recipe always passes its values): μ = 0.9 (§5), λ = 0.
    p = _param([1.0, -0.5])
    opt = PaperSGD([p], lr=0.01)
    assert (opt.param_groups[0]["momentum"], opt.param_groups[0]["weight_decay"]) == (0.9, 0.0)
    torch.testing.assert_close(opt.velocity(p), torch.zeros(2, dtype=torch.float64))  # before the first step
    w, v = [1.0, -0.5], [0.0, 0.0]
    for g in ([0.3, -1.0], [0.2, 0.4]):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        for i in range(2):
            v[i] = 0.9 * v[i] - 0.01 * g[i]
            w[i] += v[i]
    assert p.tolist() == pytest.approx(w, rel=1e-12)
    decayed = _param([1.0, -0.5])
    opt = PaperSGD([decayed], lr=0.1, momentum=MU, weight_decay=0.5)  # λ given for a plain list of parameters
    decayed.grad = torch.zeros(2, dtype=torch.float64)
    opt.step()
    assert decayed.tolist() == pytest.approx([0.95, -0.475], rel=1e-12)  # w·(1 − λε)
    for lr in (0.0, -0.1):
        with pytest.raises(ValueError, match=f"^learning rate must be positive, got {lr}$"):
            PaperSGD([p], lr=lr)
    with pytest.raises(KeyError, match="not a parameter of this optimiser"):
        opt.velocity(p)


def test_parameters_and_groups_without_gradients_are_passed_over():
    frozen, moving, other = _param([1.0]), _param([2.0]), _param([3.0])
    opt = PaperSGD([{"params": [frozen, moving]}, {"params": []}, {"params": [other]}], lr=0.1, momentum=MU)
    moving.grad, other.grad = torch.tensor([1.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)
    opt.step()
    assert frozen.tolist() == [1.0] and moving.tolist() == pytest.approx([1.9]) and other.tolist() == pytest.approx([3.1])
    frozen_group = PaperSGD([{"params": [frozen]}, {"params": [other]}], lr=0.1, momentum=MU)
    other.grad = torch.tensor([-1.0], dtype=torch.float64)
    frozen_group.step()  # a first group with no gradient at all: the next group still steps
    assert other.tolist() == pytest.approx([3.2]) and frozen.tolist() == [1.0]


def test_grad_scaler_hands_its_scale_and_overflow_flag_to_the_fused_step(monkeypatch):
    # No separate unscale pass and no host read of found_inf: the scaler gives both to the one kernel.
    p = nn.Parameter(torch.tensor([1.0, -0.5]))
    opt = PaperSGD([{"params": [p], "weight_decay": WD}], lr=0.01, momentum=MU)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fused, seen = torch._fused_sgd_, []

    def spy(*args, **kwargs):
        seen.append(tuple(None if kwargs[k] is None else kwargs[k].item() for k in ("grad_scale", "found_inf")))
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_sgd_", spy)
    scaler.scale((p * torch.tensor([0.3, -1.0])).sum()).backward()
    scaler.step(opt)
    assert seen == [(1024.0, 0.0)]
    assert p.tolist() == pytest.approx([rule(1.0, 0.0, 0.3, 0.01)[0], rule(-0.5, 0.0, -1.0, 0.01)[0]], rel=1e-6)
    # An overflow refuses the step even where the caller's flag says yes; the caller's no refuses a clean one.
    for overflow, ok in ((True, True), (False, False)):
        before = p.detach().clone()
        p.grad = torch.tensor([float("inf"), 1.0]) if overflow else torch.tensor([1.0, 1.0])
        opt.found_inf = torch.tensor(1.0 if overflow else 0.0)  # as GradScaler.step sets it
        opt.step(ok=torch.tensor(ok))
        del opt.found_inf
        assert torch.equal(p.detach(), before), (overflow, ok)
    assert seen[1:] == [(None, 1.0), (None, 1.0)]  # the refusal is the kernel's, on the device


def test_a_velocity_saved_in_another_memory_format_is_laid_out_as_the_weights():
    # A run resumed with another run.channels_last: the saved u is contiguous, the weights channels_last.
    conv, (gw, gb) = _channels_last_conv_with_contiguous_grads("cpu")
    w0 = conv.weight.detach().clone()
    opt = make_optimizer(conv, OptimConfig(lr=0.01))
    u = torch.randn(6, 4, 3, 3)  # u = −v/ε, contiguous
    opt.load_state_dict({"state": {0: {"buffer": u.clone()}, 1: {"buffer": torch.zeros(6)}},
                         "param_groups": [{**{k: v for k, v in g.items() if k != "params"}, "params": [i]}
                                          for i, g in enumerate(opt.param_groups)]})
    conv.weight.grad, conv.bias.grad = gw, gb
    opt.step()
    assert opt.state[conv.weight]["buffer"].stride() == conv.weight.stride()
    v = -0.01 * u
    torch.testing.assert_close(conv.weight.detach(), w0 + 0.9 * v - 0.0005 * 0.01 * w0 - 0.01 * gw,
                               rtol=1e-5, atol=1e-7)


def test_group_rules_and_the_recipes_momentum():
    # §5 writes the decay for "weight w": biases are not decayed unless the recipe says "all"; one ε for all.
    assert group_settings(0.0005, "weights") == ({"weight_decay": 0.0005, "lr_mult": 1.0},
                                                 {"weight_decay": 0.0, "lr_mult": 1.0})
    assert group_settings(0.0005, "all", 2.0) == ({"weight_decay": 0.0005, "lr_mult": 1.0},
                                                  {"weight_decay": 0.0005, "lr_mult": 2.0})
    with pytest.raises(ValueError, match="^weight_decay_on must be 'weights' or 'all', got 'bias'$"):
        group_settings(0.0005, "bias")
    lin = nn.Linear(2, 2)
    for name, kind in (("paper", PaperSGD), ("torch-sgd", torch.optim.SGD)):
        opt = make_optimizer(lin, OptimConfig(name=name, lr=0.03, momentum=0.5))
        assert isinstance(opt, kind)
        assert [(g["lr"], g["momentum"]) for g in opt.param_groups] == [(0.03, 0.5), (0.03, 0.5)]
    with pytest.raises(ValueError, match="^unknown optimiser 'adam'$"):
        make_optimizer(lin, OptimConfig(name="adam"))


def test_a_resume_takes_every_hyperparameter_of_the_new_recipe():
    lin = nn.Linear(2, 2)
    one = make_optimizer(lin, OptimConfig(lr=0.1, weight_decay=0.0005, weight_decay_on="all"))
    assert len(one.param_groups) == 1  # weights and biases alike: one group
    apply_hyperparameters(one, OptimConfig(lr=0.1, weight_decay=0.001, weight_decay_on="all", momentum=0.8), 0.01)
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in one.param_groups] == [(0.01, 0.8, 0.001)]
    two = make_optimizer(lin, OptimConfig(lr=0.1, weight_decay=0.0005))
    apply_hyperparameters(two, OptimConfig(weight_decay=0.002, bias_lr_mult=2.0), 0.01)
    assert [(g["lr"], g["weight_decay"], g["lr_mult"]) for g in two.param_groups] == [(0.01, 0.002, 1.0),
                                                                                      (0.02, 0.0, 2.0)]


def test_set_lr_on_groups_without_a_multiple_gives_them_epsilon():
    p = _param([1.0])
    opt = PaperSGD([{"params": [p]}], lr=0.1)  # a group made by hand: no lr_mult
    set_lr(opt, 0.003)
    assert opt.param_groups[0]["lr"] == 0.003


def test_torch_sgd_starts_at_the_recipes_lr_and_velocity_names_a_stranger():
    lin = torch.nn.Linear(3, 2)
    opt = make_optimizer(lin, OptimConfig(name="torch-sgd", lr=0.037, momentum=0.9))
    assert [g["lr"] for g in opt.param_groups] == [0.037] * len(opt.param_groups)
    paper = make_optimizer(lin, OptimConfig(lr=0.037))
    with pytest.raises(KeyError, match="^'not a parameter of this optimiser'$"):
        paper.velocity(torch.nn.Parameter(torch.zeros(2)))
