"""The outer step's parts (obd_fast/outer.py) against the arithmetic written out: the draws' order,
the float64 norm and its clipping coefficient, and SGD with momentum rounding lr * buf."""
import copy

import numpy as np
import torch

from obd_fast.outer import OuterSGD, StepDraws, clip_grad_norm, grad_norm
from obd_fast.policy import PolicySpec


def test_draws_come_from_the_generator_in_a_fixed_order():
    spec = PolicySpec(5, 2, (16, 16))
    draws = StepDraws(spec, n_syn=8, inner_steps=3, real_rows=20, data_rows=97)
    b = draws.draw(torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    expect = (spec.init_params(generator=g), torch.randint(0, 97, (20,), generator=g),
              torch.randn(3, 8, 2, generator=g), torch.randn(20, 2, generator=g), torch.randn(20, 2, generator=g))
    for got, want in zip((b.theta0, b.index, b.inner_noise, b.outer_noise, b.teacher_noise), expect):
        assert torch.equal(got, want)
    assert not torch.equal(draws.draw(g).theta0, b.theta0)  # the stream moves on


def test_norm_is_float64_and_clipping_scales_by_its_coefficient():
    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 100.0):
        a, b = torch.randn(37, 11, generator=g) * scale, torch.randn(37, 3, generator=g) * scale
        norm = grad_norm((a, b))
        want = np.sqrt((a.double().numpy() ** 2).sum() + (b.double().numpy() ** 2).sum())
        assert abs(norm - want) <= 1e-12 * want
        pa, pb = torch.zeros_like(a), torch.zeros_like(b)
        pa.grad, pb.grad = a.clone(), b.clone()
        clip_grad_norm((pa, pb), 2.0, norm)
        coef = min(1.0, 2.0 / (norm + 1e-6))
        assert torch.equal(pa.grad, a * coef) and torch.equal(pb.grad, b * coef)
        pa.grad, pb.grad = a.clone(), b.clone()
        clip_grad_norm((pa, pb), 0.0, norm)  # 0: no clipping
        assert torch.equal(pa.grad, a) and torch.equal(pb.grad, b)


def sgd_by_hand(p, v, grads, lr, momentum):
    for grad in grads:
        v = v * momentum + grad
        p = p - lr * v
    return p, v


def test_outer_sgd_is_momentum_sgd_rounding_lr_times_buffer():
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(64, 11, generator=g)
    grads = [torch.randn(64, 11, generator=g) for _ in range(5)]
    for lr, momentum in ((0.1, 0.9), (0.37, 0.0)):
        p = p0.clone()
        opt = OuterSGD([p], lr=lr, momentum=momentum)
        for grad in grads:
            p.grad = grad
            opt.step()
        want_p, want_v = sgd_by_hand(p0, torch.zeros_like(p0), grads, lr, momentum)
        assert torch.equal(p, want_p) and torch.equal(opt.state[p]["momentum_buffer"], want_v)


def test_outer_sgd_state_dict_continues_the_same_steps():
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(10, 3, generator=g) for _ in range(4)]
    p = torch.randn(10, 3, generator=g)
    q = p.clone()
    opt = OuterSGD([p], lr=0.1, momentum=0.9)
    for grad in grads[:2]:
        p.grad = grad
        opt.step()
    q.copy_(p)
    other = OuterSGD([q], lr=0.1, momentum=0.9)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))  # as saved and read back
    for grad in grads[2:]:
        p.grad, q.grad = grad, grad.clone()
        opt.step()
        other.step()
    assert torch.equal(p, q)
