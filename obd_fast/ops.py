"""The core ops of the public contract (docs/design.md), with backend dispatch.

``backend="fused"`` runs the compiled C++/CUDA ops (obd_fast.fused), ``"reference"`` the
paper-style autograd implementation, ``"auto"`` the fused one whenever the extension handles the
tensors' device. The compiled ops validate their own arguments; the reference backend is checked
by obd_fast.checks against the same rules, in the same words.

The fused ops' kernel choices are keyword arguments: ``step_kernel``, ``grid_blocks`` and
``grid_profile`` (obd_fast.fused.KernelOptions); left as None they take the process-wide defaults
(the ``OBD_FAST_*`` environment variables as set when obd_fast was imported).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import checks, fused, memory, reference
from ._extension import resolve_backend
from .policy import PolicySpec


def _backend(backend: str, theta: torch.Tensor, theta_name: str) -> str:
    checks.check_backend(backend)
    checks.check_tensor_type(theta_name, theta)
    return resolve_backend(backend, theta.device)


def _reference_options(precision: str, checkpoint_every, steps: int, memory_budget) -> None:
    """The fused backend's options, which the reference backend accepts only at their defaults
    (checkpoint_every and memory_budget it checks and ignores)."""
    if checks.check_precision(precision) != "native":
        raise ValueError(f"precision={precision!r} needs backend='fused' "
                         "(the reference backend computes in the input dtype)")
    checks.check_checkpoint_every(checkpoint_every, steps)
    if memory_budget is not None:
        memory.parse_budget(memory_budget)


def _fused_config(op: str, spec: PolicySpec, theta0: torch.Tensor, syn_obs: torch.Tensor, steps: int, lr: float,
                  momentum: float, weight_decay: float, checkpoint_every, precision: str, memory_budget,
                  kernel: fused.KernelOptions, n_outer: int = 0) -> fused.InnerConfig:
    """The fused run's settings; without checkpoint_every the memory guard may choose one."""
    checks.check_choice_type("precision", precision, checks.PRECISIONS)
    checkpoint_every = checks.as_checkpoint_every(checkpoint_every)
    if memory_budget is not None:
        memory.parse_budget(memory_budget)  # a bad value is an error whether or not the guard runs
    if checkpoint_every is None and steps >= 1:  # (steps < 1: the op refuses it)
        n_syn = syn_obs.shape[0] if syn_obs.dim() > 0 else 0
        checkpoint_every = memory.plan_checkpoint_every(op, spec, n_syn, steps, momentum, theta0.dtype,
                                                        theta0.device, memory_budget, n_outer=n_outer, stacklevel=4)
    return fused.InnerConfig(steps, lr, momentum, weight_decay, checkpoint_every, precision, kernel)


def _constant(noise: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The head's noise is an input sample, not a parameter: no gradient flows to it. (The fused
    backend has no noise gradient; detaching keeps the reference backend the same function.)"""
    return None if noise is None else noise.detach()


def unroll_bc(theta0: torch.Tensor, syn_obs: torch.Tensor, syn_act: torch.Tensor, spec: PolicySpec, *, steps: int,
              lr: float, momentum: float = 0.0, weight_decay: float = 0.0, noise=None, backend: str = "auto",
              checkpoint_every: Optional[int] = None, precision: str = "native", memory_budget=None,
              step_kernel: Optional[str] = None, grid_blocks: Optional[int] = None,
              grid_profile: Optional[bool] = None) -> torch.Tensor:
    """theta_T after ``steps`` SGD steps of BC on (syn_obs, syn_act) from theta0.

    Differentiable w.r.t. theta0, syn_obs and syn_act (not the noise). ``noise`` is None
    (deterministic head) or, for the gaussian head, one (N, act_dim) sample per step: a
    (steps, N, act_dim) tensor or a list.
    ``checkpoint_every=k`` (fused) keeps theta every k steps and recomputes activations in the
    backward; ``precision="bf16"`` (fused, float32) runs the matrix products in bfloat16,
    ``precision="tf32"`` (fused, float32, CUDA) on TF32 tensor cores.
    Without ``checkpoint_every`` the fused backend checks its tape against ``memory_budget``
    (bytes; default: obd_fast.memory) and checkpoints, with a warning, when it would not fit.
    ``step_kernel``, ``grid_blocks``, ``grid_profile``: the fused kernel choices
    (obd_fast.fused.KernelOptions).
    """
    backend = _backend(backend, theta0, "theta0")
    if backend == "reference":
        steps, lr, momentum, weight_decay, noise = checks.check_unroll_args(
            theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise)
        _reference_options(precision, checkpoint_every, steps, memory_budget)
        return reference.unroll_bc(theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, _constant(noise))
    steps, lr, momentum, weight_decay, noise = checks.unroll_call_args(
        theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise)
    cfg = _fused_config("unroll_bc", spec, theta0, syn_obs, steps, lr, momentum, weight_decay, checkpoint_every,
                        precision, memory_budget, fused.kernel_options(step_kernel, grid_blocks, grid_profile))
    return fused.unroll_bc(theta0, syn_obs, syn_act, spec, _constant(noise), cfg)


def weighted_bc_loss(theta: torch.Tensor, spec: PolicySpec, obs: torch.Tensor, target: torch.Tensor,
                     weight: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None, *,
                     backend: str = "auto", precision: str = "native") -> torch.Tensor:
    """mean_{b,j} w_b (pi_theta(obs_b)_j - target_bj)^2, a scalar differentiable w.r.t. theta
    (and obs, target, weight; not the noise)."""
    backend = _backend(backend, theta, "theta")
    if backend == "reference":
        noise = checks.check_loss_args(theta, spec, obs, target, weight, noise)
        _reference_options(precision, None, 1, None)
        return reference.bc_loss(theta, spec, obs, target, weight, _constant(noise))
    checks.loss_call_args(theta, spec, obs, target, weight, noise)
    checks.check_choice_type("precision", precision, checks.PRECISIONS)
    return fused.weighted_bc_loss(theta, spec, obs, target, weight, _constant(noise), precision)


def meta_gradient(theta0: torch.Tensor, syn_obs: torch.Tensor, syn_act: torch.Tensor, spec: PolicySpec,
                  obs: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None, *, steps: int,
                  lr: float, momentum: float = 0.0, weight_decay: float = 0.0, inner_noise=None,
                  outer_noise: Optional[torch.Tensor] = None, backend: str = "auto",
                  checkpoint_every: Optional[int] = None, precision: str = "native", memory_budget=None,
                  return_theta0_grad: bool = False, step_kernel: Optional[str] = None,
                  grid_blocks: Optional[int] = None, grid_profile: Optional[bool] = None) -> Tuple[torch.Tensor, ...]:
    """(H, dH/d syn_obs, dH/d syn_act) for H = weighted_bc_loss(unroll_bc(theta0, ...), obs, target, weight);
    with ``return_theta0_grad=True`` also dH/d theta0 (the reverse pass computes it anyway).

    ``checkpoint_every``, ``precision``, ``memory_budget`` and the kernel choices as for :func:`unroll_bc`."""
    backend = _backend(backend, theta0, "theta0")
    with torch.no_grad():
        if backend == "reference":
            steps, lr, momentum, weight_decay, inner_noise = checks.check_unroll_args(
                theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, inner_noise, "inner_noise")
            outer_noise = checks.check_loss_args(theta0, spec, obs, target, weight, outer_noise, "theta0",
                                                 "outer_noise")
            _reference_options(precision, checkpoint_every, steps, memory_budget)
            out = reference.meta_gradient(theta0, syn_obs, syn_act, spec, obs, target, weight, steps, lr, momentum,
                                          weight_decay, inner_noise, outer_noise)
            return out if return_theta0_grad else out[:3]
        steps, lr, momentum, weight_decay, inner_noise = checks.unroll_call_args(
            theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, inner_noise, "inner_noise")
        checks.loss_call_args(theta0, spec, obs, target, weight, outer_noise, "theta0", "outer_noise")
        cfg = _fused_config("meta_gradient", spec, theta0, syn_obs, steps, lr, momentum, weight_decay,
                            checkpoint_every, precision, memory_budget,
                            fused.kernel_options(step_kernel, grid_blocks, grid_profile),
                            n_outer=obs.shape[0] if obs.dim() > 0 else 0)
        return fused.meta_gradient(theta0, syn_obs, syn_act, spec, obs, target, weight, inner_noise, outer_noise, cfg,
                                   return_theta0_grad)


def policy_forward(theta: torch.Tensor, obs: torch.Tensor, spec: PolicySpec, noise: Optional[torch.Tensor] = None,
                   *, backend: str = "auto") -> torch.Tensor:
    """Actions of the policy (no autograd on the fused path: for evaluation and rollouts)."""
    backend = _backend(backend, theta, "theta")
    if backend == "reference":
        checks.check_spec(spec)
        checks.check_tensor("theta", theta, (spec.num_params,))
        checks.check_tensor("obs", obs, (None, spec.obs_dim), theta)
        return spec.forward(theta, obs, checks.outer_noise(spec, noise, obs.shape[0], theta))
    checks.check_spec(spec)
    checks.check_tensor_type("obs", obs)
    if noise is not None:
        checks.check_tensor_type("noise", noise)
    return fused.policy_forward(theta, obs, spec, noise)
