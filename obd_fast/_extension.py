"""Loads the compiled extension obd_fast._C, or records why it could not be loaded."""
from __future__ import annotations

import warnings
from typing import Optional

import torch

_load_error: Optional[str] = None
_build = ""
try:
    from . import _C  # noqa: F401  (importing registers the torch.ops.obd_fast ops)
    _build = torch.ops.obd_fast.build_info()  # asked once: traced code reads the constant
except Exception as exc:  # ImportError, or an undefined symbol from a torch version mismatch
    _load_error = f"{type(exc).__name__}: {exc}"

_warned = False


def available() -> bool:
    return _load_error is None


def build_info() -> str:
    """"cpu" or "cpu+cuda" when loaded, else why not."""
    if _load_error is not None:
        return f"unavailable ({_load_error})"
    return _build


def cached_tape_bytes() -> int:
    """Host memory the fused CPU ``meta_gradient`` keeps for the tapes (and outer-loss records) of later
    calls (csrc/tape_pool.h)."""
    return 0 if _load_error is not None else int(torch.ops.obd_fast.tape_pool_bytes())


def empty_cache() -> None:
    """Frees the host memory kept for fused CPU tapes (like ``torch.cuda.empty_cache`` for CUDA).

    A fused CPU ``meta_gradient`` keeps its tape (~200 MB at the paper setting) and its outer-loss
    record for the next call, which then writes over the same pages instead of having the kernel
    map and zero new ones.
    """
    if _load_error is None:
        torch.ops.obd_fast.release_tape_pool()


def supports(device: torch.device) -> bool:
    """Whether the compiled ops take tensors on this device (meta tensors: shapes only, through
    their fake implementations in obd_fast.fused)."""
    if _load_error is not None:
        return False
    if device.type in ("cpu", "meta"):
        return True
    return device.type == "cuda" and "cuda" in _build


def unavailable_reason(device: torch.device) -> str:
    if _load_error is not None:
        return (f"the compiled extension obd_fast._C could not be loaded ({_load_error}); "
                "reinstall with `pip install --no-build-isolation -e .`")
    return f"obd_fast._C was built without support for {device.type} tensors (build: {build_info()})"


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'fused' when the extension handles this device, else 'reference' (warning once)."""
    global _warned
    if backend == "reference":
        return backend
    if supports(device):
        return "fused"
    if backend == "fused":
        raise RuntimeError(f"backend='fused' is unavailable: {unavailable_reason(device)}")
    if not _warned:
        warnings.warn(f"obd_fast: falling back to backend='reference': {unavailable_reason(device)}",
                      RuntimeWarning, stacklevel=3)
        _warned = True
    return "reference"
