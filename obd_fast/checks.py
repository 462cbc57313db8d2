"""What the core ops accept, on the Python side of each backend.

The fused backend's compiled ops check their arguments themselves (csrc/validate.cpp); for them
this module only turns Python arguments into what an op schema takes (the ``*_call_args``
functions): tensors (not lists, arrays or sparse tensors), ints and floats (not strings or
booleans), the inner noise as one tensor. The reference backend has no such ops:
:func:`check_unroll_args` and :func:`check_loss_args` state the same rules, in the same words,
for it (tests/test_properties_ops.py checks that both backends give the same message).

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
INT64_MAX = 2**63 - 1

NoiseArg = Union[None, torch.Tensor, Sequence[torch.Tensor]]


def check_spec(spec) -> None:
    if not isinstance(spec, PolicySpec):
        raise ValueError(f"spec must be an obd_fast.PolicySpec, got {type(spec).__name__}")


def check_tensor_type(name: str, t) -> None:
    """A dense torch.Tensor (what an op schema's Tensor takes)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def check_tensor(name: str, t, shape, like: Optional[torch.Tensor] = None, check_finite: bool = True,
                 like_name: str = "theta") -> None:
    """``shape`` entries of None accept any size; ``like`` (named ``like_name``) fixes dtype and device."""
    check_tensor_type(name, t)
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
    if check_finite and holds_values(t) and not all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def holds_values(t: torch.Tensor) -> bool:
    """Whether t's values can be read now: not a meta or fake tensor, not while torch.compile traces
    (the finite checks are skipped there; the compiled ops check in their kernels)."""
    if t.device.type == "meta" or torch.compiler.is_compiling():
        return False
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(t)


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in t. One min/max pass (NaN propagates through both, an Inf is an end):
    isfinite().all() makes three passes and a bool tensor, ~10x slower on a 139k-float theta,
    and these checks run on every op call."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(torch.stack((lo, hi))).all())


# -- numbers -----------------------------------------------------------------------------------

def as_number(name: str, value) -> float:
    """float(value) for a number (a 0-dim tensor too); text, booleans and anything float() refuses
    are an error (its range is the op's to check)."""
    # float() would also take "0.1" or True: refuse text and booleans as steps does
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def check_scalar(name: str, value, *, minimum: float, strict: bool, maximum: Optional[float] = None) -> float:
    v = as_number(name, value)
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


def as_steps(steps) -> int:
    """steps as an int64 (its lower bound is the op's to check)."""
    n = _as_int(steps)
    if n is None or n > INT64_MAX:
        raise ValueError(f"steps must be an int >= 1 (and < 2**63), got {steps!r}")
    return n


def check_steps(steps) -> int:
    n = as_steps(steps)
    if n < 1:
        raise ValueError(f"steps must be an int >= 1 (and < 2**63), got {steps!r}")
    return n


def as_checkpoint_every(k) -> Optional[int]:
    """checkpoint_every as None or an int (its lower bound is the op's to check)."""
    if k is None:
        return None
    n = _as_int(k)
    if n is None:
        raise ValueError(f"checkpoint_every must be None or an int >= 1, got {k!r}")
    return n


def check_checkpoint_every(k, steps: int) -> Optional[int]:
    n = as_checkpoint_every(k)
    if n is not None and n < 1:
        raise ValueError(f"checkpoint_every must be None or an int >= 1, got {k!r}")
    return None if n is None else min(n, steps)


# -- names -------------------------------------------------------------------------------------

def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_choice_type(name: str, value, choices) -> str:
    """A str for an op's choice argument (the op checks which)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


# -- noise -------------------------------------------------------------------------------------

def stack_noise(spec: PolicySpec, noise: NoiseArg, steps: int, n: int, like: torch.Tensor,
                name: str = "noise", like_name: str = "theta0") -> Optional[torch.Tensor]:
    """The inner loop's noise given as a list of one (N, act_dim) tensor per step, stacked into the
    (steps, N, act_dim) tensor the ops take; a tensor or None is returned as it is."""
    if not isinstance(noise, (list, tuple)):
        if noise is not None:
            check_tensor_type(name, noise)
        return noise
    if spec.head != "gaussian":
        raise ValueError(f"{name} must be None for the {spec.head!r} head (it has no sampling)")
    if len(noise) != steps:
        raise ValueError(f"{name} must hold one (N, act_dim) tensor per inner step ({steps}), got {len(noise)}")
    for t, e in enumerate(noise):
        check_tensor(f"{name}[{t}]", e, (n, spec.act_dim), like, check_finite=False, like_name=like_name)
    return torch.stack(list(noise))


def inner_noise(spec: PolicySpec, noise: NoiseArg, steps: int, n: int, like: torch.Tensor,
                name: str = "noise", like_name: str = "theta0") -> Optional[torch.Tensor]:
    """The inner loop's noise as one (steps, N, act_dim) tensor, or None (deterministic head)."""
    noise = stack_noise(spec, noise, steps, n, like, name, like_name)
    if noise is None:
        return None
    if spec.head != "gaussian":
        raise ValueError(f"{name} must be None for the {spec.head!r} head (it has no sampling)")
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


# -- the reference backend: every rule -----------------------------------------------------------

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


# -- the fused backend: what the op schemas take ---------------------------------------------------

def unroll_call_args(theta0, syn_obs, syn_act, spec, steps, lr, momentum, weight_decay, noise,
                     noise_name: str = "noise"):
    """(steps, lr, momentum, weight_decay, noise) as the ops take them; the ops check the rest."""
    check_spec(spec)
    for name, t in (("theta0", theta0), ("syn_obs", syn_obs), ("syn_act", syn_act)):
        check_tensor_type(name, t)
    steps = as_steps(steps)
    lr, momentum = as_number("lr", lr), as_number("momentum", momentum)
    weight_decay = as_number("weight_decay", weight_decay)
    n = syn_obs.shape[0] if syn_obs.dim() > 0 else 0
    return steps, lr, momentum, weight_decay, stack_noise(spec, noise, steps, n, theta0, noise_name)


def loss_call_args(theta, spec, obs, target, weight, noise, theta_name: str = "theta",
                   noise_name: str = "noise") -> None:
    """The tensors of a loss are tensors; the ops check the rest."""
    check_spec(spec)
    for name, t in ((theta_name, theta), ("obs", obs), ("target", target)):
        check_tensor_type(name, t)
    for name, t in (("weight", weight), (noise_name, noise)):
        if t is not None:
            check_tensor_type(name, t)
