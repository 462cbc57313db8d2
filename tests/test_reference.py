"""The reference (autograd) backend against an independent full create_graph unroll, in float64."""
import pytest
import torch

import obd_fast
from helpers import (GRID, check_against_plain, gradcheck_loss, gradcheck_unroll, indep_forward, odd_case,
                     plain_unroll, rel_err, user_loss_grad_check)

TOL = 1e-10


@pytest.mark.parametrize("head,momentum,wd,steps", GRID)
def test_reference_meta_gradient_matches_plain_unroll(head, momentum, wd, steps):
    case = odd_case(head, steps, seed=steps)
    check_against_plain(case, "reference", TOL, lr=0.1, momentum=momentum, weight_decay=wd)


def test_reference_deterministic_gaussian_head():
    # noise=None: the gaussian head trains and is scored on tanh(mean); m and o get no gradient.
    case = odd_case("gaussian", 5, seed=1, noise=False)
    assert case["inner_noise"] is None
    check_against_plain(case, "reference", TOL, lr=0.1, momentum=0.9, weight_decay=1e-4)


def test_plain_unroll_is_torch_optim_sgd():
    # The yardstick itself: the independent unroll must step exactly like torch.optim.SGD,
    # and so must the reference unroll_bc.
    case = odd_case("gaussian", 4, seed=2)
    spec, c = case["spec"], case
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    theta = c["theta0"].clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], **hyper)
    for t in range(4):
        opt.zero_grad()
        ((indep_forward(spec, theta, c["syn_obs"], c["inner_noise"][t]) - c["syn_act"]) ** 2).mean().backward()
        opt.step()
    mine = plain_unroll(spec, c["theta0"], c["syn_obs"], c["syn_act"], steps=4, inner_noise=c["inner_noise"],
                        create_graph=False, **hyper)
    ref = obd_fast.unroll_bc(c["theta0"], c["syn_obs"], c["syn_act"], spec, steps=4, noise=c["inner_noise"],
                             backend="reference", **hyper)
    assert rel_err(mine, theta) <= 1e-14
    assert rel_err(ref, theta) <= 1e-14


@pytest.mark.parametrize("head", ["gaussian", "tanh"])
def test_reference_unroll_gradcheck(head):
    gradcheck_unroll("reference", head)


@pytest.mark.parametrize("head", ["gaussian", "tanh"])
def test_reference_loss_gradcheck(head):
    gradcheck_loss("reference", head)


def test_reference_unroll_composes_with_user_loss():
    # The drop-in path: any PyTorch outer loss (here Huber via functional_call) on theta_T.
    err_s, err_a = user_loss_grad_check("reference")
    assert err_s <= TOL and err_a <= TOL
