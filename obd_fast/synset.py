"""The distilled product: a small synthetic set of (normalized state, action) pairs and everything
needed to use it (the policy shape, the state normalizer, where it came from).

A :class:`SyntheticSet` file is a plain dict of tensors and JSON-able metadata written atomically,
so ``torch.load(path, weights_only=True)`` reads it without running any code from the file, and a
run killed mid-write leaves the previous file intact. :meth:`SyntheticSet.load` checks what it
reads and raises a :class:`SynsetError` (a ``ValueError``) saying which file and what is wrong.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .atomic import atomic_torch_save
from .data.normalize import StateNormalizer
from .objectives import OBJECTIVES
from .policy import PolicySpec

FORMAT = "obd-fast-synset"
FORMAT_VERSION = 1
REQUIRED_FIELDS = ("format", "version", "observations", "actions", "spec", "normalizer", "meta")


class SynsetError(ValueError):
    """A synthetic-set file that cannot be written or used; the message names the file and the problem."""


class SynsetNotFoundError(SynsetError, FileNotFoundError):
    """The synthetic-set file does not exist."""


@dataclass
class SyntheticSet:
    """``observations`` (N, obs_dim) are *normalized* states (``normalizer`` maps raw env states
    into that space); ``actions`` (N, act_dim) are in the env's action units.

    ``history`` holds the evaluations made during distillation (dicts with ``step``, ``score_mean``,
    ...); ``config`` the distillation settings (a JSON-able dict).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    spec: PolicySpec
    normalizer: Optional[StateNormalizer] = None
    objective: Optional[str] = None
    step: int = 0
    seed: Optional[int] = None
    env_id: Optional[str] = None
    data_source: Optional[str] = None
    teacher_path: Optional[str] = None
    config: Dict[str, Any] = field(default_factory=dict)
    history: List[Dict[str, Any]] = field(default_factory=list)

    # -- description ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def raw_observations(self) -> torch.Tensor:
        """The states in the environment's units (needs the normalizer)."""
        if self.normalizer is None:
            raise SynsetError("this synthetic set has no state normalizer: its states are the raw ones")
        return self.normalizer.denormalize(self.observations)

    def to(self, device=None, dtype=None) -> "SyntheticSet":
        """A copy whose tensors are on ``device`` / in ``dtype``."""
        return SyntheticSet(**{**self.__dict__, "observations": self.observations.to(device=device, dtype=dtype),
                               "actions": self.actions.to(device=device, dtype=dtype)})

    def validate(self, source: str = "synthetic set") -> None:
        """Raise :class:`SynsetError` unless shapes, dims and values are consistent and finite."""
        for name, t, width in (("observations", self.observations, self.spec.obs_dim),
                               ("actions", self.actions, self.spec.act_dim)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise SynsetError(f"{source}: {name} must be a floating-point tensor, got "
                                  f"{getattr(t, 'dtype', type(t).__name__)}")
            if t.dim() != 2 or t.shape[1] != width or t.shape[0] < 1:
                raise SynsetError(f"{source}: {name} has shape {tuple(t.shape)}; the policy {self.spec} "
                                  f"needs (N >= 1, {width})")
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).any(dim=1).sum())
                raise SynsetError(f"{source}: {name} has non-finite values in {bad} row(s)")
        if self.observations.shape[0] != self.actions.shape[0]:
            raise SynsetError(f"{source}: {self.observations.shape[0]} observations but {self.actions.shape[0]} actions")
        if self.normalizer is not None:
            mean, std = np.asarray(self.normalizer.mean), np.asarray(self.normalizer.std)
            if mean.shape != (self.spec.obs_dim,) or std.shape != (self.spec.obs_dim,):
                raise SynsetError(f"{source}: the normalizer has {mean.size} mean / {std.size} std features, "
                                  f"the states have {self.spec.obs_dim}")
            if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
                raise SynsetError(f"{source}: the normalizer has non-finite or non-positive entries")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise SynsetError(f"{source}: unknown objective {self.objective!r}; expected one of {tuple(OBJECTIVES)}")

    # -- files ---------------------------------------------------------------------------------
    def metadata(self) -> dict:
        return dict(objective=self.objective, step=int(self.step), seed=self.seed, env_id=self.env_id,
                    data_source=self.data_source, teacher_path=self.teacher_path, config=self.config,
                    history=self.history)

    def to_payload(self) -> dict:
        """The plain dict that :meth:`save` writes (tensors on the CPU, float32)."""
        self.validate()
        meta = self.metadata()
        try:  # JSON-able by construction: round-trip so nothing exotic reaches the file
            meta = json.loads(json.dumps(meta, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise SynsetError(f"synthetic-set metadata is not plain JSON data: {exc}") from None
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "observations": self.observations.detach().to("cpu", torch.float32).contiguous().clone(),
            "actions": self.actions.detach().to("cpu", torch.float32).contiguous().clone(),
            "spec": self.spec.to_dict(),
            "normalizer": None if self.normalizer is None else self.normalizer.to_dict(),
            "meta": meta,
        }

    def save(self, path) -> Path:
        """Write atomically (a temporary file renamed over ``path``); refuses non-finite values."""
        return atomic_torch_save(self.to_payload(), path)

    @classmethod
    def from_payload(cls, payload, source: str = "synthetic set") -> "SyntheticSet":
        if not isinstance(payload, dict):
            raise SynsetError(f"{source}: holds a {type(payload).__name__}, expected a synthetic-set dict")
        if payload.get("format") != FORMAT:
            raise SynsetError(f"{source}: not an obd-fast synthetic set (format={payload.get('format')!r})")
        missing = [k for k in REQUIRED_FIELDS if k not in payload]
        if missing:
            raise SynsetError(f"{source}: missing field(s) {missing}")
        if payload["version"] != FORMAT_VERSION:
            raise SynsetError(f"{source}: format version {payload['version']!r}, this obd-fast reads {FORMAT_VERSION}")
        try:
            spec = PolicySpec.from_dict(payload["spec"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SynsetError(f"{source}: bad policy spec {payload['spec']!r} ({exc})") from None
        norm = payload["normalizer"]
        if norm is not None:
            try:
                norm = StateNormalizer.from_dict(norm)
            except (KeyError, TypeError, ValueError) as exc:
                raise SynsetError(f"{source}: bad normalizer ({exc})") from None
        meta = payload["meta"]
        if not isinstance(meta, dict):
            raise SynsetError(f"{source}: meta is a {type(meta).__name__}, expected a dict")
        syn = cls(observations=payload["observations"], actions=payload["actions"], spec=spec, normalizer=norm,
                  objective=meta.get("objective"), step=int(meta.get("step") or 0), seed=meta.get("seed"),
                  env_id=meta.get("env_id"), data_source=meta.get("data_source"),
                  teacher_path=meta.get("teacher_path"), config=dict(meta.get("config") or {}),
                  history=list(meta.get("history") or []))
        syn.validate(source)
        return syn

    @classmethod
    def load(cls, path, map_location="cpu") -> "SyntheticSet":
        path = Path(path)
        if not path.exists():
            raise SynsetNotFoundError(f"synthetic set {str(path)!r} does not exist")
        if not path.is_file():
            raise SynsetError(f"synthetic set {str(path)!r} is not a file")
        if path.stat().st_size == 0:
            raise SynsetError(f"{path}: the file is empty")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
                AttributeError, ImportError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SynsetError(f"{path}: corrupt, truncated or not a synthetic-set file ({msg})") from None
        except Exception as exc:  # the unpickler raises assorted types on garbage (e.g. UnpicklingError)
            raise SynsetError(f"{path}: corrupt, truncated or not a synthetic-set file "
                              f"({type(exc).__name__})") from None
        return cls.from_payload(payload, str(path))
