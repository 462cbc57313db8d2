"""A demonstration of the core that runs in a minute or two on a laptop CPU.

It distills a synthetic set of state-action pairs for a known teacher (a fixed random policy
network) on Gaussian "real" states, with the paper's bi-level loop: each outer step draws a fresh
policy, trains it for ``steps`` SGD steps on the synthetic set, measures the PBC objective on a
batch of real states, and updates the synthetic set by the meta-gradient (SGD, momentum 0.9,
gradient norm clipped to 2). Then it compares BC on the distilled set with BC on the initial one,
and checks the fused meta-gradient against the reference backend.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from . import ops
from ._extension import resolve_backend
from .policy import PolicySpec


@dataclass
class DemoConfig:
    obs_dim: int = 11
    act_dim: int = 3
    hidden: tuple = (256, 256, 256)
    n_syn: int = 256
    batch: int = 2560
    steps: int = 100
    inner_lr: float = 0.1
    outer_steps: int = 40
    outer_lr: float = 0.1
    outer_momentum: float = 0.9
    clip_norm: float = 2.0
    eval_policies: int = 5
    seed: int = 0
    backend: str = "auto"


def bc_eval_loss(spec, syn_obs, syn_act, test_obs, test_act, cfg: DemoConfig, gen) -> float:
    """Mean deterministic-action MSE on held-out states of fresh policies BC-trained on the set."""
    losses = []
    for _ in range(cfg.eval_policies):
        theta0 = spec.init_params(generator=gen)
        noise = torch.randn(cfg.steps, cfg.n_syn, spec.act_dim, generator=gen)
        with torch.no_grad():
            theta = ops.unroll_bc(theta0, syn_obs, syn_act, spec, steps=cfg.steps, lr=cfg.inner_lr, noise=noise,
                                  backend=cfg.backend)
            losses.append(float(ops.weighted_bc_loss(theta, spec, test_obs, test_act, backend=cfg.backend)))
    return sum(losses) / len(losses)


def run_demo(cfg: DemoConfig = DemoConfig(), out=print) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    spec = PolicySpec(cfg.obs_dim, cfg.act_dim, cfg.hidden)
    teacher = spec.init_params(generator=gen)
    real_obs = torch.randn(20000, cfg.obs_dim, generator=gen)
    test_obs = torch.randn(4096, cfg.obs_dim, generator=gen)
    with torch.no_grad():
        teacher_act = ops.policy_forward(teacher, real_obs, spec, backend=cfg.backend)
        test_act = ops.policy_forward(teacher, test_obs, spec, backend=cfg.backend)
    # Synthetic init: real states paired with random actions, so there is something to learn.
    idx = torch.randperm(real_obs.shape[0], generator=gen)[:cfg.n_syn]
    syn_obs = real_obs[idx].clone()
    syn_act = 0.9 * (2 * torch.rand(cfg.n_syn, cfg.act_dim, generator=gen) - 1)
    init_loss = bc_eval_loss(spec, syn_obs, syn_act, test_obs, test_act, cfg, torch.Generator().manual_seed(1))

    velocity = [torch.zeros_like(syn_obs), torch.zeros_like(syn_act)]
    losses = []
    t_start = time.perf_counter()
    bar = tqdm(range(cfg.outer_steps), desc="distill (PBC)", unit="step")
    for _ in bar:
        theta0 = spec.init_params(generator=gen)
        b = torch.randint(0, real_obs.shape[0], (cfg.batch,), generator=gen)
        inner_noise = torch.randn(cfg.steps, cfg.n_syn, cfg.act_dim, generator=gen)
        outer_noise = torch.randn(cfg.batch, cfg.act_dim, generator=gen)
        loss, g_obs, g_act = ops.meta_gradient(theta0, syn_obs, syn_act, spec, real_obs[b], teacher_act[b],
                                               steps=cfg.steps, lr=cfg.inner_lr, inner_noise=inner_noise,
                                               outer_noise=outer_noise, backend=cfg.backend)
        norm = torch.sqrt(g_obs.pow(2).sum() + g_act.pow(2).sum())
        scale = min(1.0, cfg.clip_norm / (float(norm) + 1e-12))
        for v, g, p in zip(velocity, (g_obs, g_act), (syn_obs, syn_act)):
            v.mul_(cfg.outer_momentum).add_(g, alpha=scale)
            p.sub_(cfg.outer_lr * v)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    seconds = time.perf_counter() - t_start
    final_loss = bc_eval_loss(spec, syn_obs, syn_act, test_obs, test_act, cfg, torch.Generator().manual_seed(1))

    # Fused vs reference on one outer step (float64), and their speed side by side (float32).
    check = {}
    if resolve_backend("auto", syn_obs.device) == "fused":
        check_steps = min(20, cfg.steps)
        d = {k: v.double() for k, v in dict(theta0=theta0, s=syn_obs, a=syn_act, x=real_obs[b[:256]],
                                                y=teacher_act[b[:256]], n=inner_noise[:check_steps],
                                                m=outer_noise[:256]).items()}
        kw = dict(steps=check_steps, lr=cfg.inner_lr, inner_noise=d["n"], outer_noise=d["m"])
        ref = ops.meta_gradient(d["theta0"], d["s"], d["a"], spec, d["x"], d["y"], backend="reference", **kw)
        fus = ops.meta_gradient(d["theta0"], d["s"], d["a"], spec, d["x"], d["y"], backend="fused", **kw)
        check["rel_err_float64"] = max(float((f - r).norm() / r.norm()) for f, r in zip(fus[1:], ref[1:]))
        timings = {}
        for backend in ("reference", "fused"):
            t0 = time.perf_counter()
            ops.meta_gradient(theta0, syn_obs, syn_act, spec, real_obs[b], teacher_act[b], steps=cfg.steps,
                              lr=cfg.inner_lr, inner_noise=inner_noise, outer_noise=outer_noise, backend=backend)
            timings[backend] = time.perf_counter() - t0
        check["speedup"] = timings["reference"] / timings["fused"]
        check["seconds_per_step"] = timings

    result = dict(first_loss=losses[0], last_loss=losses[-1], bc_test_loss_initial=init_loss,
                  bc_test_loss_distilled=final_loss, seconds=seconds, outer_steps=cfg.outer_steps, **check)
    out("")
    out(f"obd-fast demo: {cfg.outer_steps} outer steps of PBC distillation, N={cfg.n_syn}, T={cfg.steps}, "
        f"policy {spec.widths}, backend={resolve_backend(cfg.backend, syn_obs.device)}, {seconds:.1f} s")
    out("| synthetic set | BC test MSE to the teacher (5 fresh policies) |")
    out("|---|---|")
    out(f"| initial (real states, random actions) | {init_loss:.4f} |")
    out(f"| distilled | {final_loss:.4f} |")
    out(f"outer objective: first step {losses[0]:.4f}, last step {losses[-1]:.4f}")
    if check:
        out(f"fused vs reference meta-gradient (float64, T={check_steps}): relative error {check['rel_err_float64']:.1e}; "
            f"one paper-size step: reference {timings['reference']:.2f} s, fused {timings['fused']:.2f} s "
            f"({check['speedup']:.1f}x)")
    return result
