"""Reference backend: the meta-gradient computed the way the paper's code does it, with autograd.

Forward phase: plain SGD (momentum, weight decay as ``torch.optim.SGD``) on the synthetic pairs,
keeping theta_t of every inner step. Reverse phase: for t = T-1 .. 0, recompute the inner loss at
theta_t and take one double-backward Hessian-vector product. Unlike the paper's code the noise is
explicit, so this is the exact gradient of the function the forward phase computed.

It is slow by design and serves as the yardstick for the fused backends.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .policy import PolicySpec


def bc_loss(theta: torch.Tensor, spec: PolicySpec, obs: torch.Tensor, target: torch.Tensor,
            weight: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean_{b,j} w_b (pi_theta(obs_b)_j - target_bj)^2 (w = 1 when weight is None)."""
    sq = (spec.forward(theta, obs, noise) - target) ** 2
    if weight is not None:
        sq = sq * weight[:, None]
    return sq.mean()


def _step_noise(noise: Optional[torch.Tensor], t: int) -> Optional[torch.Tensor]:
    return None if noise is None else noise[t]


def unroll_forward(theta0: torch.Tensor, syn_obs: torch.Tensor, syn_act: torch.Tensor, spec: PolicySpec,
                   steps: int, lr: float, momentum: float, weight_decay: float,
                   noise: Optional[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """theta_T and the list [theta_0, ..., theta_{T-1}] (all detached)."""
    theta = theta0.detach()
    syn_obs, syn_act = syn_obs.detach(), syn_act.detach()
    buf = None
    thetas = []
    for t in range(steps):
        thetas.append(theta)
        with torch.enable_grad():
            th = theta.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(bc_loss(th, spec, syn_obs, syn_act, None, _step_noise(noise, t)), th)
        if weight_decay:
            g = g + weight_decay * theta
        buf = g if buf is None or momentum == 0.0 else momentum * buf + g
        theta = theta - lr * buf
    return theta, thetas


def unroll_backward(thetas: List[torch.Tensor], syn_obs: torch.Tensor, syn_act: torch.Tensor, spec: PolicySpec,
                    lr: float, momentum: float, weight_decay: float, noise: Optional[torch.Tensor],
                    grad_theta_T: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (d theta0, d syn_obs, d syn_act) of <grad_theta_T, theta_T>.

    Adjoint recursion: u_t = momentum * u_{t+1} - lr * a_{t+1} is the adjoint of step t's update
    direction; a_t = a_{t+1} + (H_t + weight_decay) u_t; (S, A) collect d<g_t, u_t>/d(S, A).
    """
    a_theta = grad_theta_T.detach()
    a_buf = torch.zeros_like(a_theta)
    d_obs = torch.zeros_like(syn_obs)
    d_act = torch.zeros_like(syn_act)
    for t in reversed(range(len(thetas))):
        u = momentum * a_buf - lr * a_theta
        with torch.enable_grad():
            th = thetas[t].detach().clone().requires_grad_(True)
            s = syn_obs.detach().clone().requires_grad_(True)
            a = syn_act.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(bc_loss(th, spec, s, a, None, _step_noise(noise, t)), th, create_graph=True)
            hu, ds, da = torch.autograd.grad((g * u).sum(), (th, s, a), allow_unused=True)
        a_theta = a_theta + hu + weight_decay * u
        if ds is not None:
            d_obs = d_obs + ds
        if da is not None:
            d_act = d_act + da
        a_buf = u
    return a_theta, d_obs, d_act


class UnrollBC(torch.autograd.Function):
    """unroll_bc with the paper-style reverse pass as its backward."""

    @staticmethod
    def forward(ctx, theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise):
        theta_T, thetas = unroll_forward(theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise)
        ctx.spec, ctx.hyper = spec, (lr, momentum, weight_decay)
        ctx.thetas = thetas
        ctx.save_for_backward(syn_obs, syn_act, noise if noise is not None else torch.empty(0))
        ctx.has_noise = noise is not None
        return theta_T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_theta_T):
        syn_obs, syn_act, noise = ctx.saved_tensors
        lr, momentum, weight_decay = ctx.hyper
        d_theta0, d_obs, d_act = unroll_backward(ctx.thetas, syn_obs, syn_act, ctx.spec, lr, momentum,
                                                 weight_decay, noise if ctx.has_noise else None, grad_theta_T)
        return d_theta0, d_obs, d_act, None, None, None, None, None, None


def unroll_bc(theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise):
    return UnrollBC.apply(theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise)


def meta_gradient(theta0, syn_obs, syn_act, spec, obs, target, weight, steps, lr, momentum, weight_decay,
                  inner_noise, outer_noise):
    """(H, dH/d syn_obs, dH/d syn_act, dH/d theta0) of the outer loss H after the unroll."""
    theta_T, thetas = unroll_forward(theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, inner_noise)
    with torch.enable_grad():
        th = theta_T.clone().requires_grad_(True)
        loss = bc_loss(th, spec, obs.detach(), target.detach(),
                       None if weight is None else weight.detach(), outer_noise)
        (v,) = torch.autograd.grad(loss, th)
    d_theta0, d_obs, d_act = unroll_backward(thetas, syn_obs, syn_act, spec, lr, momentum, weight_decay, inner_noise,
                                             v)
    return loss.detach(), d_obs, d_act, d_theta0
