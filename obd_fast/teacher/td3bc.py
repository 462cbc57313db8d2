"""TD3+BC (Fujimoto & Gu 2021, arXiv 2106.06860), the cheap CPU teacher, in CORL's form.

Why TD3+BC and not IQL as the second teacher next to Cal-QL:

* Cost per update. Cal-QL's critic scores 1 + 3 x 10 actions per state and samples 2 x 10
  policy actions for them; TD3+BC's critic scores the data action and one target action, and its
  actor steps every second update; IQL trains a third (value) network on every update. So a
  TD3+BC update is an order of magnitude cheaper than a Cal-QL update and somewhat cheaper than
  an IQL-shaped one (``python benchmarks/teacher_updates.py --env all`` measures updates per
  second of all three on the machine at hand).
* No action sampling in the critic loss: the TD target uses the target actor plus clipped
  Gaussian noise, no log-probabilities and no entropy temperature, so there is less to get wrong
  and nothing stochastic for the teacher to carry: the actor is deterministic, ``act`` ignores
  the noise argument.
* Same data path as Cal-QL: (s, a, r, s', terminal) rows with states normalized by the dataset
  statistics (eps 1e-3) and the rewards as recorded (CORL's TD3+BC MuJoCo configs keep
  ``normalize_reward: false``, as its Cal-QL does; its IQL configs rescale MuJoCo rewards by the
  dataset's return range, a second reward convention the Q-values, and so Av-PBC's weights,
  would follow).

Defaults (:class:`TD3BCConfig`) and the update are CORL's ``algorithms/offline/td3_bc.py``:
alpha 2.5, target policy noise 0.2 clipped at 0.5 (both times ``max_action``), actor and target
updates every 2 critic updates, Adam lr 3e-4, Polyak rate 5e-3, discount 0.99, actor
obs -> 256 -> 256 -> act with tanh, twin critics (obs + act) -> 256 -> 256 -> 1, PyTorch's
default initialization. ``state_dict`` keys are CORL's (``actor``, ``actor_optimizer``,
``critic_1``, ``critic_1_optimizer``, ``critic_2``, ``critic_2_optimizer``, ``total_it``; the
networks' keys ``net.{0,2,4}``), plus the target networks (``actor_target``, ``critic_1_target``,
``critic_2_target``) so a run resumes exactly; CORL's loader ignores them.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.normalize import StateNormalizer
from ..policy import relu_mlp
from ..rl.networks import soft_update
from .base import NetworkTeacher


@dataclass
class TD3BCConfig:
    gamma: float = 0.99              # CORL's discount
    tau: float = 5e-3
    policy_noise: float = 0.2        # times max_action
    noise_clip: float = 0.5          # times max_action
    policy_freq: int = 2
    alpha: float = 2.5               # lambda = alpha / mean |Q(s, pi(s))|
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    actor_hidden: Sequence[int] = field(default_factory=lambda: (256, 256))
    critic_hidden: Sequence[int] = field(default_factory=lambda: (256, 256))
    reward_scale: float = 1.0        # applied by the trainer to the data (CORL: normalize_reward off)
    reward_bias: float = 0.0

    def __post_init__(self):
        if self.policy_freq < 1:
            raise ValueError(f"policy_freq must be >= 1, got {self.policy_freq}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["actor_hidden"], d["critic_hidden"] = list(self.actor_hidden), list(self.critic_hidden)
        return d


class DeterministicActor(nn.Module):
    """CORL's TD3+BC ``Actor``: ``max_action * tanh(net(obs))``, keys ``net.{0,2,..}``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), max_action: float = 1.0):
        super().__init__()
        self.obs_dim, self.act_dim, self.max_action = int(obs_dim), int(act_dim), float(max_action)
        self.hidden = tuple(int(h) for h in hidden)
        self.net = relu_mlp((self.obs_dim,) + self.hidden + (self.act_dim,))
        self.net.append(nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * self.net(obs)

    @torch.no_grad()
    def act(self, obs) -> np.ndarray:
        """One action from a single (already normalized) numpy/torch observation."""
        param = self.net[0].weight
        x = torch.as_tensor(obs, dtype=param.dtype, device=param.device).reshape(1, -1)
        return self(x)[0].cpu().numpy()


class TwinCritic(nn.Module):
    """CORL's TD3+BC ``Critic``: ``Q(s, a)`` from ``cat(s, a)``, keys ``net.{0,2,..}``; returns (B,)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.net = relu_mlp((self.obs_dim + self.act_dim,) + self.hidden + (1,))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], dim=-1)).squeeze(-1)


class TD3BC:
    """Deterministic actor, twin critics, their targets and optimizers; :meth:`update` is CORL's
    ``TD3_BC.train``."""

    def __init__(self, obs_dim: int, act_dim: int, config: Optional[TD3BCConfig] = None,
                 max_action: float = 1.0, device="cpu"):
        self.config = cfg = config if config is not None else TD3BCConfig()
        if not isinstance(cfg, TD3BCConfig):
            raise TypeError(f"TD3BC needs a TD3BCConfig, got {type(cfg).__name__}")
        self.obs_dim, self.act_dim, self.device = int(obs_dim), int(act_dim), torch.device(device)
        self.max_action = float(max_action)
        self.actor = DeterministicActor(obs_dim, act_dim, cfg.actor_hidden, max_action).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_1 = TwinCritic(obs_dim, act_dim, cfg.critic_hidden).to(device)
        self.critic_1_target = copy.deepcopy(self.critic_1).requires_grad_(False)
        self.critic_1_optimizer = torch.optim.Adam(self.critic_1.parameters(), lr=cfg.critic_lr)
        self.critic_2 = TwinCritic(obs_dim, act_dim, cfg.critic_hidden).to(device)
        self.critic_2_target = copy.deepcopy(self.critic_2).requires_grad_(False)
        self.critic_2_optimizer = torch.optim.Adam(self.critic_2.parameters(), lr=cfg.critic_lr)
        self.total_it = 0

    # common names with the SAC family (checkpoints, teachers)
    @property
    def critic1(self) -> TwinCritic:
        return self.critic_1

    @property
    def critic2(self) -> TwinCritic:
        return self.critic_2

    # -- the two objectives ---------------------------------------------------------------------
    def sample_target_noise(self, actions: torch.Tensor) -> torch.Tensor:
        """Clipped Gaussian noise for the target action, from the global torch generator."""
        cfg = self.config
        return (torch.randn_like(actions) * cfg.policy_noise * self.max_action).clamp(
            -cfg.noise_clip * self.max_action, cfg.noise_clip * self.max_action)

    def critic_loss(self, batch: Dict[str, torch.Tensor], noise: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Sum of both critics' MSE to ``r + gamma (1 - d) min_k Q'_k(s', clip(pi'(s') + noise))``.

        ``noise`` (B, act_dim) is used as given (already clipped); ``None`` draws it.
        """
        cfg = self.config
        with torch.no_grad():
            if noise is None:
                noise = self.sample_target_noise(batch["actions"])
            next_obs = batch["next_observations"]
            next_action = (self.actor_target(next_obs) + noise).clamp(-self.max_action, self.max_action)
            target_q = torch.min(self.critic_1_target(next_obs, next_action), self.critic_2_target(next_obs, next_action))
            target = batch["rewards"] + (1.0 - batch["terminals"]) * cfg.gamma * target_q
        q1 = self.critic_1(batch["observations"], batch["actions"])
        q2 = self.critic_2(batch["observations"], batch["actions"])
        l1, l2 = F.mse_loss(q1, target), F.mse_loss(q2, target)
        loss = l1 + l2
        return loss, {"critic_loss": float(loss.detach()), "critic_1_loss": float(l1.detach()),
                      "critic_2_loss": float(l2.detach()), "q1_mean": float(q1.detach().mean()),
                      "q2_mean": float(q2.detach().mean()), "target_q_mean": float(target.mean())}

    def actor_loss(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``-lambda mean Q1(s, pi(s)) + mean (pi(s) - a)^2`` with ``lambda = alpha / mean |Q1|``
        (lambda is a constant: no gradient flows through it)."""
        obs, actions = batch["observations"], batch["actions"]
        pi = self.actor(obs)
        q = self.critic_1(obs, pi)
        lmbda = self.config.alpha / q.abs().mean().detach()
        bc = F.mse_loss(pi, actions)
        loss = -lmbda * q.mean() + bc
        return loss, {"actor_loss": float(loss.detach()), "bc_loss": float(bc.detach()),
                      "lambda": float(lmbda), "q_pi_mean": float(q.detach().mean())}

    # -- one step -------------------------------------------------------------------------------
    def update(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        self.total_it += 1
        critic_loss, info = self.critic_loss(batch)
        self.critic_1_optimizer.zero_grad(set_to_none=True)
        self.critic_2_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()

        if self.total_it % self.config.policy_freq == 0:
            actor_loss, actor_info = self.actor_loss(batch)
            params = list(self.actor.parameters())
            grads = torch.autograd.grad(actor_loss, params)  # the critic's weight gradients are unused
            self.actor_optimizer.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.grad = g
            self.actor_optimizer.step()
            info.update(actor_info)
            tau = self.config.tau
            soft_update(self.critic_1_target, self.critic_1, tau)
            soft_update(self.critic_2_target, self.critic_2, tau)
            soft_update(self.actor_target, self.actor, tau)
        return info

    # -- checkpoints (CORL's keys plus the targets) ---------------------------------------------
    def state_dict(self) -> dict:
        return {
            "critic_1": self.critic_1.state_dict(), "critic_1_optimizer": self.critic_1_optimizer.state_dict(),
            "critic_2": self.critic_2.state_dict(), "critic_2_optimizer": self.critic_2_optimizer.state_dict(),
            "actor": self.actor.state_dict(), "actor_optimizer": self.actor_optimizer.state_dict(),
            "total_it": self.total_it,
            "actor_target": self.actor_target.state_dict(),
            "critic_1_target": self.critic_1_target.state_dict(),
            "critic_2_target": self.critic_2_target.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic_1", "critic_2"):
            getattr(self, name).load_state_dict(state[name])
            # CORL's checkpoints have no targets: CORL's own loader copies the online networks
            getattr(self, name + "_target").load_state_dict(state.get(name + "_target", state[name]))
        for name in ("actor_optimizer", "critic_1_optimizer", "critic_2_optimizer"):
            if name in state:
                getattr(self, name).load_state_dict(state[name])
        self.total_it = int(state.get("total_it", 0))


class DeterministicTeacher(NetworkTeacher):
    """A deterministic actor and a critic (TD3+BC); ``act`` ignores ``noise``."""

    stochastic = False

    def __init__(self, actor: DeterministicActor, critic: TwinCritic, normalizer: Optional[StateNormalizer] = None):
        super().__init__(actor, critic, normalizer, actor.obs_dim, actor.act_dim, actor.max_action)

    @torch.no_grad()
    def act(self, obs, noise=None):
        return self.actor(obs)
