"""What the distillation objectives need from a teacher: ``pi*`` and ``q*`` on normalized states.

Every teacher works on states normalized by the statistics it was trained with and carries that
:class:`~obd_fast.data.StateNormalizer`, so a synthetic set distilled from it can carry the same
one and nobody normalizes twice or with the wrong numbers.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data.normalize import StateNormalizer
from ..rl.networks import QNetwork, TanhGaussianActor


class Teacher:
    """Interface: ``act(obs, noise=None)`` -> (B, act_dim) actions; ``q(obs, act)`` -> (B,) values.

    ``obs`` are normalized states (B, obs_dim), float tensors on the teacher's device. ``noise``
    (B, act_dim) samples a stochastic policy (``None``: its deterministic action); deterministic
    teachers ignore it. ``q`` is the first critic, as the paper's Av-PBC weights use.
    """

    obs_dim: int
    act_dim: int
    max_action: float
    normalizer: Optional[StateNormalizer]
    stochastic: bool

    def act(self, obs: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device=None, dtype=None) -> "Teacher":
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError


class NetworkTeacher(Teacher):
    """An actor module and a critic module with matching sizes (shared by the concrete teachers)."""

    def __init__(self, actor: nn.Module, critic: nn.Module, normalizer: Optional[StateNormalizer],
                 obs_dim: int, act_dim: int, max_action: float):
        if (critic.obs_dim, critic.act_dim) != (obs_dim, act_dim):
            raise ValueError(f"actor is obs {obs_dim} -> act {act_dim} but the critic takes "
                             f"obs {critic.obs_dim} + act {critic.act_dim}")
        if normalizer is not None and len(normalizer.mean) != obs_dim:
            raise ValueError(f"normalizer has {len(normalizer.mean)} features, the actor takes {obs_dim}")
        self.actor = actor.eval().requires_grad_(False)
        self.critic = critic.eval().requires_grad_(False)
        self.normalizer = normalizer
        self.obs_dim, self.act_dim, self.max_action = obs_dim, act_dim, max_action

    @torch.no_grad()
    def q(self, obs, act):
        return self.critic(obs, act)

    def to(self, device=None, dtype=None):
        self.actor.to(device=device, dtype=dtype)
        self.critic.to(device=device, dtype=dtype)
        return self

    @property
    def device(self):
        return next(self.actor.parameters()).device


class ActorCriticTeacher(NetworkTeacher):
    """A tanh-Gaussian actor and a critic (Cal-QL, SAC, CORL checkpoints).

    ``act`` with noise is ``max_action * tanh(mean + std * noise)``: the same head as the core's
    gaussian policy, so the same noise gives the same action in both.
    """

    stochastic = True

    def __init__(self, actor: TanhGaussianActor, critic: QNetwork, normalizer: Optional[StateNormalizer] = None):
        super().__init__(actor, critic, normalizer, actor.spec.obs_dim, actor.spec.act_dim, actor.spec.max_action)

    @torch.no_grad()
    def act(self, obs, noise=None):
        return self.actor(obs, noise)


class FunctionTeacher(Teacher):
    """A teacher from two plain modules/functions (tests, custom pipelines, deterministic actors)."""

    def __init__(self, policy: nn.Module, critic: nn.Module, obs_dim: int, act_dim: int, max_action: float = 1.0,
                 normalizer: Optional[StateNormalizer] = None, stochastic: bool = False):
        self.policy, self.critic = policy, critic
        self.obs_dim, self.act_dim, self.max_action = int(obs_dim), int(act_dim), float(max_action)
        self.normalizer, self.stochastic = normalizer, stochastic

    @torch.no_grad()
    def act(self, obs, noise=None):
        return self.policy(obs, noise) if self.stochastic else self.policy(obs)

    @torch.no_grad()
    def q(self, obs, act):
        return self.critic(obs, act).reshape(len(obs))

    def to(self, device=None, dtype=None):
        self.policy.to(device=device, dtype=dtype)
        self.critic.to(device=device, dtype=dtype)
        return self

    @property
    def device(self):
        return next(iter(self.policy.parameters())).device
