"""State normalization with dataset statistics (the paper / CORL: ``std = obs.std(0) + eps``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_EPS = 1e-3


@dataclass(frozen=True)
class StateNormalizer:
    """``(s - mean) / std``; works on numpy arrays and torch tensors, serializes to a plain dict."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_observations(cls, observations, eps: float = DEFAULT_EPS) -> "StateNormalizer":
        obs = np.asarray(observations, dtype=np.float64)
        # eps is added (not max'ed) as in CORL, so constant features divide by eps, not by 0
        return cls(mean=obs.mean(0), std=obs.std(0) + eps)

    def _prepare(self, x):
        """(x, mean, std) in x's kind: torch tensors stay tensors (same dtype/device), else numpy."""
        if type(x).__module__.startswith("torch"):
            import torch  # only reached for tensors; torch is a core dependency anyway

            dtype = x.dtype if x.is_floating_point() else torch.float32
            return (x.to(dtype), torch.as_tensor(self.mean, dtype=dtype, device=x.device),
                    torch.as_tensor(self.std, dtype=dtype, device=x.device))
        x = np.asarray(x)
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
        return x.astype(dtype, copy=False), self.mean.astype(dtype), self.std.astype(dtype)

    def normalize(self, x):
        x, mean, std = self._prepare(x)
        return (x - mean) / std

    def denormalize(self, x):
        x, mean, std = self._prepare(x)
        return x * std + mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "StateNormalizer":
        return cls(mean=np.asarray(d["mean"], dtype=np.float64), std=np.asarray(d["std"], dtype=np.float64))
