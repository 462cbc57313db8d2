"""CUDA-graph capture of a whole fused meta-gradient step.

On a GPU the fused step is a few cooperative kernels (the grid program) plus the outer loss's
small kernels, or thousands of small kernels on the ATen path (bf16); launching them from the
host costs more than running the small ones. :class:`MetaGradientGraph` captures one call of the
fused op for fixed shapes into a CUDA graph and replays it every outer step: the caller writes new
inputs into the static buffers (or passes them to ``__call__``, which copies) and gets the outputs,
which live in the graph's memory and are overwritten by the next replay.

A replay runs the kernels chosen at capture: the graph keeps the choices it was captured with in
:attr:`MetaGradientGraph.cfg` (hyper-parameters, checkpointing, precision, and ``cfg.kernel``: the
step kernel and its launch), and :meth:`MetaGradientGraph.choices` lists them. With
``precision="tf32"`` the capture chose TF32 tensor-core products; replays need no global setting.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from . import checks, fused, memory
from ._extension import resolve_backend
from .policy import PolicySpec


class MetaGradientGraph:
    """One captured ``meta_gradient`` for fixed (spec, N, B, steps, hyper-parameters).

    ``weighted`` says whether the outer loss takes per-row weights; the gaussian head always
    takes explicit inner and outer noise buffers (fill them each step for fresh samples).
    ``return_theta0_grad`` adds dH/d theta0 to the outputs. ``step_kernel``, ``grid_blocks``,
    ``grid_profile``: the kernel choices, as for :func:`obd_fast.meta_gradient`.
    """

    def __init__(self, spec: PolicySpec, n_syn: int, batch: int, *, steps: int, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, weighted: bool = True, dtype: torch.dtype = torch.float32,
                 device="cuda", checkpoint_every: Optional[int] = None, precision: str = "native",
                 warmup: int = 2, memory_budget=None, return_theta0_grad: bool = False,
                 step_kernel: Optional[str] = None, grid_blocks: Optional[int] = None,
                 grid_profile: Optional[bool] = None):
        checks.check_spec(spec)
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"MetaGradientGraph needs a CUDA device, got {device}")
        resolve_backend("fused", device)
        steps = checks.check_steps(steps)
        momentum = checks.check_scalar("momentum", momentum, minimum=0.0, strict=False, maximum=1.0)
        checkpoint_every = checks.check_checkpoint_every(checkpoint_every, steps)
        if checkpoint_every is None:  # the same memory guard as obd_fast.meta_gradient
            checkpoint_every = memory.plan_checkpoint_every("MetaGradientGraph", spec, n_syn, steps, momentum, dtype,
                                                            device, memory_budget, n_outer=batch)
        self.spec = spec
        self.return_theta0_grad = return_theta0_grad
        self.cfg = fused.InnerConfig(steps, checks.check_scalar("lr", lr, minimum=0.0, strict=True), momentum,
                                     checks.check_scalar("weight_decay", weight_decay, minimum=0.0, strict=False),
                                     checkpoint_every, checks.check_precision(precision),
                                     fused.kernel_options(step_kernel, grid_blocks, grid_profile))
        opts = dict(dtype=dtype, device=device)
        gaussian = spec.head == "gaussian"
        self.theta0 = spec.init_params(dtype=dtype, device=device)
        self.syn_obs = torch.zeros(n_syn, spec.obs_dim, **opts)
        self.syn_act = torch.zeros(n_syn, spec.act_dim, **opts)
        self.obs = torch.zeros(batch, spec.obs_dim, **opts)
        self.target = torch.zeros(batch, spec.act_dim, **opts)
        self.weight = torch.ones(batch, **opts) if weighted else None
        self.inner_noise = torch.zeros(steps, n_syn, spec.act_dim, **opts) if gaussian else None
        self.outer_noise = torch.zeros(batch, spec.act_dim, **opts) if gaussian else None

        # Warm up on a side stream (cuBLAS handles and workspaces are created outside the capture);
        # the op checks its arguments there (during the capture it cannot read values).
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._run()

    def _run(self):
        return fused.meta_gradient(self.theta0, self.syn_obs, self.syn_act, self.spec, self.obs, self.target,
                                   self.weight, self.inner_noise, self.outer_noise, self.cfg, self.return_theta0_grad)

    def choices(self) -> dict:
        """What the graph was captured with: hyper-parameters, checkpoint_every, precision and the
        kernel choices (step_kernel, grid_blocks, grid_profile, bf16_records)."""
        cfg = dataclasses.asdict(self.cfg)
        return dict(cfg.pop("kernel"), **cfg)

    def replay(self):
        """Rerun the captured step on the current contents of the static buffers: (loss,
        d syn_obs, d syn_act), and d theta0 when the graph was built with return_theta0_grad."""
        self.graph.replay()
        return self.outputs

    def __call__(self, theta0, syn_obs, syn_act, obs, target, weight=None, inner_noise=None, outer_noise=None):
        """Copy the inputs into the static buffers (checking their shapes), then replay."""
        for name, buf, value in (("theta0", self.theta0, theta0), ("syn_obs", self.syn_obs, syn_obs),
                                 ("syn_act", self.syn_act, syn_act), ("obs", self.obs, obs),
                                 ("target", self.target, target), ("weight", self.weight, weight),
                                 ("inner_noise", self.inner_noise, inner_noise),
                                 ("outer_noise", self.outer_noise, outer_noise)):
            if (buf is None) != (value is None):
                raise ValueError(f"{name} must be {'None' if buf is None else 'given'} for this captured graph")
            if buf is not None:
                checks.check_tensor(name, value, tuple(buf.shape), like=buf, check_finite=False)
                buf.copy_(value)
        return self.replay()
