"""Autograd wrappers around the compiled ops (torch.ops.obd_fast.*, registered by csrc/ops.cpp)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from .policy import PolicySpec

# "tf32" is not a mode of the C++ code: cuBLAS picks TF32 tensor-core kernels for float32
# products while torch allows it (matmul_precision below), CUDA graphs included.
PRECISION_CODE = {"native": 0, "bf16": 1, "tf32": 0}


@contextlib.contextmanager
def matmul_precision(precision: str):
    if precision != "tf32":
        yield
        return
    settings = torch.backends.cuda.matmul
    # torch >= 2.9 has fp32_precision and refuses a mix of it with the legacy allow_tf32 flag.
    name, value = ("fp32_precision", "tf32") if hasattr(settings, "fp32_precision") else ("allow_tf32", True)
    prev = getattr(settings, name)
    setattr(settings, name, value)
    try:
        yield
    finally:
        setattr(settings, name, prev)


@dataclass(frozen=True)
class InnerConfig:
    steps: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    checkpoint_every: Optional[int] = None
    precision: str = "native"

    def op_args(self):
        return (self.steps, self.lr, self.momentum, self.weight_decay, self.checkpoint_every or 0,
                PRECISION_CODE[self.precision])


def spec_args(spec: PolicySpec):
    return (list(spec.widths), spec.head == "gaussian", spec.max_action)


class FusedUnroll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta0, syn_obs, syn_act, noise, spec: PolicySpec, cfg: InnerConfig):
        with matmul_precision(cfg.precision):
            tape = torch.ops.obd_fast.unroll_forward(theta0, syn_obs, syn_act, noise, *spec_args(spec),
                                                     *cfg.op_args())
        ctx.spec, ctx.cfg, ctx.has_noise = spec, cfg, noise is not None
        ctx.save_for_backward(syn_obs, syn_act, noise if noise is not None else syn_obs.new_empty(0), *tape)
        return tape[0].clone()  # a fresh tensor: the tape itself stays private

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_theta_T):
        syn_obs, syn_act, noise, *tape = ctx.saved_tensors
        with matmul_precision(ctx.cfg.precision):
            d_theta0, d_obs, d_act = torch.ops.obd_fast.unroll_backward(
                tape, syn_obs, syn_act, noise if ctx.has_noise else None, *spec_args(ctx.spec),
                *ctx.cfg.op_args(), grad_theta_T.contiguous())
        needs = ctx.needs_input_grad
        return (d_theta0 if needs[0] else None, d_obs if needs[1] else None, d_act if needs[2] else None,
                None, None, None)


class FusedWeightedLoss(torch.autograd.Function):
    """The loss and all requested gradients come from one fused pass; backward only scales them."""

    @staticmethod
    def forward(ctx, theta, obs, target, weight, noise, spec: PolicySpec, precision: str):
        needs = [int(x) for x in ctx.needs_input_grad[:4]]
        needs[3] = int(needs[3] and weight is not None)
        with matmul_precision(precision):
            loss, *grads = torch.ops.obd_fast.weighted_loss(theta, obs, target, weight, noise, *spec_args(spec),
                                                            needs, PRECISION_CODE[precision])
        ctx.needs = needs
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grads = ctx.saved_tensors
        out = [g * grad_loss if need else None for g, need in zip(grads, ctx.needs)]
        return (*out, None, None, None)


def _check_aux(name: str, t, shape, like: torch.Tensor) -> None:
    """The compiled ops check theta, obs and target but read noise and weight by position only:
    a wrong shape there would read past the buffer. Cheap (no device sync), so it also runs for
    callers that bypass obd_fast.ops (e.g. graph.py) and inside CUDA-graph capture."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {got}")
    if t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{name} must be {like.dtype} on {like.device} like theta, got {t.dtype} on {t.device}")


def _check_noise_and_weight(spec: PolicySpec, like, n: int, noise=None, steps: Optional[int] = None,
                            weight=None, noise_name: str = "noise") -> None:
    if noise is not None and spec.head != "gaussian":
        raise ValueError(f"{noise_name} must be None for the {spec.head!r} head (it has no sampling)")
    _check_aux(noise_name, noise, (n, spec.act_dim) if steps is None else (steps, n, spec.act_dim), like)
    _check_aux("weight", weight, (n,), like)


def unroll_bc(theta0, syn_obs, syn_act, spec, noise, cfg: InnerConfig):
    _check_noise_and_weight(spec, theta0, syn_obs.shape[0], noise, cfg.steps)
    return FusedUnroll.apply(theta0, syn_obs, syn_act, noise, spec, cfg)


def weighted_bc_loss(theta, spec, obs, target, weight, noise, precision):
    _check_noise_and_weight(spec, theta, obs.shape[0], noise, None, weight)
    return FusedWeightedLoss.apply(theta, obs, target, weight, noise, spec, precision)


def meta_gradient(theta0, syn_obs, syn_act, spec, obs, target, weight, inner_noise, outer_noise, cfg: InnerConfig):
    _check_noise_and_weight(spec, theta0, syn_obs.shape[0], inner_noise, cfg.steps, noise_name="inner_noise")
    _check_noise_and_weight(spec, theta0, obs.shape[0], outer_noise, None, weight, noise_name="outer_noise")
    with matmul_precision(cfg.precision):
        loss, d_obs, d_act = torch.ops.obd_fast.meta_gradient(theta0, syn_obs, syn_act, inner_noise, obs, target,
                                                              weight, outer_noise, *spec_args(spec), *cfg.op_args())
    return loss, d_obs, d_act


def policy_forward(theta, obs, spec, noise=None):
    _check_noise_and_weight(spec, theta, obs.shape[0], noise)
    return torch.ops.obd_fast.policy_forward(theta, obs, noise, *spec_args(spec))


def stored_state_bytes(spec: PolicySpec, n_syn: int, steps: int, checkpoint_every: Optional[int] = None,
                       momentum: float = 0.0, dtype: torch.dtype = torch.float32, precision: str = "native",
                       device="cpu") -> int:
    """Bytes the fused unroll keeps for its reverse pass at its peak (csrc/unroll.cpp).

    Default: theta_0..theta_T and every step's record (hidden activations, each layer's
    dloss/dz, the last layer's output). With ``checkpoint_every=k``: theta (and the momentum
    buffer) every k steps, plus the one segment of k steps the reverse pass recomputes.
    ``precision="bf16"`` in float32 on the CPU keeps the activations and dloss/dz of each record
    in bf16 (the operands its products read), about half the records' bytes.
    """
    params = spec.num_params
    record = record_floats(spec, n_syn, compact=precision == "bf16" and dtype == torch.float32
                           and torch.device(device).type == "cpu")
    if checkpoint_every is None:
        floats = (steps + 1) * params + steps * record
    else:
        k = min(checkpoint_every, steps)
        checkpoints = -(-steps // k)
        floats = checkpoints * params * (2 if momentum else 1) + (k + 1) * params + k * record
    return floats * torch.empty(0, dtype=dtype).element_size()


def record_floats(spec: PolicySpec, n_syn: int, compact: bool = False) -> int:
    """Elements (of the tape's dtype) of one inner step's record: Mlp::record_size in csrc/mlp.cpp."""
    act_grad = n_syn * (2 * sum(spec.hidden) + spec.out_dim)
    return (act_grad + 1) // 2 + n_syn * spec.out_dim if compact else act_grad + n_syn * spec.out_dim
