"""Cal-QL (Nakamoto et al. 2023, arXiv 2303.05479): the paper's teacher, in CORL's form.

Cal-QL is CQL on top of SAC whose conservative term is *calibrated*: the Q-values of policy
actions that enter the CQL log-sum-exp are first lower-bounded by the Monte-Carlo return of the
data, ``max(Q(s, a_pi), G(s))``, so the critic is never pushed below the value of the behavior
policy. Everything here follows CORL's ``algorithms/finetune/cal_ql.py`` (offline phase):

* defaults (:class:`CalQLConfig`): actor 256x3 tanh-Gaussian, critics 256x2, all layers
  orthogonal with gain sqrt(2) and zero bias, discount 0.99, Polyak rate 5e-3, policy and
  temperature lr 3e-5, critic lr 3e-4, target entropy -act_dim, no entropy backup,
  ``cql_alpha`` 10, 10 sampled actions per kind, importance sampling, temperature 1, no Lagrange
  multiplier, no difference clipping, rewards used as they are (CORL's ``normalize_reward`` is
  off for the MuJoCo tasks, so reward scale 1 and bias 0);
* one update (:meth:`CalQL.update`) computes the temperature, actor and critic losses from the
  networks *before* any of them steps, then steps the temperature, the actor, both critics and
  Polyak-averages the targets, as CORL's ``CalQL.train`` does;
* ``state_dict`` keys are CORL's (``SAC``'s plus ``cql_log_alpha`` and ``cql_log_alpha_optim``),
  with the learnable scalars stored as state dicts rather than pickled modules.

Batches are dicts of tensors with ``observations``, ``actions``, ``rewards``,
``next_observations``, ``terminals`` and ``mc_returns`` (discounted return-to-go of the row, same
discount as the TD target).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..policy import Scalar
from ..rl.networks import soft_update
from ..rl.sac import SAC, SACConfig, _module_state


@dataclass
class CalQLConfig(SACConfig):
    """CORL ``cal_ql.py`` defaults for offline training (``gamma`` is CORL's ``discount``,
    ``tau`` its ``soft_target_update_rate``, ``actor_lr``/``alpha_lr`` its ``policy_lr``,
    ``critic_lr`` its ``qf_lr``)."""

    gamma: float = 0.99
    tau: float = 5e-3
    actor_lr: float = 3e-5
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-5           # CORL's temperature optimizer uses policy_lr
    batch_size: int = 256
    actor_hidden: Sequence[int] = field(default_factory=lambda: (256, 256, 256))
    critic_hidden: Sequence[int] = field(default_factory=lambda: (256, 256))
    target_entropy: Optional[float] = None  # None: -act_dim
    backup_entropy: bool = False
    orthogonal_init: bool = True     # CORL: every Linear orthogonal (gain sqrt 2), zero bias
    alpha_multiplier: float = 1.0
    bc_steps: int = 0                # first updates train the actor by max-likelihood on the data
    cql_alpha: float = 10.0
    cql_n_actions: int = 10
    cql_importance_sample: bool = True
    cql_temp: float = 1.0
    cql_clip_diff_min: float = -math.inf
    cql_clip_diff_max: float = math.inf
    calibrated: bool = True          # False: plain CQL (no Monte-Carlo lower bound)
    reward_scale: float = 1.0        # applied by the trainer to the data, before the MC returns
    reward_bias: float = 0.0

    def __post_init__(self):
        if self.cql_n_actions < 1:
            raise ValueError(f"cql_n_actions must be >= 1, got {self.cql_n_actions}")
        if not self.cql_temp > 0:
            raise ValueError(f"cql_temp must be > 0, got {self.cql_temp}")


def corl_init_(sequential: nn.Sequential) -> None:
    """CORL's ``init_module_weights(m, orthogonal_init=True)`` applied to every Linear layer
    (the last one included): orthogonal weights with gain sqrt(2), zero biases."""
    for m in sequential:
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain=math.sqrt(2.0))
            nn.init.zeros_(m.bias)


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, d) -> (B, n, d), as CORL's ``extend_and_repeat(x, 1, n)``."""
    return x.unsqueeze(1).expand(x.shape[0], n, x.shape[1])


class CalQL(SAC):
    """SAC with Cal-QL's calibrated conservative critic objective (see the module docstring)."""

    def __init__(self, obs_dim: int, act_dim: int, config: Optional[CalQLConfig] = None,
                 max_action: float = 1.0, device="cpu"):
        cfg = config if config is not None else CalQLConfig()
        if not isinstance(cfg, CalQLConfig):
            raise TypeError(f"CalQL needs a CalQLConfig, got {type(cfg).__name__}")
        super().__init__(obs_dim, act_dim, cfg, max_action, device)
        if cfg.orthogonal_init:
            corl_init_(self.actor.base_network)
            corl_init_(self.critic1.network)
            corl_init_(self.critic2.network)
            self.critic1_target.load_state_dict(self.critic1.state_dict())
            self.critic2_target.load_state_dict(self.critic2.state_dict())
        # CORL keeps a CQL Lagrange multiplier and its optimizer even when the Lagrange version is
        # off; they are unused here but saved so checkpoints have the same keys.
        self.cql_log_alpha = Scalar(1.0).to(device)
        self.cql_alpha_optim = torch.optim.Adam(self.cql_log_alpha.parameters(), cfg.critic_lr)

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_cql_inputs(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Everything random in one critic loss, drawn from the global torch generator:

        ``next_actions`` / ``next_log_pi`` (B, act) / (B,): pi(s') for the TD target;
        ``random_actions`` (B, n, act): uniform on [-max_action, max_action];
        ``current_actions`` / ``current_log_pi`` (B, n, act) / (B, n): pi(s), n samples;
        ``next_policy_actions`` / ``next_policy_log_pi``: pi(s'), n samples (scored at s).
        """
        obs, next_obs = batch["observations"], batch["next_observations"]
        n, ma = self.config.cql_n_actions, self.actor.spec.max_action
        next_actions, next_log_pi = self.actor.sample(next_obs)
        random_actions = torch.rand(obs.shape[0], n, self.act_dim, dtype=obs.dtype, device=obs.device) * (2 * ma) - ma
        current_actions, current_log_pi = self.actor.sample(_repeat(obs, n))
        next_policy_actions, next_policy_log_pi = self.actor.sample(_repeat(next_obs, n))
        return dict(next_actions=next_actions, next_log_pi=next_log_pi, random_actions=random_actions,
                    current_actions=current_actions, current_log_pi=current_log_pi,
                    next_policy_actions=next_policy_actions, next_policy_log_pi=next_policy_log_pi)

    # -- the critic objective -------------------------------------------------------------------
    def critic_loss(self, batch: Dict[str, torch.Tensor], alpha: torch.Tensor,
                    samples: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """TD loss of both critics plus ``cql_alpha`` times the calibrated CQL gap of each.

        ``samples`` (see :meth:`sample_cql_inputs`) fixes the random inputs; ``None`` draws them.
        """
        cfg = self.config
        if samples is None:
            samples = self.sample_cql_inputs(batch)
        obs, actions = batch["observations"], batch["actions"]
        B, n = obs.shape[0], cfg.cql_n_actions

        with torch.no_grad():
            next_obs, next_actions = batch["next_observations"], samples["next_actions"]
            target_q = torch.min(self.critic1_target(next_obs, next_actions), self.critic2_target(next_obs, next_actions))
            if cfg.backup_entropy:
                target_q = target_q - alpha * samples["next_log_pi"]
            td_target = batch["rewards"] + (1.0 - batch["terminals"]) * cfg.gamma * target_q

        # One critic call per network: the data action and the 3n out-of-distribution actions,
        # all scored at s (CORL scores pi(s') samples at s too).
        all_actions = torch.cat([actions.unsqueeze(1), samples["random_actions"], samples["current_actions"],
                                 samples["next_policy_actions"]], dim=1)
        all_obs = _repeat(obs, 1 + 3 * n)
        bound = batch["mc_returns"].reshape(B, 1)
        info: Dict[str, float] = {}
        total_td, total_cql = 0.0, 0.0
        losses = []
        for k, critic in ((1, self.critic1), (2, self.critic2)):
            q_all = critic(all_obs, all_actions)
            q_pred = q_all[:, 0]
            q_rand, q_cur, q_next = q_all[:, 1:1 + n], q_all[:, 1 + n:1 + 2 * n], q_all[:, 1 + 2 * n:]
            td = F.mse_loss(q_pred, td_target)

            info[f"bound_rate_cql_q{k}_current_actions"] = float((q_cur < bound).float().mean())
            info[f"bound_rate_cql_q{k}_next_actions"] = float((q_next < bound).float().mean())
            if cfg.calibrated:  # Cal-QL: never push policy-action values below the data's return
                q_cur = torch.maximum(q_cur, bound)
                q_next = torch.maximum(q_next, bound)
            cql_std = torch.cat([q_rand, q_pred.unsqueeze(1), q_next, q_cur], dim=1).std(dim=1)
            if cfg.cql_importance_sample:
                random_density = self.act_dim * math.log(1.0 / (2.0 * self.actor.spec.max_action))
                cat_q = torch.cat([q_rand - random_density, q_next - samples["next_policy_log_pi"],
                                   q_cur - samples["current_log_pi"]], dim=1)
            else:
                cat_q = torch.cat([q_rand, q_pred.unsqueeze(1), q_next, q_cur], dim=1)
            ood = torch.logsumexp(cat_q / cfg.cql_temp, dim=1) * cfg.cql_temp
            diff = torch.clamp(ood - q_pred, cfg.cql_clip_diff_min, cfg.cql_clip_diff_max).mean()
            cql = cfg.cql_alpha * diff
            losses.append(td + cql)
            total_td = total_td + td.detach()
            total_cql = total_cql + cql.detach()
            info.update({
                f"qf{k}_loss": float(td.detach()), f"average_qf{k}": float(q_pred.detach().mean()),
                f"cql_q{k}_rand": float(q_rand.detach().mean()),
                f"cql_q{k}_current_actions": float(q_cur.detach().mean()),
                f"cql_q{k}_next_actions": float(q_next.detach().mean()),
                f"cql_std_q{k}": float(cql_std.detach().mean()),
                f"cql_qf{k}_ood": float(ood.detach().mean()),
                f"cql_qf{k}_diff": float(diff.detach()), f"cql_min_qf{k}_loss": float(cql.detach()),
            })
        loss = losses[0] + losses[1]
        info.update(critic_td_loss=float(total_td), cql_loss=float(total_cql), qf_loss=float(loss.detach()),
                    q1_mean=info["average_qf1"], average_target_q=float(td_target.mean()),
                    average_mc_return=float(bound.mean()))
        return loss, info

    # -- one step, in CORL's order --------------------------------------------------------------
    def update(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        cfg = self.config
        obs = batch["observations"]
        new_actions, log_pi = self.actor.sample(obs)
        alpha_loss = self.alpha_loss(log_pi)
        alpha = (self.log_alpha().exp() * cfg.alpha_multiplier).detach()

        actor_params = list(self.actor.parameters())
        if self.total_it < cfg.bc_steps:
            policy_loss = (alpha * log_pi - self.actor.log_prob(obs, batch["actions"])).mean()
        else:
            policy_loss = self.policy_loss(obs, new_actions, log_pi, alpha)
        # gradients for the actor only (the critics' weight gradients of this loss are unused)
        actor_grads = torch.autograd.grad(policy_loss, actor_params)
        critic_loss, info = self.critic_loss(batch, alpha)

        self.alpha_optim.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optim.step()

        self.actor_optim.zero_grad(set_to_none=True)
        for p, g in zip(actor_params, actor_grads):
            p.grad = g
        self.actor_optim.step()

        self.critic_1_optimizer.zero_grad(set_to_none=True)
        self.critic_2_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()

        soft_update(self.critic1_target, self.critic1, cfg.tau)
        soft_update(self.critic2_target, self.critic2, cfg.tau)
        self.total_it += 1
        info.update(policy_loss=float(policy_loss.detach()), alpha=float(alpha), alpha_loss=float(alpha_loss.detach()),
                    critic_loss=float(critic_loss.detach()), log_pi=float(log_pi.detach().mean()))
        return info

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["cql_log_alpha"] = self.cql_log_alpha.state_dict()
        state["cql_log_alpha_optim"] = self.cql_alpha_optim.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "cql_log_alpha" in state:
            self.cql_log_alpha.load_state_dict(_module_state(state["cql_log_alpha"]))
        if "cql_log_alpha_optim" in state:
            self.cql_alpha_optim.load_state_dict(state["cql_log_alpha_optim"])
