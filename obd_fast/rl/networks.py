"""Actor and critic networks with CORL's ``state_dict`` keys.

The actor is the core's :class:`~obd_fast.policy.PolicyModule` (``base_network.{0,2,..}``,
``log_std_multiplier.constant``, ``log_std_offset.constant``) plus sampling with log-probabilities,
so a trained actor converts to the core's flat ``theta`` with ``spec.params_from_module``.
The critic is CORL's ``FullyConnectedQFunction`` (``network.{0,2,..}``, (obs + act) -> 1).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..policy import PolicyModule, PolicySpec, gaussian_mean_log_std, relu_mlp


def orthogonal_init_(sequential: nn.Sequential, last_gain: float = 1e-2) -> None:
    """CORL's ``init_module_weights``: orthogonal (gain sqrt 2) hidden layers, zero biases, and a
    small xavier-uniform last layer so initial actions and Q-values start near zero."""
    linears = [m for m in sequential if isinstance(m, nn.Linear)]
    for lin in linears[:-1]:
        nn.init.orthogonal_(lin.weight, gain=math.sqrt(2.0))
        nn.init.zeros_(lin.bias)
    nn.init.xavier_uniform_(linears[-1].weight, gain=last_gain)
    nn.init.zeros_(linears[-1].bias)


class TanhGaussianActor(PolicyModule):
    """CORL's ``TanhGaussianPolicy``: ``a = max_action * tanh(mean + std * eps)``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256, 256),
                 max_action: float = 1.0, orthogonal_init: bool = True):
        super().__init__(PolicySpec(obs_dim, act_dim, hidden, head="gaussian", max_action=max_action))
        if orthogonal_init:
            orthogonal_init_(self.base_network)

    def distribution_params(self, obs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_std)`` of the pre-tanh gaussian, with CORL's clamp (the core's head)."""
        return gaussian_mean_log_std(self.base_network(obs), self.spec.act_dim, self.log_std_multiplier(),
                                     self.log_std_offset())

    def sample(self, obs: torch.Tensor, deterministic: bool = False,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(action, log_prob)``; reparameterized, so gradients flow into the actor."""
        mean, log_std = self.distribution_params(obs)
        std = log_std.exp()
        if deterministic:
            pre_tanh = mean
        else:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            pre_tanh = mean + std * eps
        log_prob = tanh_gaussian_log_prob(pre_tanh, mean, log_std)
        return self.spec.max_action * torch.tanh(pre_tanh), log_prob

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-density of given actions (clipped just inside (-1, 1) before atanh)."""
        mean, log_std = self.distribution_params(obs)
        a = torch.clamp(actions / self.spec.max_action, -1 + 1e-6, 1 - 1e-6)
        return tanh_gaussian_log_prob(torch.atanh(a), mean, log_std)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True, generator: Optional[torch.Generator] = None):
        """One environment action from a single (already normalized) numpy/torch observation."""
        param = self.base_network[0].weight
        x = torch.as_tensor(obs, dtype=param.dtype, device=param.device).reshape(1, -1)
        action, _ = self.sample(x, deterministic=deterministic, generator=generator)
        return action[0].cpu().numpy()


def tanh_gaussian_log_prob(pre_tanh: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log pi(a) for a = tanh(u), u ~ N(mean, std^2), summed over action dims.

    The tanh Jacobian uses log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), which stays finite
    where tanh(u) rounds to +-1.
    """
    gaussian = (-0.5 * ((pre_tanh - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    jacobian = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
    return gaussian - jacobian


class QNetwork(nn.Module):
    """CORL's ``FullyConnectedQFunction``: ``Q(s, a)`` from ``cat(s, a)``, output shape (B,)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), orthogonal_init: bool = True):
        super().__init__()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.network = relu_mlp((self.obs_dim + self.act_dim,) + tuple(int(h) for h in hidden) + (1,))
        if orthogonal_init:
            orthogonal_init_(self.network, last_gain=1.0)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``obs`` (..., obs_dim) and ``actions`` (..., act_dim) with the same leading shape."""
        return self.network(torch.cat([obs, actions], dim=-1)).squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- (1 - tau) target + tau source``."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)
