"""Shared test helpers: random cases and an independent float64 meta-gradient.

Everything here is written from docs/design.md alone (flat layout, head formula, SGD semantics of
torch.optim.SGD) and deliberately does not use PolicySpec.unflatten/forward or obd_fast.reference,
so the library is checked against a second implementation rather than against itself.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch

import obd_fast
from obd_fast import PolicySpec


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (absolute error when b is zero)."""
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    diff = (a - b).norm().item()
    ref = b.norm().item()
    return diff if ref == 0.0 else diff / ref


def make_case(spec_kwargs: dict, N: int, B: int, steps: int, dtype=torch.float64, seed: int = 0,
              noise: bool = True) -> Dict:
    """Random inputs for one meta-gradient problem, drawn in float64 and cast to ``dtype`` (so a
    float32 case and its float64 copy hold the same values up to rounding)."""
    spec = PolicySpec(**spec_kwargs)
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    ma = spec.max_action
    theta0 = spec.init_params(generator=g, dtype=torch.float64) + 0.05 * torch.randn(spec.num_params, **f64)
    gaussian = spec.head == "gaussian" and noise
    d = dict(
        theta0=theta0,
        syn_obs=torch.randn(N, spec.obs_dim, **f64),
        syn_act=0.9 * ma * (2 * torch.rand(N, spec.act_dim, **f64) - 1),
        obs=torch.randn(B, spec.obs_dim, **f64),
        target=0.9 * ma * (2 * torch.rand(B, spec.act_dim, **f64) - 1),
        weight=torch.rand(B, **f64) + 0.1,
        inner_noise=torch.randn(steps, N, spec.act_dim, **f64) if gaussian else None,
        outer_noise=torch.randn(B, spec.act_dim, **f64) if gaussian else None,
    )
    d = {k: None if v is None else v.to(dtype) for k, v in d.items()}
    d["spec"] = spec
    d["steps"] = steps
    return d


def to_dtype(case: Dict, dtype) -> Dict:
    """A copy of a case with every tensor cast to ``dtype``."""
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


# -- independent policy ------------------------------------------------------------------------

def layout(spec: PolicySpec) -> Tuple[List[Tuple[int, int, int, int]], Optional[int], int]:
    """docs/design.md's flat layout recomputed from the spec's dimensions:
    ([(out, in, weight_offset, bias_offset), ...], head_offset or None, num_params)."""
    out_dim = 2 * spec.act_dim if spec.head == "gaussian" else spec.act_dim
    widths = [spec.obs_dim, *spec.hidden, out_dim]
    layers, off = [], 0
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers.append((fan_out, fan_in, off, off + fan_out * fan_in))
        off += fan_out * fan_in + fan_out
    if spec.head == "gaussian":
        return layers, off, off + 2
    return layers, None, off


def indep_forward(spec: PolicySpec, theta: torch.Tensor, obs: torch.Tensor,
                  noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The policy written from docs/design.md: ReLU MLP, then the gaussian or tanh head."""
    layers, head_off, _ = layout(spec)
    x = obs
    for i, (fo, fi, wo, bo) in enumerate(layers):
        w = theta[wo:wo + fo * fi].reshape(fo, fi)
        b = theta[bo:bo + fo]
        x = x @ w.t() + b
        if i < len(layers) - 1:
            x = x * (x > 0)  # ReLU
    ma, a = spec.max_action, spec.act_dim
    if spec.head == "tanh":
        return ma * torch.tanh(x)
    mean, log_std = x[:, :a], x[:, a:]
    if noise is None:
        return ma * torch.tanh(mean)
    m, o = theta[head_off], theta[head_off + 1]
    std = torch.exp(torch.clamp(m * log_std + o, -20.0, 2.0))
    return ma * torch.tanh(mean + std * noise)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    sq = (pred - target) ** 2
    if weight is not None:
        sq = sq * weight.unsqueeze(1)
    return sq.sum() / sq.numel()


# -- independent unroll ------------------------------------------------------------------------

def plain_unroll(spec: PolicySpec, theta0, syn_obs, syn_act, *, steps: int, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, inner_noise=None, create_graph: bool = True) -> torch.Tensor:
    """theta_T by plain SGD, as torch.optim.SGD does it (g = grad + wd * theta; buf = g at the first
    step, else momentum * buf + g; theta -= lr * buf), differentiable through every step when the
    inputs require grad and create_graph is True."""
    theta = theta0
    buf = None
    for t in range(steps):
        if not theta.requires_grad:
            theta = theta.detach().requires_grad_(True)
        eps = None if inner_noise is None else inner_noise[t]
        loss = weighted_mse(indep_forward(spec, theta, syn_obs, eps), syn_act)
        (g,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
        g = g + weight_decay * theta
        if momentum != 0.0:
            buf = g if buf is None else momentum * buf + g
            step = buf
        else:
            step = g
        theta = theta - lr * step
    return theta


def plain_unroll_meta_gradient(theta0, syn_obs, syn_act, spec: PolicySpec, obs, target, weight=None, *,
                               steps: int, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                               inner_noise=None, outer_noise=None,
                               outer_loss: Optional[Callable] = None):
    """(loss, d_syn_obs, d_syn_act) by a full create_graph unroll in float64 (same signature as
    obd_fast.meta_gradient).

    ``outer_loss(theta_T)`` replaces the weighted BC loss when given.
    """
    f64 = lambda t: None if t is None else t.detach().to(torch.float64)
    s = f64(syn_obs).requires_grad_(True)
    a = f64(syn_act).requires_grad_(True)
    th0 = f64(theta0).requires_grad_(True)
    theta_T = plain_unroll(spec, th0, s, a, steps=steps, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           inner_noise=f64(inner_noise))
    if outer_loss is None:
        loss = weighted_mse(indep_forward(spec, theta_T, f64(obs), f64(outer_noise)), f64(target), f64(weight))
    else:
        loss = outer_loss(theta_T)
    d_s, d_a = torch.autograd.grad(loss, (s, a))
    return loss.detach(), d_s, d_a


def case_meta_gradient(case: Dict, fn, **kw):
    """Call an obd_fast.meta_gradient-like function on a make_case dict."""
    c = case
    return fn(c["theta0"], c["syn_obs"], c["syn_act"], c["spec"], c["obs"], c["target"], c["weight"],
              steps=c["steps"], inner_noise=c["inner_noise"], outer_noise=c["outer_noise"], **kw)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.detach().to(torch.float64).reshape(-1)
    b = b.detach().to(torch.float64).reshape(-1)
    return (a @ b / (a.norm() * b.norm())).item()


PAPER_SPEC = dict(obs_dim=11, act_dim=3, hidden=(256, 256, 256), head="gaussian")
ODD_SPEC = dict(obs_dim=5, act_dim=2, hidden=(13, 9), max_action=1.3)
ODD_N, ODD_B = 7, 11


# -- composing unroll_bc with a user's outer loss ----------------------------------------------

def params_dict_from_theta(spec: PolicySpec, theta: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Views of theta under CORL's actor keys (built from docs/design.md's layout, not spec.unflatten)."""
    layers, head_off, _ = layout(spec)
    d = {}
    for i, (fo, fi, wo, bo) in enumerate(layers):
        d[f"base_network.{2 * i}.weight"] = theta[wo:wo + fo * fi].view(fo, fi)
        d[f"base_network.{2 * i}.bias"] = theta[bo:bo + fo]
    if head_off is not None:
        d["log_std_multiplier.constant"] = theta[head_off]
        d["log_std_offset.constant"] = theta[head_off + 1]
    return d


def user_loss_grad_check(backend: str, seed: int = 0) -> Tuple[float, float]:
    """d(Huber loss of a functional_call on unroll_bc's theta_T)/d(syn_obs, syn_act) for ``backend``,
    relative to the same user loss on the plain create_graph unroll. Returns the two errors."""
    from torch.func import functional_call

    case = make_case(ODD_SPEC, ODD_N, ODD_B, 4, torch.float64, seed)
    spec, c = case["spec"], case
    hyper = dict(steps=4, lr=0.1, momentum=0.9, weight_decay=1e-3)
    huber = torch.nn.HuberLoss(delta=0.1)

    s = c["syn_obs"].clone().requires_grad_(True)
    a = c["syn_act"].clone().requires_grad_(True)
    theta_T = obd_fast.unroll_bc(c["theta0"], s, a, spec, noise=c["inner_noise"], backend=backend, **hyper)
    module = spec.to_module(theta_T.detach())
    out = functional_call(module, params_dict_from_theta(spec, theta_T), (c["obs"], c["outer_noise"]))
    d_s, d_a = torch.autograd.grad(huber(out, c["target"]), (s, a))

    _, e_s, e_a = plain_unroll_meta_gradient(
        c["theta0"], c["syn_obs"], c["syn_act"], spec, c["obs"], c["target"], inner_noise=c["inner_noise"],
        outer_loss=lambda th: huber(indep_forward(spec, th, c["obs"], c["outer_noise"]), c["target"]), **hyper)
    return rel_err(d_s, e_s), rel_err(d_a, e_a)


# -- shared by the backend tests ---------------------------------------------------------------

# head, momentum, weight_decay, steps
GRID = [(head, momentum, wd, steps)
        for head in ("gaussian", "tanh") for momentum in (0.0, 0.9) for wd in (0.0, 1e-4) for steps in (1, 3, 10)]


def odd_case(head, steps, seed, noise=True):
    return make_case(dict(ODD_SPEC, head=head), ODD_N, ODD_B, steps, torch.float64, seed, noise=noise)


def check_against_plain(case, backend, tol, checkpoint_every=None, **hyper):
    """Assert the backend's (loss, d_syn_obs, d_syn_act) match the plain unroll; return them."""
    got = case_meta_gradient(case, obd_fast.meta_gradient, backend=backend, checkpoint_every=checkpoint_every,
                             **hyper)
    want = case_meta_gradient(case, plain_unroll_meta_gradient, **hyper)
    errs = [rel_err(g, w) for g, w in zip(got, want)]
    assert got[1].shape == case["syn_obs"].shape and got[2].shape == case["syn_act"].shape
    assert max(errs) <= tol, f"loss/d_syn_obs/d_syn_act relative errors {errs}"
    return got


# tiny problems for torch.autograd.gradcheck (float64, momentum and weight decay on)
def tiny_gradcheck_inputs(head):
    spec = PolicySpec(2, 2, (4,), head=head)
    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64, generator=g)
    theta0 = (spec.init_params(generator=g, dtype=torch.float64)
              + 0.1 * torch.randn(spec.num_params, **f64)).requires_grad_(True)
    syn_obs = torch.randn(3, 2, **f64).requires_grad_(True)
    syn_act = (0.9 * (2 * torch.rand(3, 2, **f64) - 1)).requires_grad_(True)
    noise = torch.randn(2, 3, 2, **f64) if head == "gaussian" else None
    return spec, theta0, syn_obs, syn_act, noise


def gradcheck_unroll(backend, head, **kw):
    spec, theta0, syn_obs, syn_act, noise = tiny_gradcheck_inputs(head)
    fn = lambda th, s, a: obd_fast.unroll_bc(th, s, a, spec, steps=2, lr=0.1, momentum=0.9, weight_decay=1e-2,
                                             noise=noise, backend=backend, **kw)
    assert torch.autograd.gradcheck(fn, (theta0, syn_obs, syn_act), eps=1e-6, atol=1e-7, rtol=1e-5)


def gradcheck_loss(backend, head):
    spec = PolicySpec(2, 2, (4,), head=head)
    g = torch.Generator().manual_seed(1)
    f64 = dict(dtype=torch.float64, generator=g)
    theta = (spec.init_params(generator=g, dtype=torch.float64)
             + 0.1 * torch.randn(spec.num_params, **f64)).requires_grad_(True)
    obs = torch.randn(5, 2, **f64).requires_grad_(True)
    target = torch.rand(5, 2, **f64).requires_grad_(True)
    weight = (torch.rand(5, **f64) + 0.1).requires_grad_(True)
    noise = torch.randn(5, 2, **f64) if head == "gaussian" else None
    fn = lambda th, o, t, w: obd_fast.weighted_bc_loss(th, spec, o, t, w, noise, backend=backend)
    assert torch.autograd.gradcheck(fn, (theta, obs, target, weight), eps=1e-6, atol=1e-8, rtol=1e-5)
