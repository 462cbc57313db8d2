"""The compiled ops (``torch.ops.obd_fast.*``, csrc/ops.cpp) from Python.

Here live what makes them PyTorch custom ops beyond their CPU and CUDA kernels: a fake
implementation of each (output shapes without running a kernel: FakeTensor, the meta device,
``torch.compile``), the autograd of ``unroll_forward`` and ``weighted_loss``
(``torch.library.register_autograd``), and the calls obd_fast.ops makes. The ops check their
arguments themselves (csrc/validate.cpp); nothing here repeats that.

How the ops run is explicit in every call (:class:`KernelOptions`); the environment variables
``OBD_FAST_STEP_KERNEL``, ``OBD_FAST_GRID_BLOCKS`` and ``OBD_FAST_GRID_PROFILE``, read once at
import, only give the defaults that :func:`kernel_options` fills in.
"""
from __future__ import annotations

import dataclasses
import operator
import os
from dataclasses import dataclass
from typing import Optional

import torch

from . import _extension
from .policy import PolicySpec

STEP_KERNELS = ("auto", "grid", "library")
BF16_RECORDS = ("compact", "float")


@dataclass(frozen=True)
class KernelOptions:
    """How a fused op runs the inner steps.

    ``step_kernel``: ``"auto"`` (the grid program on CUDA, the ATen path on the CPU), ``"grid"``
    (the grid program wherever it applies: one cooperative kernel per unroll segment on CUDA, on the
    CPU a slow serial executor of the same code that the tests use), ``"library"`` (the ATen path:
    cuBLAS / oneDNN products and elementwise kernels; for GPUs without cooperative launch).
    ``grid_blocks``: thread blocks of the grid program's kernels (0: one per multiprocessor).
    ``grid_profile``: print the grid program's mean time per phase and step (eager CUDA calls; it
    synchronizes). ``bf16_records``: how ``precision="bf16"`` keeps its records on the CPU:
    ``"compact"`` (bf16 operands) or ``"float"`` (the float32 records of the CUDA path), which the
    tests check the compact path against; not a user option.
    """
    step_kernel: str = "auto"
    grid_blocks: int = 0
    grid_profile: bool = False
    bf16_records: str = "compact"


ENV_DEFAULTS = {"step_kernel": "OBD_FAST_STEP_KERNEL", "grid_blocks": "OBD_FAST_GRID_BLOCKS",
                "grid_profile": "OBD_FAST_GRID_PROFILE"}


def _parse_env(field: str, text: str):
    name = ENV_DEFAULTS[field]
    if field == "step_kernel":
        if text not in STEP_KERNELS:
            raise ValueError(f"{name} must be one of {STEP_KERNELS}, got {text!r}")
        return text
    if field == "grid_blocks":
        if not text.isdigit():
            raise ValueError(f"{name} must be an integer >= 0 (0: one per multiprocessor), got {text!r}")
        return int(text)
    if text not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {text!r}")
    return text == "1"


def _read_env() -> dict:
    """The process-wide defaults as set when obd_fast was imported: a value, or the ValueError a
    call that relies on a malformed one raises."""
    defaults = {}
    for field, name in ENV_DEFAULTS.items():
        text = os.environ.get(name, "").strip()
        try:
            defaults[field] = _parse_env(field, text) if text else getattr(KernelOptions, field)
        except ValueError as exc:
            defaults[field] = exc
    return defaults


_ENV = _read_env()


def kernel_options(step_kernel: Optional[str] = None, grid_blocks: Optional[int] = None,
                   grid_profile: Optional[bool] = None) -> KernelOptions:
    """The kernel choices of one call: the ones given, the process-wide defaults for the others."""
    given = dict(step_kernel=step_kernel, grid_blocks=grid_blocks, grid_profile=grid_profile)
    chosen = {}
    for field, value in given.items():
        if value is None:
            value = _ENV[field]
            if isinstance(value, ValueError):
                raise value
        chosen[field] = value
    if not isinstance(chosen["step_kernel"], str):
        raise ValueError(f"step_kernel must be one of {STEP_KERNELS}, got {chosen['step_kernel']!r}")
    try:
        if isinstance(chosen["grid_blocks"], bool):
            raise TypeError
        chosen["grid_blocks"] = operator.index(chosen["grid_blocks"])
    except TypeError:
        raise ValueError("grid_blocks must be an int >= 0 (0: one per multiprocessor), "
                         f"got {chosen['grid_blocks']!r}") from None
    if not isinstance(chosen["grid_profile"], bool):
        raise ValueError(f"grid_profile must be True or False, got {chosen['grid_profile']!r}")
    return KernelOptions(**chosen)


@dataclass(frozen=True)
class InnerConfig:
    """The inner problem's settings and how the fused ops run it."""
    steps: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    checkpoint_every: Optional[int] = None
    precision: str = "native"
    kernel: KernelOptions = KernelOptions()

    def op_kwargs(self, spec: PolicySpec) -> dict:
        return dict(policy_kwargs(spec), steps=self.steps, lr=self.lr, momentum=self.momentum,
                    weight_decay=self.weight_decay, checkpoint_every=self.checkpoint_every,
                    precision=self.precision, **dataclasses.asdict(self.kernel))


def policy_kwargs(spec: PolicySpec) -> dict:
    return dict(obs_dim=spec.obs_dim, act_dim=spec.act_dim, hidden=list(spec.hidden), head=spec.head,
                max_action=spec.max_action)


# -- the calls obd_fast.ops makes ----------------------------------------------------------------

def unroll_bc(theta0, syn_obs, syn_act, spec, noise, cfg: InnerConfig):
    return torch.ops.obd_fast.unroll_forward(theta0, syn_obs, syn_act, noise, **cfg.op_kwargs(spec))[0]


def weighted_bc_loss(theta, spec, obs, target, weight, noise, precision="native"):
    """The fused loss computes the gradients its inputs will need in the same pass."""
    wants = lambda t: t is not None and t.requires_grad and torch.is_grad_enabled()  # noqa: E731
    out = torch.ops.obd_fast.weighted_loss(theta, obs, target, weight, noise, **policy_kwargs(spec),
                                           grad_obs=wants(obs), grad_target=wants(target),
                                           grad_weight=wants(weight), precision=precision)
    return out[0]


def meta_gradient(theta0, syn_obs, syn_act, spec, obs, target, weight, inner_noise, outer_noise, cfg: InnerConfig,
                  return_theta0_grad: bool = False):
    loss, d_obs, d_act, d_theta0 = torch.ops.obd_fast.meta_gradient(
        theta0, syn_obs, syn_act, inner_noise, obs, target, weight, outer_noise, **cfg.op_kwargs(spec))
    return (loss, d_obs, d_act, d_theta0) if return_theta0_grad else (loss, d_obs, d_act)


def policy_forward(theta, obs, spec, noise=None):
    return torch.ops.obd_fast.policy_forward(theta, obs, noise, **policy_kwargs(spec))


# -- fake implementations: output shapes, dtypes and devices without a kernel ----------------------

def _same_device(like_name: str, like: torch.Tensor, **tensors) -> None:
    """The one check a fake implementation makes (mixed devices send a call here: the meta key
    outranks the others): it decides where the outputs are."""
    for name, t in tensors.items():
        if t is not None and t.device != like.device:
            raise ValueError(f"{name} is on {t.device} but {like_name} is on {like.device}; "
                             "all tensors must be on one device")


def _spec(kw: dict) -> PolicySpec:
    return PolicySpec(kw["obs_dim"], kw["act_dim"], kw["hidden"], kw["head"], kw["max_action"])


def _tape_shapes(spec: PolicySpec, n, like: torch.Tensor, kw: dict):
    """Shapes of (thetas, records, ck_thetas, ck_bufs): as csrc/unroll.cpp's UnrollTape, empty
    where unused."""
    steps, p, k = kw["steps"], spec.num_params, kw.get("checkpoint_every")
    compact = (kw.get("precision") == "bf16" and like.device.type == "cpu" and like.dtype == torch.float32
               and kw.get("bf16_records", "compact") == "compact")
    if k is None:
        return (steps + 1, p), (steps, record_floats(spec, n, compact)), (0,), (0,)
    checkpoints = -(-steps // min(k, steps))
    return (0,), (0,), (checkpoints, p), ((checkpoints, p) if kw.get("momentum", 0.0) != 0.0 else (0,))


def _fake_unroll_forward(theta0, syn_obs, syn_act, noise, **kw):
    _same_device("theta0", theta0, syn_obs=syn_obs, syn_act=syn_act, noise=noise)
    spec = _spec(kw)
    shapes = [(spec.num_params,), *_tape_shapes(spec, syn_obs.shape[0], theta0, kw)]
    return tuple(theta0.new_empty(s) for s in shapes)


def _fake_unroll_backward(grad_theta_T, thetas, records, ck_thetas, ck_bufs, syn_obs, syn_act, noise, **kw):
    _same_device("grad_theta_T", grad_theta_T, thetas=thetas, records=records, ck_thetas=ck_thetas,
                 ck_bufs=ck_bufs, syn_obs=syn_obs, syn_act=syn_act, noise=noise)
    return (grad_theta_T.new_empty((_spec(kw).num_params,)), grad_theta_T.new_empty(syn_obs.shape),
            grad_theta_T.new_empty(syn_act.shape))


def _fake_weighted_loss(theta, obs, target, weight, noise, *, grad_obs=False, grad_target=False, grad_weight=False,
                        **kw):
    _same_device("theta", theta, obs=obs, target=target, weight=weight, noise=noise)
    spec, empty = _spec(kw), (0,)
    shapes = [(), (spec.num_params,), obs.shape if grad_obs else empty, target.shape if grad_target else empty,
              (obs.shape[0],) if grad_weight and weight is not None else empty]
    return tuple(theta.new_empty(s) for s in shapes)


def _fake_meta_gradient(theta0, syn_obs, syn_act, inner_noise, obs, target, weight, outer_noise, **kw):
    _same_device("theta0", theta0, syn_obs=syn_obs, syn_act=syn_act, inner_noise=inner_noise, obs=obs,
                 target=target, weight=weight, outer_noise=outer_noise)
    return (theta0.new_empty(()), theta0.new_empty(syn_obs.shape), theta0.new_empty(syn_act.shape),
            theta0.new_empty((_spec(kw).num_params,)))


def _fake_policy_forward(theta, obs, noise, **kw):
    _same_device("theta", theta, obs=obs, noise=noise)
    return theta.new_empty((obs.shape[0], kw["act_dim"]))


# -- autograd --------------------------------------------------------------------------------------

def _unroll_setup_context(ctx, inputs, keyword_only_inputs, output):
    _, syn_obs, syn_act, noise = inputs
    ctx.kwargs = keyword_only_inputs
    ctx.set_materialize_grads(False)  # the tape's outputs get no gradient: no zeros of its size
    ctx.save_for_backward(syn_obs, syn_act, noise, *output[1:])


def _unroll_backward(ctx, grad_theta_T, *_tape_grads):
    """unroll_backward, the reverse pass; differentiating it again raises (its Autograd kernel)."""
    if grad_theta_T is None:
        return None, None, None, None
    syn_obs, syn_act, noise, *tape = ctx.saved_tensors
    d_theta0, d_obs, d_act = torch.ops.obd_fast.unroll_backward(grad_theta_T, *tape, syn_obs, syn_act, noise,
                                                                **ctx.kwargs)
    needs = ctx.needs_input_grad
    return d_theta0 if needs[0] else None, d_obs if needs[1] else None, d_act if needs[2] else None, None


LOSS_GRADS = ("grad_theta", "grad_obs", "grad_target", "grad_weight")


def _loss_setup_context(ctx, inputs, keyword_only_inputs, output):
    weight = inputs[3]
    ctx.computed = (True, keyword_only_inputs["grad_obs"], keyword_only_inputs["grad_target"],
                    keyword_only_inputs["grad_weight"] and weight is not None)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*output[1:])


@torch.autograd.function.once_differentiable
def _loss_backward(ctx, grad_loss, *_grad_grads):
    """The gradients came from the forward pass; the backward scales them."""
    if grad_loss is None:
        return None, None, None, None, None
    grads = []
    for i, (g, computed) in enumerate(zip(ctx.saved_tensors, ctx.computed)):
        if not ctx.needs_input_grad[i]:
            grads.append(None)
            continue
        if not computed:
            raise RuntimeError(f"obd_fast::weighted_loss was called with {LOSS_GRADS[i]}=False, but its input "
                               "requires grad")
        grads.append(g * grad_loss)
    return (*grads, None)


if _extension.available():
    for _name, _fake in (("unroll_forward", _fake_unroll_forward), ("unroll_backward", _fake_unroll_backward),
                         ("weighted_loss", _fake_weighted_loss), ("meta_gradient", _fake_meta_gradient),
                         ("policy_forward", _fake_policy_forward)):
        torch.library.register_fake(f"obd_fast::{_name}", _fake)
    torch.library.register_autograd("obd_fast::unroll_forward", _unroll_backward, setup_context=_unroll_setup_context)
    torch.library.register_autograd("obd_fast::weighted_loss", _loss_backward, setup_context=_loss_setup_context)


# -- memory --------------------------------------------------------------------------------------

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
