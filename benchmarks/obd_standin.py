"""A stand-in for the official OBD code's ``SynSetBPTT`` and its networks, and its inner loop in plain autograd.

Written for obd_fast's tests and benchmarks from the official code's interface (attribute names,
parameter structure, what ``inner_loop`` returns), not from its source: the classes here have the
same attributes and parameter names as the official ``TanhGaussianPolicy``, ``DetContPolicy``
(Linear/ReLU base of 400x300, a ``last`` layer, tanh in ``forward``), ``FullyConnectedQFunction``
and the synthetic set (two ``nn.Embedding`` tables), so ``obd_fast.compat.obd.inner_loop`` meets
what it would meet in the official code.

:meth:`StandInSynSetBPTT.official_style_inner_loop` is the official algorithm in plain autograd:
``inner_steps`` optimizer steps keeping a copy of the backbone before each, the outer loss, then
for every step in reverse one double-backward Hessian-vector product on the copy. With
``replay_generator`` set it draws its Gaussian noise in obd_fast's order and reuses each inner
step's noise in the reverse pass (unless ``resample_in_reverse``: the official code draws new
noise there); without it every forward samples afresh, as the official code does.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Optional, Sequence

import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution


class Scalar(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.constant = nn.Parameter(torch.tensor(value))


class StandInGaussianPolicy(nn.Module):
    """TanhGaussianPolicy's parameters and forward: (max_action * action, log_prob). ``noise``, when
    set, replaces the sampled standard normal (the tests replay noise through it)."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: float, hidden: Sequence[int] = (256, 256, 256)):
        super().__init__()
        widths = [obs_dim, *hidden, 2 * act_dim]
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
        self.base_network = nn.Sequential(*layers)
        for layer in self.base_network:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, gain=2 ** 0.5)
                nn.init.zeros_(layer.bias)
        self.log_std_multiplier = Scalar(1.0)
        self.log_std_offset = Scalar(-1.0)
        self.act_dim = act_dim
        self.max_action = max_action
        self.noise: Optional[torch.Tensor] = None

    def forward(self, observations: torch.Tensor, deterministic: bool = False):
        mean, log_std = self.base_network(observations).split(self.act_dim, dim=-1)
        log_std = self.log_std_multiplier.constant * log_std + self.log_std_offset.constant
        std = torch.exp(log_std.clamp(-20.0, 2.0))
        dist = TransformedDistribution(Normal(mean, std), TanhTransform(cache_size=1))
        if deterministic:
            action = torch.tanh(mean)
        elif self.noise is None:
            action = dist.rsample()
        else:
            action = torch.tanh(mean + std * self.noise)
        return self.max_action * action, dist.log_prob(action).sum(-1)


class StandInMLPBase(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int]):
        super().__init__()
        layers = []
        for fan_in, fan_out in zip([in_dim, *hidden[:-1]], hidden):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.seq_fcs = nn.Sequential(*layers)

    def forward(self, x):
        return self.seq_fcs(x)


class StandInDetContPolicy(nn.Module):
    """DetContPolicy's parameters (``base.seq_fcs.{0,2}``, ``last``, the latter also inside
    ``seq_append_fcs``) and forward: tanh of the last layer, no max_action."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (400, 300)):
        super().__init__()
        self.base = StandInMLPBase(obs_dim, hidden)
        self.last = nn.Linear(hidden[-1], act_dim)
        self.seq_append_fcs = nn.Sequential(self.last)
        self.tanh_action = True

    def forward(self, x):
        return torch.tanh(self.seq_append_fcs(self.base(x)))


class StandInCritic(nn.Module):
    """FullyConnectedQFunction: Q(obs, act) of shape (batch,)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        widths = [obs_dim + act_dim, *hidden]
        layers = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.network = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, observations, actions):
        return self.network(torch.cat([observations, actions], dim=-1)).squeeze(-1)


class StandInSynset(nn.Module):
    def __init__(self, observations: torch.Tensor, actions: torch.Tensor):
        super().__init__()
        self.observations = nn.Embedding(*observations.shape).to(observations.dtype)
        self.actions = nn.Embedding(*actions.shape).to(actions.dtype)
        with torch.no_grad():
            self.observations.weight.copy_(observations)
            self.actions.weight.copy_(actions)


def make_config(policy_type="gaussian", match_objective="offline_policy", q_weight=True, inner_steps=100,
                test_batch_num=10, lr=0.1, momentum=0.0, beta_weight=0.02, device="cpu"):
    """The official config's fields that the inner loop reads, as nested namespaces."""
    return SimpleNamespace(policy_type=policy_type, match_objective=match_objective, q_weight=q_weight,
                           beta_weight=beta_weight, device=device,
                           bptt=SimpleNamespace(inner_steps=inner_steps, test_batch_num=test_batch_num),
                           bptt_optim=SimpleNamespace(optimizer="SGD", lr=lr, momentum=momentum, weight_decay=0))


class StandInSynSetBPTT(nn.Module):
    """SynSetBPTT's attributes; ``inner_loop`` is the official-style BPTT below unless replaced."""

    def __init__(self, synset: StandInSynset, obs_dim: int, act_dim: int, max_action: float, config,
                 hidden: Optional[Sequence[int]] = None, dtype=torch.float32, seed: int = 0):
        super().__init__()
        self.synset = synset
        self.config = config
        self.policy_type = config.policy_type
        self.device = config.device
        self.obs_dim, self.act_dim, self.max_action = obs_dim, act_dim, max_action
        self.hidden, self.dtype = hidden, dtype
        self.replay_generator: Optional[torch.Generator] = None
        self.resample_in_reverse = False
        torch.manual_seed(seed)
        self.offline_policy = self.create_policy().eval()
        self.offline_critic = StandInCritic(obs_dim, act_dim).to(dtype=dtype, device=self.device).eval()

    def create_policy(self) -> nn.Module:
        extra = {} if self.hidden is None else {"hidden": self.hidden}
        if self.policy_type == "gaussian":
            policy = StandInGaussianPolicy(self.obs_dim, self.act_dim, self.max_action, **extra)
        else:
            policy = StandInDetContPolicy(self.obs_dim, self.act_dim, **extra)
        return policy.to(dtype=self.dtype, device=self.device)

    def create_optimizer(self, policy: nn.Module) -> torch.optim.Optimizer:
        opt = self.config.bptt_optim
        return torch.optim.SGD(policy.parameters(), lr=opt.lr, momentum=opt.momentum)

    def forward(self, test_dataloader):
        backbone = self.create_policy()
        return self.inner_loop(backbone, self.create_optimizer(backbone), test_dataloader)

    # -- the official objective ----------------------------------------------------------------
    def _get_pred_acts(self, policy_type, policy, obs):
        out = policy(obs)
        return out[0] if policy_type == "gaussian" else out

    def bc_loss(self, backbone, obs, actions):
        return ((self._get_pred_acts(self.policy_type, backbone, obs) - actions) ** 2).mean()

    def weighted_mse_loss(self, backbone, obs, actions, weight):
        sq = (self._get_pred_acts(self.policy_type, backbone, obs) - actions) ** 2
        return (sq * weight[:, None]).mean()

    def _sample_noise(self, policy, *shape):
        """Replay mode: the Gaussian backbone's next noise, drawn in obd_fast's order."""
        if self.replay_generator is not None and self.policy_type == "gaussian":
            policy.noise = torch.randn(*shape, generator=self.replay_generator, dtype=self.dtype).to(self.device)

    def outer_loss(self, backbone, test_dataloader):
        cfg, loss = self.config, 0.0
        for i, batch in enumerate(test_dataloader):
            if i == cfg.bptt.test_batch_num:
                break
            obs = torch.as_tensor(batch["obs"], dtype=self.dtype).to(self.device)
            if cfg.match_objective == "offline_data":
                target, weight = torch.as_tensor(batch["acts"], dtype=self.dtype).to(self.device), None
            else:
                target = self._get_pred_acts(self.policy_type, self.offline_policy, obs).detach()
                weight = cfg.beta_weight * self.offline_critic(obs, target).detach() if cfg.q_weight else None
            self._sample_noise(backbone, obs.shape[0], self.act_dim)
            if weight is None:
                loss = loss + self.bc_loss(backbone, obs, target)
            else:
                loss = loss + self.weighted_mse_loss(backbone, obs, target, weight)
        return loss / cfg.bptt.test_batch_num

    # -- the official algorithm in plain autograd ------------------------------------------------
    def official_style_inner_loop(self, backbone, backbone_opt, test_dataloader):
        cfg = self.config
        syn_obs = self.synset.observations.weight.to(self.device)
        syn_act = self.synset.actions.weight.to(self.device)
        if self.replay_generator is not None and self.policy_type == "gaussian":
            inner_noise = torch.randn(cfg.bptt.inner_steps, syn_obs.shape[0], self.act_dim,
                                      generator=self.replay_generator, dtype=self.dtype).to(self.device)
        copies = []
        for t in range(cfg.bptt.inner_steps):
            if self.replay_generator is not None and self.policy_type == "gaussian":
                backbone.noise = inner_noise[t]  # copied with the backbone: its reverse step reuses it
            loss = self.bc_loss(backbone, syn_obs, syn_act)
            backbone_opt.zero_grad()
            copies.append(copy.deepcopy(backbone).cpu())
            loss.backward()
            backbone_opt.step()
        loss = self.outer_loss(backbone, test_dataloader)
        self.synset.zero_grad()
        d_w = list(torch.autograd.grad(loss, list(backbone.parameters())))

        syn_obs = syn_obs.detach().requires_grad_(True)
        syn_act = syn_act.detach().requires_grad_(True)
        d_obs, d_act = torch.zeros_like(syn_obs), torch.zeros_like(syn_act)
        d_v = [torch.zeros_like(w) for w in d_w]  # adjoint of the momentum buffer's update
        lr, momentum = cfg.bptt_optim.lr, cfg.bptt_optim.momentum
        for w in reversed(copies):
            w.to(self.device)
            if self.resample_in_reverse:
                w.noise = None
            d_v = [v - lr * g for v, g in zip(d_v, d_w)]
            params = list(w.parameters())
            grads = torch.autograd.grad(self.bc_loss(w, syn_obs, syn_act), params, create_graph=True)
            hvp = torch.autograd.grad(grads, [syn_obs, syn_act] + params, grad_outputs=d_v)
            with torch.no_grad():
                d_obs += hvp[0]
                d_act += hvp[1]
                d_w = [g + h for g, h in zip(d_w, hvp[2:])]
            d_v = [momentum * v for v in d_v]
        return loss, (d_obs, d_act), tuple(d_w)

    inner_loop = official_style_inner_loop


def paper_problem(policy_type="gaussian", match_objective="offline_policy", q_weight=True, obs_dim=11, act_dim=3,
                  n_syn=256, batch=256, batches=10, test_batch_num=None, inner_steps=100, lr=0.1, momentum=0.0,
                  hidden=None, dtype=torch.float32, seed=0, max_action=1.0):
    """A stand-in SynSetBPTT (synthetic set drawn at random) and a test loader: ``batches`` batches of
    ``batch`` rows, or one batch per entry of ``batch`` when it is a list; each a dict of 'obs' and
    'acts' as the official loader gives. ``test_batch_num`` defaults to the number of batches."""
    g = torch.Generator().manual_seed(seed)
    sizes = [batch] * batches if isinstance(batch, int) else list(batch)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    act = lambda n: (0.9 * max_action * (2 * torch.rand(n, act_dim, generator=g, dtype=torch.float64) - 1)).to(dtype)
    synset = StandInSynset(rand(n_syn, obs_dim), act(n_syn))
    config = make_config(policy_type, match_objective, q_weight, inner_steps, test_batch_num or len(sizes), lr,
                         momentum)
    obd = StandInSynSetBPTT(synset, obs_dim, act_dim, max_action, config, hidden, dtype, seed)
    loader = [{"obs": rand(n, obs_dim), "acts": act(n)} for n in sizes]
    return obd, loader
