"""Evaluation: train fresh policies by BC on a synthetic set, roll them out, report D4RL scores.

The paper's protocol (``docs/design.md``): a fresh policy of the distillation architecture is trained by
BC for 100 plain SGD steps, lr 0.1, on the synthetic pairs (MSE between the tanh-Gaussian head's
*sampled* action and the target, fresh noise each step), then rolled out with its deterministic
action ``max_action * tanh(mean)``; scores are 100 * (R - R_random) / (R_expert - R_random).
The ensemble variant averages the deterministic actions of K such policies.

Beyond the paper's setting:

* cross-architecture: ``arch="mlp2" .. "mlp6"`` (2-6 hidden ReLU layers of 256) and ``"resmlp"``
  (a residual MLP: input layer, two residual blocks of two layers, the same head);
* cross-optimizer: ``optimizer="sgd" | "sgd-momentum" | "adam" | "adamw"``, each really used
  (:data:`DEFAULT_LR` lists the learning rates used when none is given);
* baselines: random selection of N real pairs, BC on the whole dataset (minibatch, see
  :data:`FULL_BC`), and the teacher itself.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .data.normalize import StateNormalizer
from .data.scores import normalized_score
from .policy import PolicySpec, add_log_std_scalars, tanh_gaussian_action
from .synset import SyntheticSet

OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "adamw")
# Learning rates when none is given. SGD: the paper's 0.1. SGD with momentum 0.9 multiplies the
# effective step by 10, so 0.01 keeps it at the paper's size. Adam/AdamW: their usual 1e-3
# (0.1 diverges), AdamW with weight decay 1e-2.
DEFAULT_LR = {"sgd": 0.1, "sgd-momentum": 0.01, "adam": 1e-3, "adamw": 1e-3}
SGD_MOMENTUM = 0.9
ADAMW_WEIGHT_DECAY = 1e-2
ARCHS = ("mlp2", "mlp3", "mlp4", "mlp5", "mlp6", "resmlp")
ARCH_WIDTH = 256
RESMLP_BLOCKS = 2
# BC on the whole dataset (the "BC" baseline): minibatches of 256 rows, Adam lr 1e-3, 5000 steps
# (CORL's BC runs 1M steps at lr 3e-4; 5000 steps are past the point where the return stops
# improving much on the medium datasets, at a small fraction of CORL's cost).
FULL_BC = dict(steps=5000, batch_size=256, optimizer="adam", lr=1e-3)


# ------------------------------------------------------------------------------- architectures
class ResidualPolicy(nn.Module):
    """``h = relu(W_in s)``, then ``blocks`` times ``h = relu(h + W2 relu(W1 h))``, then the
    tanh-Gaussian head of :class:`~obd_fast.policy.PolicySpec` (mean, log_std and the two
    learnable log-std scalars)."""

    def __init__(self, obs_dim: int, act_dim: int, width: int = ARCH_WIDTH, blocks: int = RESMLP_BLOCKS,
                 max_action: float = 1.0, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.act_dim, self.max_action = int(act_dim), float(max_action)
        self.inp = nn.Linear(obs_dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
                                    for _ in range(blocks))
        self.out = nn.Linear(width, 2 * act_dim)
        add_log_std_scalars(self)
        with torch.no_grad():
            for lin in [self.inp, self.out] + [m for b in self.blocks for m in b if isinstance(m, nn.Linear)]:
                w = torch.empty(lin.weight.shape, dtype=torch.float64)
                nn.init.orthogonal_(w, gain=math.sqrt(2.0), generator=generator)
                lin.weight.copy_(w)
                lin.bias.zero_()
            for b in self.blocks:  # residual branches start small so the blocks begin near identity
                b[2].weight.mul_(0.1)

    def forward(self, obs: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = torch.relu(self.inp(obs))
        for b in self.blocks:
            h = torch.relu(h + b(h))
        return tanh_gaussian_action(self.out(h), self.act_dim, self.max_action, self.log_std_multiplier.constant,
                                    self.log_std_offset.constant, noise)


def arch_spec(arch: Union[str, PolicySpec], obs_dim: int, act_dim: int, max_action: float = 1.0,
              head: str = "gaussian", width: int = ARCH_WIDTH) -> Union[PolicySpec, str]:
    """``"mlpK"`` -> the PolicySpec with K hidden layers of ``width`` (256); a PolicySpec as is;
    ``"resmlp"`` as is."""
    if isinstance(arch, PolicySpec):
        return arch
    if arch == "resmlp":
        return arch
    if isinstance(arch, str) and arch.startswith("mlp") and arch[3:].isdigit() and int(arch[3:]) >= 1:
        return PolicySpec(obs_dim, act_dim, (int(width),) * int(arch[3:]), head=head, max_action=max_action)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS} (or mlpK) or a PolicySpec")


def arch_name(arch: Union[str, PolicySpec]) -> str:
    if isinstance(arch, PolicySpec):
        return "mlp(" + ",".join(str(h) for h in arch.hidden) + ")"
    return str(arch)


def build_policy(arch: Union[str, PolicySpec], obs_dim: int, act_dim: int, max_action: float = 1.0,
                 generator: Optional[torch.Generator] = None, device=None, width: int = ARCH_WIDTH) -> nn.Module:
    """A freshly initialized policy module (``forward(obs, noise=None)``) for ``arch``; ``width``
    is the hidden width of the named architectures."""
    spec = arch_spec(arch, obs_dim, act_dim, max_action, width=width)
    if spec == "resmlp":
        module = ResidualPolicy(obs_dim, act_dim, width=width, max_action=max_action, generator=generator)
    else:
        if (spec.obs_dim, spec.act_dim) != (obs_dim, act_dim):
            raise ValueError(f"{spec} does not fit obs_dim={obs_dim}, act_dim={act_dim}")
        module = spec.to_module(spec.init_params(generator=generator))
    return module.to(device=device, dtype=torch.float32)


# ------------------------------------------------------------------------------- BC training
def make_optimizer(name: str, params, lr: Optional[float] = None) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    lr = DEFAULT_LR[name] if lr is None else float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=ADAMW_WEIGHT_DECAY)


def train_bc(obs: torch.Tensor, act: torch.Tensor, spec: Union[str, PolicySpec] = "mlp3", steps: int = 100,
             lr: Optional[float] = None, optimizer: str = "sgd", seed: int = 0, batch_size: Optional[int] = None,
             max_action: float = 1.0, device=None, width: int = ARCH_WIDTH) -> nn.Module:
    """BC: a fresh policy (``spec``: a PolicySpec or an :data:`ARCHS` name) trained for ``steps``
    steps of ``optimizer`` on the MSE between its sampled action (fresh head noise each step) and
    ``act``. ``batch_size=None`` uses all rows every step (the paper, on a synthetic set), else
    minibatches drawn with replacement. Returns the module in eval mode with ``train_losses``
    (one float per step). ``seed`` fixes the init, the noise and the minibatches."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    device = obs.device if device is None else torch.device(device)
    obs = obs.detach().to(device=device, dtype=torch.float32)
    act = act.detach().to(device=device, dtype=torch.float32)
    if obs.dim() != 2 or act.dim() != 2 or len(obs) != len(act) or len(obs) == 0:
        raise ValueError(f"obs and act must be (N, obs_dim) and (N, act_dim) with N >= 1, got "
                         f"{tuple(obs.shape)} and {tuple(act.shape)}")
    if isinstance(spec, PolicySpec):
        max_action = spec.max_action
    gen = torch.Generator().manual_seed(int(seed))
    policy = build_policy(spec, obs.shape[1], act.shape[1], max_action, generator=gen, device=device, width=width)
    opt = make_optimizer(optimizer, policy.parameters(), lr)
    stochastic = not (isinstance(spec, PolicySpec) and spec.head == "tanh")
    losses: List[float] = []
    policy.train()
    for _ in range(steps):
        if batch_size is None:
            x, y = obs, act
        else:
            idx = torch.randint(0, len(obs), (batch_size,), generator=gen).to(device)
            x, y = obs[idx], act[idx]
        noise = torch.randn(x.shape[0], act.shape[1], generator=gen).to(device) if stochastic else None
        loss = ((policy(x, noise) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    policy.eval().requires_grad_(False)
    policy.train_losses = losses
    return policy


class EnsemblePolicy(nn.Module):
    """The mean deterministic action of several policies."""

    def __init__(self, policies: Sequence[nn.Module]):
        super().__init__()
        if not policies:
            raise ValueError("an ensemble needs at least one policy")
        self.members = nn.ModuleList(policies)

    @torch.no_grad()
    def forward(self, obs: torch.Tensor, noise=None) -> torch.Tensor:
        return torch.stack([m(obs) for m in self.members]).mean(0)


# ------------------------------------------------------------------------------- rollouts
def evaluate_policy(policy: Callable[[torch.Tensor], torch.Tensor], env_id: str, episodes: int = 10, seed: int = 0,
                    normalizer: Optional[StateNormalizer] = None, device="cpu") -> np.ndarray:
    """Normalized (0-100) returns of ``episodes`` rollouts (env seeds ``seed .. seed+episodes-1``)."""
    from .rollout import rollout_returns

    returns = rollout_returns(policy, env_id, episodes=episodes, seed=seed, normalizer=normalizer, device=device)
    return np.asarray(normalized_score(env_id, returns), dtype=np.float64).reshape(-1)


def _summary(scores: List[np.ndarray], **info) -> dict:
    per_policy = [float(np.mean(s)) for s in scores]
    allscores = np.concatenate(scores)
    return dict(mean=float(np.mean(per_policy)), std=float(np.std(allscores)),
                policy_std=float(np.std(per_policy)), per_policy=per_policy,
                scores=[[float(v) for v in s] for s in scores], **info)


def evaluate_synset(synset: SyntheticSet, env_id: Optional[str] = None, episodes: int = 10, policies: int = 1,
                    ensemble: int = 1, arch: Union[None, str, PolicySpec] = None, optimizer: str = "sgd",
                    steps: Optional[int] = None, lr: Optional[float] = None, seed: int = 0, env_seed: int = 0,
                    device="cpu") -> dict:
    """Train ``policies`` x ``ensemble`` fresh policies by BC on the synthetic set and roll them out.

    Each of the ``policies`` evaluated units is the mean action of ``ensemble`` BC-trained
    networks (``ensemble=1``: one network, the paper's main protocol). ``arch=None`` is the
    distillation architecture (``synset.spec``); ``steps`` defaults to the distillation's inner
    steps (100), ``lr`` to the optimizer's :data:`DEFAULT_LR` (for SGD the distillation's inner lr).
    All policies meet the same env seeds ``env_seed ..``; BC seeds are ``seed * 1000 + i``.

    Returns a dict: ``mean`` (mean over policies of their mean normalized return), ``std`` (over
    all episodes), ``policy_std`` (over the policies' means), ``per_policy``, ``scores``, and the
    settings used.
    """
    env_id = env_id or synset.env_id
    if not env_id:
        raise ValueError("evaluate_synset: the synthetic set names no environment; pass env_id")
    if policies < 1 or ensemble < 1 or episodes < 1:
        raise ValueError(f"policies, ensemble and episodes must be >= 1, got {policies}, {ensemble}, {episodes}")
    arch = synset.spec if arch is None else arch
    steps = int(synset.config.get("inner_steps", 100)) if steps is None else int(steps)
    if lr is None and optimizer == "sgd":
        lr = float(synset.config.get("inner_lr", DEFAULT_LR["sgd"]))
    S, A = synset.observations.to(device), synset.actions.to(device)
    scores, k = [], 0
    for _ in range(policies):
        members = []
        for _ in range(ensemble):
            members.append(train_bc(S, A, arch, steps=steps, lr=lr, optimizer=optimizer, seed=seed * 1000 + k,
                                    max_action=synset.spec.max_action, device=device))
            k += 1
        policy = members[0] if ensemble == 1 else EnsemblePolicy(members)
        scores.append(evaluate_policy(policy, env_id, episodes, env_seed, synset.normalizer, device))
    return _summary(scores, env_id=env_id, episodes=episodes, policies=policies, ensemble=ensemble,
                    arch=arch_name(arch), optimizer=optimizer, steps=steps,
                    lr=DEFAULT_LR[optimizer] if lr is None else lr, n=len(synset))


def cross_evaluate(synset: SyntheticSet, archs: Sequence = (None,), optimizers: Sequence[str] = ("sgd",),
                   **kwargs) -> Dict[str, dict]:
    """:func:`evaluate_synset` for every (architecture, optimizer) pair; keys ``"arch/optimizer"``."""
    out = {}
    for arch in archs:
        for opt in optimizers:
            res = evaluate_synset(synset, arch=arch, optimizer=opt, **kwargs)
            out[f"{res['arch']}/{opt}"] = res
    return out


# ------------------------------------------------------------------------------- baselines
def random_selection(data, n: int = 256, seed: int = 0, normalizer: Optional[StateNormalizer] = None,
                     spec: Optional[PolicySpec] = None) -> SyntheticSet:
    """A "synthetic" set of ``n`` random real (state, action) pairs (the paper's random-selection
    baseline, and the default initialization of distillation)."""
    normalizer = normalizer or data.normalizer
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(data), generator=gen)[:n].numpy()
    obs = torch.as_tensor(normalizer.normalize(np.asarray(data.observations[idx], dtype=np.float64)),
                          dtype=torch.float32)
    act = torch.as_tensor(np.asarray(data.actions[idx]), dtype=torch.float32)
    spec = spec or PolicySpec(data.obs_dim, data.act_dim)
    return SyntheticSet(obs, act, spec, normalizer, objective=None, step=0, seed=seed, env_id=data.env_id,
                        data_source=str(data.metadata.get("source")) if data.metadata.get("source") else None,
                        config={"baseline": "random-selection", "n_syn": n})


def train_bc_full(data, spec: Union[str, PolicySpec, None] = None, normalizer: Optional[StateNormalizer] = None,
                  seed: int = 0, device="cpu", **overrides) -> nn.Module:
    """BC on every row of the dataset (minibatches; :data:`FULL_BC` settings unless overridden)."""
    normalizer = normalizer or data.normalizer
    cfg = dict(FULL_BC, **overrides)
    obs = torch.as_tensor(normalizer.normalize(np.asarray(data.observations, dtype=np.float64)), dtype=torch.float32)
    act = torch.as_tensor(np.asarray(data.actions), dtype=torch.float32)
    spec = spec or PolicySpec(data.obs_dim, data.act_dim)
    return train_bc(obs, act, spec, steps=cfg["steps"], lr=cfg["lr"], optimizer=cfg["optimizer"], seed=seed,
                    batch_size=cfg["batch_size"], device=device)


def evaluate_bc_full(data, env_id: Optional[str] = None, episodes: int = 10, policies: int = 1, seed: int = 0,
                     env_seed: int = 0, device="cpu", **overrides) -> dict:
    env_id = env_id or data.env_id
    if not env_id:
        raise ValueError("evaluate_bc_full: the dataset names no environment; pass env_id")
    scores = []
    for i in range(policies):
        policy = train_bc_full(data, seed=seed * 1000 + i, device=device, **overrides)
        scores.append(evaluate_policy(policy, env_id, episodes, env_seed, data.normalizer, device))
    return _summary(scores, env_id=env_id, episodes=episodes, policies=policies, **dict(FULL_BC, **overrides))


def evaluate_teacher(teacher, env_id: str, episodes: int = 10, env_seed: int = 0,
                     normalizer: Optional[StateNormalizer] = None) -> dict:
    """The teacher's own deterministic policy on states normalized with its normalizer (or
    ``normalizer`` when it has none)."""
    def act(obs):
        return teacher.act(obs.to(teacher.device), None)
    norm = teacher.normalizer if teacher.normalizer is not None else normalizer
    scores = evaluate_policy(act, env_id, episodes, env_seed, norm, teacher.device)
    return _summary([scores], env_id=env_id, episodes=episodes, policies=1)


BASELINES = ("random", "bc", "teacher")


def run_baselines(data=None, teacher=None, env_id: Optional[str] = None, which: Sequence[str] = BASELINES,
                  episodes: int = 10, policies: int = 1, n: int = 256, seed: int = 0,
                  spec: Optional[PolicySpec] = None, normalizer: Optional[StateNormalizer] = None,
                  ensemble: int = 1, **bc_overrides) -> Dict[str, dict]:
    """The paper's reference points. ``random``: BC (the synthetic-set protocol) on ``n`` random
    real pairs (``ensemble`` as in :func:`evaluate_synset`), states normalized with ``normalizer`` (default: the teacher's, else the data's; pass
    the synthetic set's to compare like with like); ``bc``: BC on the whole dataset (:data:`FULL_BC`
    unless overridden); ``teacher``: the teacher's own deterministic policy."""
    unknown = [w for w in which if w not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {BASELINES}")
    env_id = env_id or (data.env_id if data is not None else None)
    if not env_id:
        raise ValueError("baselines need an environment id")
    out = {}
    for name in which:
        if name in ("random", "bc") and data is None:
            raise ValueError(f"the {name!r} baseline needs the dataset")
        if name == "random":
            if normalizer is None and teacher is not None:
                normalizer = teacher.normalizer
            syn = random_selection(data, n, seed, normalizer=normalizer, spec=spec)
            out[name] = evaluate_synset(syn, env_id, episodes, policies, ensemble=ensemble, seed=seed)
        elif name == "bc":
            out[name] = evaluate_bc_full(data, env_id, episodes, policies, seed=seed, **bc_overrides)
        else:
            if teacher is None:
                raise ValueError("the 'teacher' baseline needs a teacher")
            out[name] = evaluate_teacher(teacher, env_id, episodes,
                                         normalizer=normalizer or (data.normalizer if data is not None else None))
    return out
