"""Module-level entry points for other OBD pipelines: unroll an ``nn.Module`` policy, ragged outer batches.

:func:`unroll_module` takes the user's own policy module and optimizer, runs the fused unroll on its
flat parameters (obd_fast.module_spec) and hands back a callable that behaves as the module with
theta_T in place of its parameters, so any outer loss written against the module works unchanged.
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import checks, ops
from .module_spec import ModuleLayout, call_with_parameters, module_layout
from .policy import PolicySpec

MODULE_PARAMS = "the module"


class UnrolledModule:
    """The module evaluated at theta_T: ``unrolled(obs, ...)`` runs ``module.forward`` on the trained
    parameters (a functional call: the module itself keeps its initial parameters).

    ``parameters()`` / ``named_parameters()`` are views of theta_T in the module's own order, so
    ``torch.autograd.grad(loss, list(unrolled.parameters()))`` is dL/d theta_T per parameter.
    ``theta`` is theta_T flat (obd_fast's layout), ``noise`` the inner noise the unroll used.
    """

    def __init__(self, module: nn.Module, layout: ModuleLayout, theta: torch.Tensor, noise: Optional[torch.Tensor]):
        self.module = module
        self.layout = layout
        self.theta = theta
        self.noise = noise
        self._params = layout.views(theta, module)

    @property
    def spec(self) -> PolicySpec:
        return self.layout.spec

    def __call__(self, *args, **kwargs):
        return call_with_parameters(self.module, self._params, args, kwargs)

    forward = __call__

    def named_parameters(self) -> Iterator[Tuple[str, torch.Tensor]]:
        return iter(self._params.items())

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(self._params.values())

    def __repr__(self) -> str:
        return f"UnrolledModule({type(self.module).__name__}, {self.spec})"


def unroll_module(module: nn.Module, syn_obs: torch.Tensor, syn_act: torch.Tensor, steps: int,
                  optimizer: Optional[torch.optim.Optimizer] = None, lr: Optional[float] = None, noise=None,
                  generator: Optional[torch.Generator] = None, *, momentum: Optional[float] = None,
                  weight_decay: Optional[float] = None, max_action: Optional[float] = None,
                  backend: str = "auto", checkpoint_every: Optional[int] = None, precision: str = "native",
                  memory_budget=None) -> UnrolledModule:
    """``module`` trained for ``steps`` SGD steps of BC on (syn_obs, syn_act), as an :class:`UnrolledModule`.

    Differentiable w.r.t. syn_obs, syn_act and the module's (initial) parameters. The SGD
    hyper-parameters come from ``optimizer`` (a ``torch.optim.SGD`` over the module's parameters;
    it is only read) or from ``lr`` / ``momentum`` / ``weight_decay``, not both. A tanh-Gaussian
    module samples one (N, act_dim) noise per step: ``noise`` (steps, N, act_dim), else drawn once
    from ``generator`` (or torch's default generator); the reverse pass reuses exactly that noise.
    ``max_action`` as :meth:`PolicySpec.from_module`; ``backend``, ``checkpoint_every``,
    ``precision`` and ``memory_budget`` as :func:`obd_fast.unroll_bc`.
    """
    layout = module_layout(module, max_action)
    spec = layout.spec
    lr, momentum, weight_decay = inner_hyperparameters(module, optimizer, lr, momentum, weight_decay)
    theta0 = layout.flatten(module)
    steps = checks.check_steps(steps)
    checks.check_tensor("syn_obs", syn_obs, (None, spec.obs_dim), theta0, like_name=MODULE_PARAMS)
    checks.check_tensor("syn_act", syn_act, (syn_obs.shape[0], spec.act_dim), theta0, like_name=MODULE_PARAMS)
    if noise is None and spec.head == "gaussian":
        noise = draw_noise((steps, syn_obs.shape[0], spec.act_dim), generator, theta0)
    theta_T = ops.unroll_bc(theta0, syn_obs, syn_act, spec, steps=steps, lr=lr, momentum=momentum,
                            weight_decay=weight_decay, noise=noise, backend=backend,
                            checkpoint_every=checkpoint_every, precision=precision, memory_budget=memory_budget)
    return UnrolledModule(module, layout, theta_T, noise)


def inner_hyperparameters(module: nn.Module, optimizer, lr, momentum, weight_decay) -> Tuple[float, float, float]:
    """(lr, momentum, weight_decay) from a torch.optim.SGD or from the arguments."""
    if optimizer is None:
        if lr is None:
            raise ValueError("give the inner learning rate: optimizer=torch.optim.SGD(...) or lr=")
        return lr, momentum or 0.0, weight_decay or 0.0
    if lr is not None or momentum is not None or weight_decay is not None:
        raise ValueError("give the SGD hyper-parameters through optimizer or as lr/momentum/weight_decay, not both")
    return sgd_hyperparameters(optimizer, module)


def sgd_hyperparameters(optimizer, module: Optional[nn.Module] = None) -> Tuple[float, float, float]:
    """(lr, momentum, weight_decay) of a fresh ``torch.optim.SGD`` that updates every parameter of
    ``module``; a ``ValueError`` for what obd_fast's unroll does not compute (another optimizer,
    nesterov, dampening, maximize, groups with different settings, momentum buffers already there)."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(f"optimizer must be a torch.optim.SGD (obd_fast unrolls SGD with momentum and weight "
                         f"decay), got {type(optimizer).__name__}")
    settings = set()
    for i, group in enumerate(optimizer.param_groups):
        for flag, ok in (("nesterov", False), ("dampening", 0), ("maximize", False)):
            if group.get(flag, ok) != ok:
                raise ValueError(f"optimizer param group {i} has {flag}={group[flag]!r}; obd_fast's unroll is "
                                 f"SGD with {flag}={ok!r}")
        settings.add((float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])))
    if len(settings) != 1:
        raise ValueError(f"optimizer param groups differ in (lr, momentum, weight_decay): {sorted(settings)}; "
                         "obd_fast's unroll uses one setting for all parameters")
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if module is not None:
        missing = [name for name, p in module.named_parameters() if id(p) not in owned]
        if missing:
            raise ValueError(f"optimizer does not update parameter(s) {missing} of the module; obd_fast trains all")
    if any(state.get("momentum_buffer") is not None for state in optimizer.state.values()):
        raise ValueError("optimizer already holds momentum buffers; obd_fast's unroll starts as a fresh SGD does")
    (setting,) = settings
    return setting


def draw_noise(shape: Sequence[int], generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise in ``like``'s dtype and device, from ``generator`` or torch's default."""
    if generator is None:
        return torch.randn(tuple(shape), dtype=like.dtype, device=like.device)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def batch_mean_weights(batch_sizes: Sequence[int], num_batches: Optional[int] = None, *,
                       dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Per-row weights that turn one weighted BC loss over concatenated batches into the mean of
    per-batch means.

    With rows of K batches of sizes n_1..n_K concatenated (B rows in all), ``weighted_bc_loss`` with
    ``weight=w`` is (1 / K) * sum_i mean over batch i, for w = B / (K * n_i) on batch i's rows; with
    equal sizes every weight is 1. ``num_batches`` replaces K in the divisor (code that divides by a
    configured batch count even when fewer batches came). Multiply by per-row weights of your own
    (e.g. Q-values) to weight within batches.
    """
    sizes = [_positive_int("batch_sizes[{}]".format(i), n) for i, n in enumerate(batch_sizes)]
    if not sizes:
        raise ValueError("batch_sizes is empty; at least one batch is needed")
    k = len(sizes) if num_batches is None else _positive_int("num_batches", num_batches)
    total = sum(sizes)
    return torch.cat([torch.full((n,), total / (k * n), dtype=dtype, device=device) for n in sizes])


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)
