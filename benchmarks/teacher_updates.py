"""Updates per second of the teachers' training step on this CPU (batch 256, paper widths).

    python benchmarks/teacher_updates.py [--env hopper|walker2d|halfcheetah|all] [--threads 1]
                                         [--seconds 5] [--no-iql] [--json FILE]

Measures :class:`obd_fast.teacher.CalQL` (actor 256x3, critics 256x2, 10 CQL actions per kind)
and :class:`obd_fast.teacher.TD3BC` (actor 256x2, critics 256x2; averaged over its
critic-only and critic+actor updates), and, as the reference point for choosing the cheap
teacher, an IQL-shaped update with CORL's ``iql.py`` sizes (Gaussian actor 256x2, value net
256x2, twin critics 256x2, expectile 0.7, beta 3): the same products IQL does, not a teacher.
Batches are random normalized-looking data; the cost does not depend on the values.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from obd_fast.teacher import CalQL, CalQLConfig, TD3BC, TD3BCConfig  # noqa: E402

ENVS = {"hopper": (11, 3), "walker2d": (17, 6), "halfcheetah": (17, 6)}


def batch(obs_dim: int, act_dim: int, n: int = 256, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(observations=torch.randn(n, obs_dim, generator=g), actions=torch.rand(n, act_dim, generator=g) * 2 - 1,
                rewards=torch.randn(n, generator=g), next_observations=torch.randn(n, obs_dim, generator=g),
                terminals=(torch.rand(n, generator=g) < 0.01).float(), mc_returns=50 * torch.randn(n, generator=g))


def _mlp(widths):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class IQLShaped:
    """CORL ``iql.py``'s update (value, twin critic and AWR actor steps, target Polyak update)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        self.q1, self.q2 = _mlp((obs_dim + act_dim, hidden, hidden, 1)), _mlp((obs_dim + act_dim, hidden, hidden, 1))
        self.q1_t, self.q2_t = copy.deepcopy(self.q1).requires_grad_(False), copy.deepcopy(self.q2).requires_grad_(False)
        self.v = _mlp((obs_dim, hidden, hidden, 1))
        self.actor = _mlp((obs_dim, hidden, hidden, act_dim))
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.q_opt = torch.optim.Adam(list(self.q1.parameters()) + list(self.q2.parameters()), 3e-4)
        self.v_opt = torch.optim.Adam(self.v.parameters(), 3e-4)
        self.a_opt = torch.optim.Adam(list(self.actor.parameters()) + [self.log_std], 3e-4)

    def update(self, b: dict) -> None:
        s, a, s2 = b["observations"], b["actions"], b["next_observations"]
        sa = torch.cat([s, a], 1)
        with torch.no_grad():
            target_q = torch.min(self.q1_t(sa), self.q2_t(sa)).squeeze(-1)
        adv = target_q - self.v(s).squeeze(-1)
        v_loss = (torch.abs(0.7 - (adv < 0).float()) * adv ** 2).mean()
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        with torch.no_grad():
            y = b["rewards"] + (1 - b["terminals"]) * 0.99 * self.v(s2).squeeze(-1)
        q_loss = F.mse_loss(self.q1(sa).squeeze(-1), y) + F.mse_loss(self.q2(sa).squeeze(-1), y)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        for t, m in ((self.q1_t, self.q1), (self.q2_t, self.q2)):
            for pt, pm in zip(t.parameters(), m.parameters()):
                pt.data.lerp_(pm.data, 5e-3)
        weights = torch.exp(3.0 * adv.detach()).clamp(max=100.0)
        dist = torch.distributions.Normal(torch.tanh(self.actor(s)), self.log_std.exp())
        policy_loss = (weights * -dist.log_prob(a).sum(-1)).mean()
        self.a_opt.zero_grad()
        policy_loss.backward()
        self.a_opt.step()


def block_size(agent, b: dict, seconds: float, group: int = 2) -> int:
    """Warm up, then a multiple of ``group`` updates (TD3+BC alternates two kinds) lasting ~seconds."""
    for _ in range(2 * group):
        agent.update(b)
    n = group
    while True:
        t = time.perf_counter()
        for _ in range(n):
            agent.update(b)
        if time.perf_counter() - t > seconds or n > 10_000:
            return n
        n *= 2


def rates(agents: dict, b: dict, seconds: float) -> dict:
    """Updates per second of each agent: best block, blocks of all agents interleaved in rounds so
    that load from other processes affects every algorithm alike."""
    sizes = {name: block_size(agent, b, seconds / 10) for name, agent in agents.items()}
    best = {name: float("inf") for name in agents}
    deadline = time.perf_counter() + seconds * len(agents)
    while True:
        for name, agent in agents.items():
            t = time.perf_counter()
            for _ in range(sizes[name]):
                agent.update(b)
            best[name] = min(best[name], (time.perf_counter() - t) / sizes[name])
        if time.perf_counter() > deadline:
            return {name: 1.0 / sec for name, sec in best.items()}


def gemm_gflops(seconds: float = 0.5) -> float:
    a, w = torch.randn(2048, 256), torch.randn(256, 256)
    a @ w
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ w
        n += 1
    return 2 * 2048 * 256 * 256 * n / (time.perf_counter() - t) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="hopper", choices=sorted(ENVS) + ["all"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0, help="timing window per algorithm and env")
    p.add_argument("--no-iql", action="store_true", help="skip the IQL-shaped reference")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    envs = sorted(ENVS) if args.env == "all" else [args.env]
    results = dict(torch=torch.__version__, threads=args.threads, cpu=platform.processor() or platform.machine(),
                   batch=256, fp32_gemm_gflops=round(gemm_gflops(), 1), envs={})
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 256, "
          f"fp32 GEMM (2048x256x256) {results['fp32_gemm_gflops']:.0f} GFLOP/s")
    print(f"{'env':<12} {'algorithm':<12} {'updates/s':>10} {'ms/update':>10}")
    for env in envs:
        obs_dim, act_dim = ENVS[env]
        b = batch(obs_dim, act_dim)
        agents = {"Cal-QL": CalQL(obs_dim, act_dim, CalQLConfig()), "TD3+BC": TD3BC(obs_dim, act_dim, TD3BCConfig())}
        if not args.no_iql:
            agents["IQL-shaped"] = IQLShaped(obs_dim, act_dim)
        ups = rates(agents, b, args.seconds)
        results["envs"][env] = {name: round(r, 2) for name, r in ups.items()}
        for name, r in ups.items():
            print(f"{env:<12} {name:<12} {r:>10.1f} {1000 / r:>10.2f}", flush=True)
        print(f"{env:<12} TD3+BC / Cal-QL: {ups['TD3+BC'] / ups['Cal-QL']:.1f}x"
              + (f", TD3+BC / IQL-shaped: {ups['TD3+BC'] / ups['IQL-shaped']:.2f}x" if "IQL-shaped" in ups else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
