"""Soft actor-critic (Haarnoja et al. 2018) in CORL's form, the base of the online recipe and
of Cal-QL.

One :meth:`SAC.update` = entropy temperature step, actor step (with the new temperature), then the
twin-critic step (with the updated actor), then the Polyak update of the target critics: each loss
sees the previous steps' results, as in most online SAC code. CORL's ``cal_ql.py`` instead
computes all three losses before any step; :class:`~obd_fast.teacher.CalQL` overrides ``update``
to follow CORL exactly. The ``state_dict`` keys are CORL's, so checkpoints are interchangeable.
Subclasses change the critic objective by overriding :meth:`SAC.critic_loss`.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..policy import Scalar
from .networks import QNetwork, TanhGaussianActor, soft_update


@dataclass
class SACConfig:
    gamma: float = 0.99
    tau: float = 5e-3                # Polyak rate of the target critics
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    batch_size: int = 256
    actor_hidden: Sequence[int] = field(default_factory=lambda: (256, 256, 256))
    critic_hidden: Sequence[int] = field(default_factory=lambda: (256, 256))
    target_entropy: Optional[float] = None  # None: -act_dim
    backup_entropy: bool = True      # subtract alpha * log pi(a'|s') in the TD target (CORL Cal-QL: False)
    orthogonal_init: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["actor_hidden"], d["critic_hidden"] = list(self.actor_hidden), list(self.critic_hidden)
        return d


class SAC:
    """Actor, twin critics with targets, and the entropy temperature, with their optimizers."""

    def __init__(self, obs_dim: int, act_dim: int, config: Optional[SACConfig] = None,
                 max_action: float = 1.0, device="cpu"):
        self.config = cfg = config or SACConfig()
        self.obs_dim, self.act_dim, self.device = int(obs_dim), int(act_dim), torch.device(device)
        self.target_entropy = -float(act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        self.actor = TanhGaussianActor(obs_dim, act_dim, cfg.actor_hidden, max_action, cfg.orthogonal_init).to(device)
        self.critic1 = QNetwork(obs_dim, act_dim, cfg.critic_hidden, cfg.orthogonal_init).to(device)
        self.critic2 = QNetwork(obs_dim, act_dim, cfg.critic_hidden, cfg.orthogonal_init).to(device)
        self.critic1_target = copy.deepcopy(self.critic1).requires_grad_(False)
        self.critic2_target = copy.deepcopy(self.critic2).requires_grad_(False)
        self.log_alpha = Scalar(0.0).to(device)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_1_optimizer = torch.optim.Adam(self.critic1.parameters(), cfg.critic_lr)
        self.critic_2_optimizer = torch.optim.Adam(self.critic2.parameters(), cfg.critic_lr)
        self.alpha_optim = torch.optim.Adam(self.log_alpha.parameters(), cfg.alpha_lr)
        self.total_it = 0

    # -- the three objectives -------------------------------------------------------------------
    def alpha_loss(self, log_pi: torch.Tensor) -> torch.Tensor:
        return -(self.log_alpha() * (log_pi + self.target_entropy).detach()).mean()

    def policy_loss(self, obs: torch.Tensor, new_actions: torch.Tensor, log_pi: torch.Tensor,
                    alpha: torch.Tensor) -> torch.Tensor:
        q_new = torch.min(self.critic1(obs, new_actions), self.critic2(obs, new_actions))
        return (alpha * log_pi - q_new).mean()

    @torch.no_grad()
    def td_target(self, batch: Dict[str, torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
        next_obs = batch["next_observations"]
        next_actions, next_log_pi = self.actor.sample(next_obs)
        target_q = torch.min(self.critic1_target(next_obs, next_actions), self.critic2_target(next_obs, next_actions))
        if self.config.backup_entropy:
            target_q = target_q - alpha * next_log_pi
        return batch["rewards"] + (1.0 - batch["terminals"]) * self.config.gamma * target_q

    def critic_loss(self, batch: Dict[str, torch.Tensor], alpha: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Twin-critic TD loss (sum of both MSEs); the override point for conservative variants."""
        target = self.td_target(batch, alpha)
        q1 = self.critic1(batch["observations"], batch["actions"])
        q2 = self.critic2(batch["observations"], batch["actions"])
        td1, td2 = F.mse_loss(q1, target), F.mse_loss(q2, target)
        return td1 + td2, {"critic_td_loss": float((td1 + td2).detach()), "q1_mean": float(q1.mean().detach())}

    # -- one step -------------------------------------------------------------------------------
    def update(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        obs = batch["observations"]
        new_actions, log_pi = self.actor.sample(obs)

        alpha_loss = self.alpha_loss(log_pi)
        self.alpha_optim.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optim.step()
        alpha = self.log_alpha().exp().detach()

        policy_loss = self.policy_loss(obs, new_actions, log_pi, alpha)
        self.actor_optim.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.actor_optim.step()

        critic_loss, info = self.critic_loss(batch, alpha)
        self.critic_1_optimizer.zero_grad(set_to_none=True)
        self.critic_2_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()

        soft_update(self.critic1_target, self.critic1, self.config.tau)
        soft_update(self.critic2_target, self.critic2, self.config.tau)
        self.total_it += 1
        info.update(policy_loss=float(policy_loss.detach()), alpha=float(alpha), alpha_loss=float(alpha_loss.detach()),
                    critic_loss=float(critic_loss.detach()), log_pi=float(log_pi.mean().detach()))
        return info

    # -- checkpoints (CORL's keys) --------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic1": self.critic1.state_dict(), "critic2": self.critic2.state_dict(),
            "critic1_target": self.critic1_target.state_dict(), "critic2_target": self.critic2_target.state_dict(),
            "critic_1_optimizer": self.critic_1_optimizer.state_dict(),
            "critic_2_optimizer": self.critic_2_optimizer.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "sac_log_alpha": self.log_alpha.state_dict(),
            "sac_log_alpha_optim": self.alpha_optim.state_dict(),
            "total_it": self.total_it,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic1", "critic2", "critic1_target", "critic2_target"):
            getattr(self, name).load_state_dict(state[name])
        self.log_alpha.load_state_dict(_module_state(state["sac_log_alpha"]))
        for name, key in (("critic_1_optimizer", "critic_1_optimizer"), ("critic_2_optimizer", "critic_2_optimizer"),
                          ("actor_optim", "actor_optim"), ("alpha_optim", "sac_log_alpha_optim")):
            if key in state:
                getattr(self, name).load_state_dict(state[key])
        self.total_it = int(state.get("total_it", 0))


def _module_state(value) -> dict:
    """CORL pickles whole ``Scalar`` modules; ours saves their state dicts. Accept both."""
    return value.state_dict() if isinstance(value, torch.nn.Module) else value
