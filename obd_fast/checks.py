"""Input validation shared by every backend: one place that says what the core ops accept.

Every failure is a ``ValueError`` that names the argument and what was expected.
"""
from __future__ import annotations

import math
import operator
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .policy import PolicySpec

FLOAT_DTYPES = (torch.float32, torch.float64)
BACKENDS = ("auto", "fused", "reference")
PRECISIONS = ("native", "bf16", "tf32")

NoiseArg = Union[None, torch.Tensor, Sequence[torch.Tensor]]


def check_spec(spec) -> None:
    if not isinstance(spec, PolicySpec):
        raise ValueError(f"spec must be an obd_fast.PolicySpec, got {type(spec).__name__}")


def check_tensor(name: str, t, shape, like: Optional[torch.Tensor] = None, check_finite: bool = True,
                 like_name: str = "theta") -> None:
    """``shape`` entries of None accept any size; ``like`` (named ``like_name``) fixes dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (it holds no data)")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.numel() == 0 and t.dim() > 1:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); at least one row is needed")
    if like is not None:
        if t.dtype != like.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {like_name} has {like.dtype}; "
                             "all tensors must share one dtype")
        if t.device != like.device:
            raise ValueError(f"{name} is on {t.device} but {like_name} is on {like.device}; "
                             "all tensors must be on one device")
    if check_finite and not all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in t. One min/max pass (NaN propagates through both, an Inf is an end):
    isfinite().all() makes three passes and a bool tensor, ~10x slower on a 139k-float theta,
    and these checks run on every op call."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(torch.stack((lo, hi))).all())


def check_scalar(name: str, value, *, minimum: float, strict: bool, maximum: Optional[float] = None) -> float:
    # float() would also take "0.1" or True: refuse text and booleans as steps does
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(v) and (v > minimum if strict else v >= minimum) and (maximum is None or v < maximum)
    if not ok:
        rel = ">" if strict else ">="
        upper = f" and < {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be finite and {rel} {minimum}{upper}, got {value!r}")
    return v


def _as_int(value):
    """int(value) for Python and numpy integers; None for anything else (bool, float, str)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


INT64_MAX = 2**63 - 1


def check_steps(steps) -> int:
    n = _as_int(steps)
    if n is None or n < 1 or n > INT64_MAX:  # the compiled ops take int64
        raise ValueError(f"steps must be an int >= 1 (and < 2**63), got {steps!r}")
    return n


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_checkpoint_every(k, steps: int) -> Optional[int]:
    if k is None:
        return None
    n = _as_int(k)
    if n is None or n < 1:
        raise ValueError(f"checkpoint_every must be None or an int >= 1, got {k!r}")
    return min(n, steps)


def inner_noise(spec: PolicySpec, noise: NoiseArg, steps: int, n: int, like: torch.Tensor,
                name: str = "noise", like_name: str = "theta0") -> Optional[torch.Tensor]:
    """The inner loop's noise as one (steps, N, act_dim) tensor, or None (deterministic head)."""
    if noise is None:
        return None
    if spec.head != "gaussian":
        raise ValueError(f"{name} must be None for the {spec.head!r} head (it has no sampling)")
    if isinstance(noise, (list, tuple)):
        if len(noise) != steps:
            raise ValueError(f"{name} must hold one (N, act_dim) tensor per inner step ({steps}), got {len(noise)}")
        for t, e in enumerate(noise):
            check_tensor(f"{name}[{t}]", e, (n, spec.act_dim), like, like_name=like_name)
        return torch.stack(list(noise))
    check_tensor(name, noise, (steps, n, spec.act_dim), like, like_name=like_name)
    return noise


def outer_noise(spec: PolicySpec, noise: Optional[torch.Tensor], b: int, like: torch.Tensor,
                name: str = "noise", like_name: str = "theta") -> Optional[torch.Tensor]:
    if noise is None:
        return None
    if spec.head != "gaussian":
        raise ValueError(f"{name} must be None for the {spec.head!r} head (it has no sampling)")
    check_tensor(name, noise, (b, spec.act_dim), like, like_name=like_name)
    return noise


def check_unroll_args(theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise,
                      noise_name: str = "noise"):
    """Validate the inner problem; returns (steps, lr, momentum, weight_decay, noise)."""
    check_spec(spec)
    check_tensor("theta0", theta0, (spec.num_params,))
    check_tensor("syn_obs", syn_obs, (None, spec.obs_dim), theta0, like_name="theta0")
    n = syn_obs.shape[0]
    check_tensor("syn_act", syn_act, (n, spec.act_dim), theta0, like_name="theta0")
    steps = check_steps(steps)
    lr = check_scalar("lr", lr, minimum=0.0, strict=True)
    momentum = check_scalar("momentum", momentum, minimum=0.0, strict=False, maximum=1.0)
    weight_decay = check_scalar("weight_decay", weight_decay, minimum=0.0, strict=False)
    noise = inner_noise(spec, noise, steps, n, theta0, noise_name)
    return steps, lr, momentum, weight_decay, noise


def check_loss_args(theta, spec, obs, target, weight, noise, theta_name: str = "theta", noise_name: str = "noise"):
    check_spec(spec)
    check_tensor(theta_name, theta, (spec.num_params,))
    check_tensor("obs", obs, (None, spec.obs_dim), theta, like_name=theta_name)
    b = obs.shape[0]
    check_tensor("target", target, (b, spec.act_dim), theta, like_name=theta_name)
    if weight is not None:
        check_tensor("weight", weight, (b,), theta, like_name=theta_name)
    return outer_noise(spec, noise, b, theta, noise_name, theta_name)
