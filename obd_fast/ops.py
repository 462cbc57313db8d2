"""The core ops of DESIGN.md's public contract, with backend dispatch.

``backend="fused"`` runs the compiled C++/CUDA implementation, ``"reference"`` the paper-style
autograd one, ``"auto"`` the fused one whenever the extension handles the tensors' device.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import checks, fused, memory, reference
from ._extension import resolve_backend
from .policy import PolicySpec


def _fused_options(backend: str, precision: str, tensor: torch.Tensor) -> None:
    checks.check_precision(precision)
    if precision != "native":
        if backend != "fused":
            raise ValueError(f"precision={precision!r} needs backend='fused' "
                             "(the reference backend computes in the input dtype)")
        if tensor.dtype != torch.float32:
            raise ValueError(f"precision={precision!r} needs float32 tensors, got {tensor.dtype}")
    if precision == "tf32" and tensor.device.type != "cuda":
        raise ValueError(f"precision='tf32' (tensor-core float32 products) needs CUDA tensors, got {tensor.device}")


def _constant(noise: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The head's noise is an input sample, not a parameter: no gradient flows to it. (The fused
    backend has no noise gradient; detaching keeps the reference backend the same function.)"""
    return None if noise is None else noise.detach()


def unroll_bc(theta0: torch.Tensor, syn_obs: torch.Tensor, syn_act: torch.Tensor, spec: PolicySpec, *, steps: int,
              lr: float, momentum: float = 0.0, weight_decay: float = 0.0, noise=None, backend: str = "auto",
              checkpoint_every: Optional[int] = None, precision: str = "native",
              memory_budget=None) -> torch.Tensor:
    """theta_T after ``steps`` SGD steps of BC on (syn_obs, syn_act) from theta0.

    Differentiable w.r.t. theta0, syn_obs and syn_act (not the noise). ``noise`` is None
    (deterministic head) or, for the gaussian head, one (N, act_dim) sample per step: a
    (steps, N, act_dim) tensor or a list.
    ``checkpoint_every=k`` (fused) keeps theta every k steps and recomputes activations in the
    backward; ``precision="bf16"`` (fused, float32) runs the matrix products in bfloat16,
    ``precision="tf32"`` (fused, float32, CUDA) on TF32 tensor cores.
    Without ``checkpoint_every`` the fused backend checks its tape against ``memory_budget``
    (bytes; default: obd_fast.memory) and checkpoints, with a warning, when it would not fit.
    """
    steps, lr, momentum, weight_decay, noise = checks.check_unroll_args(
        theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise)
    noise = _constant(noise)
    backend = resolve_backend(checks.check_backend(backend), theta0.device)
    _fused_options(backend, precision, theta0)
    checkpoint_every = checks.check_checkpoint_every(checkpoint_every, steps)
    if memory_budget is not None:
        memory.parse_budget(memory_budget)  # a bad value is an error whether or not the guard runs
    if backend == "fused" and checkpoint_every is None:
        checkpoint_every = memory.plan_checkpoint_every("unroll_bc", spec, syn_obs.shape[0], steps, momentum,
                                                        theta0.dtype, theta0.device, memory_budget)
    if backend == "reference":
        return reference.unroll_bc(theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise)
    cfg = fused.InnerConfig(steps, lr, momentum, weight_decay, checkpoint_every, precision)
    return fused.unroll_bc(theta0, syn_obs, syn_act, spec, noise, cfg)


def weighted_bc_loss(theta: torch.Tensor, spec: PolicySpec, obs: torch.Tensor, target: torch.Tensor,
                     weight: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None, *,
                     backend: str = "auto", precision: str = "native") -> torch.Tensor:
    """mean_{b,j} w_b (pi_theta(obs_b)_j - target_bj)^2, a scalar differentiable w.r.t. theta
    (and obs, target, weight; not the noise)."""
    noise = _constant(checks.check_loss_args(theta, spec, obs, target, weight, noise))
    backend = resolve_backend(checks.check_backend(backend), theta.device)
    _fused_options(backend, precision, theta)
    if backend == "reference":
        return reference.bc_loss(theta, spec, obs, target, weight, noise)
    return fused.weighted_bc_loss(theta, spec, obs, target, weight, noise, precision)


def meta_gradient(theta0: torch.Tensor, syn_obs: torch.Tensor, syn_act: torch.Tensor, spec: PolicySpec,
                  obs: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None, *, steps: int,
                  lr: float, momentum: float = 0.0, weight_decay: float = 0.0, inner_noise=None,
                  outer_noise: Optional[torch.Tensor] = None, backend: str = "auto",
                  checkpoint_every: Optional[int] = None, precision: str = "native",
                  memory_budget=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H, dH/d syn_obs, dH/d syn_act) for H = weighted_bc_loss(unroll_bc(theta0, ...), obs, target, weight).

    ``checkpoint_every``, ``precision`` and ``memory_budget`` as for :func:`unroll_bc`."""
    steps, lr, momentum, weight_decay, inner_noise = checks.check_unroll_args(
        theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, inner_noise, "inner_noise")
    outer_noise = checks.check_loss_args(theta0, spec, obs, target, weight, outer_noise, "theta0", "outer_noise")
    backend = resolve_backend(checks.check_backend(backend), theta0.device)
    _fused_options(backend, precision, theta0)
    checkpoint_every = checks.check_checkpoint_every(checkpoint_every, steps)
    if memory_budget is not None:
        memory.parse_budget(memory_budget)  # a bad value is an error whether or not the guard runs
    if backend == "fused" and checkpoint_every is None:
        checkpoint_every = memory.plan_checkpoint_every("meta_gradient", spec, syn_obs.shape[0], steps, momentum,
                                                        theta0.dtype, theta0.device, memory_budget,
                                                        n_outer=obs.shape[0])
    with torch.no_grad():
        if backend == "reference":
            return reference.meta_gradient(theta0, syn_obs, syn_act, spec, obs, target, weight, steps, lr, momentum,
                                           weight_decay, inner_noise, outer_noise)
        cfg = fused.InnerConfig(steps, lr, momentum, weight_decay, checkpoint_every, precision)
        return fused.meta_gradient(theta0, syn_obs, syn_act, spec, obs, target, weight, inner_noise, outer_noise, cfg)


def policy_forward(theta: torch.Tensor, obs: torch.Tensor, spec: PolicySpec, noise: Optional[torch.Tensor] = None,
                   *, backend: str = "auto") -> torch.Tensor:
    """Actions of the policy (no autograd on the fused path: for evaluation and rollouts)."""
    checks.check_spec(spec)
    checks.check_tensor("theta", theta, (spec.num_params,))
    checks.check_tensor("obs", obs, (None, spec.obs_dim), theta)
    noise = checks.outer_noise(spec, noise, obs.shape[0], theta)
    backend = resolve_backend(checks.check_backend(backend), theta.device)
    if backend == "reference":
        return spec.forward(theta, obs, noise)
    return fused.policy_forward(theta, obs, spec, noise)
