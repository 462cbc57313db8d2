"""Shared pieces of the benchmarks: the paper-setting inputs, the FLOP count, the baselines."""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import torch

from obd_fast import PolicySpec
from obd_fast.reference import bc_loss

ENVS = {"hopper": (11, 3), "walker2d": (17, 6), "halfcheetah": (17, 6)}
PAPER = dict(n_syn=256, batch=2560, steps=100, lr=0.1, hidden=(256, 256, 256))


def paper_inputs(env: str = "hopper", steps: int = 100, dtype=torch.float32, device="cpu", seed: int = 0,
                 n_syn: int = 256, batch: int = 2560, hidden=(256, 256, 256)) -> Dict:
    obs_dim, act_dim = ENVS[env]
    spec = PolicySpec(obs_dim, act_dim, hidden)
    g = torch.Generator().manual_seed(seed)
    d = dict(theta0=spec.init_params(generator=g), syn_obs=torch.randn(n_syn, obs_dim, generator=g),
             syn_act=0.9 * (2 * torch.rand(n_syn, act_dim, generator=g) - 1),
             obs=torch.randn(batch, obs_dim, generator=g),
             target=0.9 * (2 * torch.rand(batch, act_dim, generator=g) - 1),
             weight=0.02 * 100 * torch.rand(batch, generator=g),
             inner_noise=torch.randn(steps, n_syn, act_dim, generator=g),
             outer_noise=torch.randn(batch, act_dim, generator=g))
    d = {k: v.to(dtype=dtype, device=device) for k, v in d.items()}
    d["spec"], d["steps"], d["lr"] = spec, steps, 0.1
    return d


def call_meta_gradient(fn, d, **kw):
    return fn(d["theta0"], d["syn_obs"], d["syn_act"], d["spec"], d["obs"], d["target"], d["weight"],
              steps=d["steps"], lr=d["lr"], inner_noise=d["inner_noise"], outer_noise=d["outer_noise"], **kw)


def meta_gradient_flops(spec: PolicySpec, n_syn: int, batch: int, steps: int) -> float:
    """Matrix-product FLOPs of the fused algorithm (docs/design.md, "The reverse pass, by hand"): per
    inner step 3 products per layer forward and 6 in the Hessian-vector pass, plus forward and
    backward of the outer loss."""
    macs_per_row = sum(a * b for a, b in zip(spec.widths[:-1], spec.widths[1:]))
    return 2.0 * macs_per_row * (9 * n_syn * steps + 3 * batch)


def create_graph_meta_gradient(theta0, syn_obs, syn_act, spec, obs, target, weight, *, steps, lr, inner_noise,
                               outer_noise):
    """The other autograd baseline: a full differentiable unroll (create_graph=True), as higher- or
    MTT-style code does; no recomputation, the whole graph kept in memory."""
    s = syn_obs.detach().clone().requires_grad_(True)
    a = syn_act.detach().clone().requires_grad_(True)
    theta = theta0.detach().clone().requires_grad_(True)
    for t in range(steps):
        (g,) = torch.autograd.grad(bc_loss(theta, spec, s, a, None, inner_noise[t]), theta, create_graph=True)
        theta = theta - lr * g
    loss = bc_loss(theta, spec, obs, target, weight, outer_noise)
    d_s, d_a = torch.autograd.grad(loss, (s, a))
    return loss.detach(), d_s, d_a


def gemm_rate(n: int = 256, dtype=torch.float32, device="cpu", seconds: float = 0.5) -> float:
    """FLOP/s of an n x n x n product in this process, the yardstick for the achieved rates."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    reps = max(1, int(seconds / time_it(lambda: torch.mm(a, b), reps=3, device=device)))
    return 2.0 * n ** 3 / time_it(lambda: torch.mm(a, b), reps=reps, device=device)


def time_it(fn: Callable, reps: int = 3, warmup: int = 1, device="cpu", best: bool = True) -> float:
    """Seconds per call: the best (or mean) of ``reps`` calls after ``warmup``."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times) if best else sum(times) / len(times)


def peak_rss_mb() -> Optional[float]:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return None
