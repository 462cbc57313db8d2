"""Memory guard for the fused backend: choose checkpointing before a run instead of failing in it.

The fused unroll keeps, for its reverse pass, theta of every inner step and one record of
activations and gradients per step (``fused.stored_state_bytes``). At large ``steps`` or ``N``
that tape can outgrow the machine. Before a fused ``unroll_bc`` / ``meta_gradient`` call whose
caller did not pass ``checkpoint_every``, :func:`plan_checkpoint_every` compares the estimated
peak with a budget and, when the full tape does not fit, switches to the checkpointed schedule
with the smallest footprint, saying so in one :class:`MemoryGuardWarning`. The result does not
change: checkpointing recomputes the same products in the same order (bitwise identical). When
not even that fits, :class:`MemoryBudgetError` (a ``MemoryError``) is raised before any work.

The budget, in order of precedence:

1. the ``memory_budget=`` argument of the op (bytes; ``float("inf")`` turns the guard off),
2. the environment variable ``OBD_FAST_MEMORY_BUDGET`` (bytes, e.g. ``2000000000``, ``1.5e9``,
   ``512M``, ``4G``; binary suffixes K/M/G/T; ``inf``/``none``/``off`` turns the guard off),
3. ``DEFAULT_FRACTION`` (one half) of the memory available now: ``MemAvailable`` of
   ``/proc/meminfo`` (else ``psutil.virtual_memory().available`` when psutil is installed, else no
   limit), plus the tape memory earlier fused calls keep for reuse (``obd_fast.cached_tape_bytes``),
   for CPU tensors, the free memory ``torch.cuda.mem_get_info`` reports for CUDA tensors.
"""
from __future__ import annotations

import functools
import math
import os
import re
import warnings
from typing import Optional, Tuple

import torch

from .policy import PolicySpec

ENV_VAR = "OBD_FAST_MEMORY_BUDGET"
DEFAULT_FRACTION = 0.5
_SUFFIXES = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
             "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}
_UNLIMITED = ("inf", "infinity", "none", "off", "unlimited")


class MemoryBudgetError(MemoryError):
    """The fused run cannot fit its memory budget even with the most aggressive checkpointing."""


class MemoryGuardWarning(UserWarning):
    """The memory guard changed ``checkpoint_every`` to fit the budget (the result is unchanged)."""


def format_bytes(n: float) -> str:
    if not math.isfinite(n):
        return "unlimited"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def parse_budget(value, name: str = "memory_budget") -> Optional[float]:
    """Bytes as a float, ``None`` for no limit. Accepts numbers and strings such as ``'512M'``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of bytes, got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _UNLIMITED:
            return None
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", text)
        if m is None or m.group(2) not in _SUFFIXES:
            raise ValueError(f"{name} must be a number of bytes (optionally with a K/M/G/T suffix) or 'inf', "
                             f"got {value!r}")
        value = float(m.group(1)) * _SUFFIXES[m.group(2)]
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of bytes, got {value!r}") from None
    if math.isnan(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number of bytes (or inf for no limit), got {value!r}")
    return None if math.isinf(v) else v


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if len(parts) < 3 or parts[2].lower() == "kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes(device) -> Optional[int]:
    """Memory available now on ``device`` (a ``torch.device`` or string); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):  # no CUDA runtime, or no such device
            return None
        # memory torch's caching allocator holds but does not use is available to this process too
        return int(free) + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    avail = _meminfo_available()
    if avail is None:
        try:
            import psutil
        except ImportError:
            return None
        avail = int(psutil.virtual_memory().available)
    # the tape pool of earlier fused calls is available to this process too (as on CUDA above)
    from ._extension import cached_tape_bytes
    return avail + cached_tape_bytes()


def resolve_budget(memory_budget, device) -> Tuple[Optional[float], str]:
    """(budget in bytes or None for no limit, where it came from)."""
    if memory_budget is not None:
        return parse_budget(memory_budget), "memory_budget="
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        return parse_budget(env, ENV_VAR), ENV_VAR
    avail = available_bytes(device)
    if avail is None:
        return None, "no limit (available memory unknown)"
    kind = "free GPU memory" if torch.device(device).type == "cuda" else "available RAM"
    return DEFAULT_FRACTION * avail, f"{DEFAULT_FRACTION:g} of the {kind} ({format_bytes(avail)})"


def fused_bytes(spec: PolicySpec, n_syn: int, steps: int, checkpoint_every: Optional[int] = None,
                momentum: float = 0.0, dtype: torch.dtype = torch.float32, n_outer: int = 0) -> int:
    """Peak bytes of a fused unroll (and its reverse): the stored state plus the per-step
    workspaces of the inner batch (and of the outer batch of a ``meta_gradient``). Records are
    counted at the tensors' dtype also for ``precision="bf16"``, whose CPU records are about half
    that (``fused.stored_state_bytes``): the guard errs on the safe side there."""
    from .fused import record_floats, stored_state_bytes

    size = torch.empty(0, dtype=dtype).element_size()
    record = record_floats(spec, 1)  # floats per row of one step's record
    workspace = 2 * (n_syn + n_outer) * record + 4 * spec.num_params
    return stored_state_bytes(spec, n_syn, steps, checkpoint_every, momentum, dtype) + workspace * size


@functools.lru_cache(maxsize=64)
def smallest_footprint(spec: PolicySpec, n_syn: int, steps: int, momentum: float = 0.0,
                       dtype: torch.dtype = torch.float32, n_outer: int = 0) -> Tuple[int, int]:
    """(checkpoint_every, bytes) with the smallest peak. With k steps per segment the tape holds
    ceil(T/k) checkpoints of p floats (theta, and the momentum buffer) and the recomputed segment
    k*r (+ one theta), r = theta + one step's record: the best k is near sqrt(T*p/r), sqrt(T)-style
    segments. Every k recomputes each inner step's forward once (meta_gradient: all but the last
    segment's), so all cost about the same time."""
    from .fused import record_floats

    T = int(steps)
    p = spec.num_params * (2 if momentum else 1)
    r = spec.num_params + record_floats(spec, n_syn)

    def floats(k: int) -> int:  # the part of stored_state_bytes that depends on k
        return -(-T // k) * p + k * r

    k0 = max(1, min(T, math.isqrt(T * p // r)))
    bound = min(floats(k) for k in {k0, min(T, k0 + 1)})
    # floats(k) >= T*p/k + k*r, so every k at least as good as the bound solves
    # r*k^2 - bound*k + T*p <= 0: an interval of about 3.4 * T**(1/4) integers around k0
    root = math.isqrt(max(0, bound * bound - 4 * r * T * p))
    lo, hi = max(1, (bound - root) // (2 * r) - 1), min(T, (bound + root) // (2 * r) + 2)
    best = min(range(lo, hi + 1), key=lambda k: (floats(k), -k))
    return best, fused_bytes(spec, n_syn, steps, best, momentum, dtype, n_outer)


@torch.compiler.assume_constant_result
def plan_checkpoint_every(op: str, spec: PolicySpec, n_syn: int, steps: int, momentum: float,
                          dtype: torch.dtype, device, memory_budget=None, n_outer: int = 0,
                          stacklevel: int = 3) -> Optional[int]:
    """``checkpoint_every`` for a fused run whose caller left it unset: None (keep the whole tape)
    when that fits the budget, else the smallest-footprint k, with one :class:`MemoryGuardWarning`.
    Raises :class:`MemoryBudgetError` when nothing fits."""
    budget, source = resolve_budget(memory_budget, device)
    if budget is None:
        return None
    full = fused_bytes(spec, n_syn, steps, None, momentum, dtype, n_outer)
    if full <= budget:
        return None
    k, need = smallest_footprint(spec, n_syn, steps, momentum, dtype, n_outer)
    what = f"steps={steps}, N={n_syn}, num_params={spec.num_params}, {str(dtype).replace('torch.', '')}"
    if need > budget:
        raise MemoryBudgetError(
            f"obd_fast.{op} (fused): the run needs about {format_bytes(need)} even with checkpoint_every={k} "
            f"({what}; {format_bytes(full)} without checkpointing), above the memory budget of "
            f"{format_bytes(budget)} ({source}); nothing was run. Reduce steps or N, free memory, or raise "
            f"the budget with memory_budget= or {ENV_VAR}.")
    warnings.warn(
        f"obd_fast.{op} (fused): keeping every inner step for the reverse pass would take about "
        f"{format_bytes(full)} ({what}), above the memory budget of {format_bytes(budget)} ({source}); "
        f"using checkpoint_every={k} instead (about {format_bytes(need)}: theta every {k} steps, each segment's "
        f"forward recomputed once in the reverse pass; the result is bitwise the same). Pass checkpoint_every= "
        f"to choose it yourself, or memory_budget=float('inf') to turn this guard off.",
        MemoryGuardWarning, stacklevel=stacklevel)
    return k
