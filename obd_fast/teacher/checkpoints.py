"""Teacher checkpoints: CORL's files and ours, loaded into a :class:`~obd_fast.teacher.Teacher`.

Formats (told apart by their keys):

* CORL Cal-QL / CQL / SAC-style (``cal_ql.py``): ``actor`` with ``base_network.{0,2,..}`` and the
  two log-std scalars, ``critic1`` / ``critic2`` with ``network.{0,2,..}`` -> an
  :class:`ActorCriticTeacher` on ``critic1``.
* CORL TD3+BC (``td3_bc.py``): ``actor`` and ``critic_1`` with ``net.{0,2,..}`` -> a
  :class:`DeterministicTeacher` on ``critic_1``.
* Ours (:func:`save_teacher_checkpoint`): one of the above plus an ``obd_fast`` entry of plain
  metadata (algorithm, state normalizer, env id, sizes, evaluation), so the file alone rebuilds
  the teacher with the statistics it was trained with.

CORL pickles whole ``Scalar`` modules (``sac_log_alpha``, ``cql_log_alpha``) defined in its
training script, so a plain ``torch.load`` needs a ``Scalar`` class in ``__main__``. Here files
are read with ``torch.load(weights_only=True)`` (no code from the file runs) and every pickled
``*.Scalar`` global is allowed and mapped to :class:`obd_fast.policy.Scalar`, which has the same
single parameter ``constant`` (on a PyTorch that cannot map names that way, a restricted
unpickler does the same mapping and refuses every other class). Our own files store those
scalars as state dicts, so they load with plain ``torch.load(weights_only=True)``.

Every problem is a :class:`TeacherCheckpointError` (a ``ValueError``) naming the file and what is
wrong: missing file, not a PyTorch file, truncated/corrupt archive, missing keys, layer shapes
that do not chain or do not fit the environment, a normalizer of the wrong size.
"""
from __future__ import annotations

import copy
import math
import os
import pickle
import pickletools
import types
import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..atomic import atomic_torch_save
from ..data.normalize import StateNormalizer
from ..policy import Scalar
from ..rl.networks import QNetwork, TanhGaussianActor
from .base import ActorCriticTeacher, Teacher
from .td3bc import TD3BC, DeterministicActor, DeterministicTeacher, TwinCritic

FORMAT_VERSION = 1
META_KEY = "obd_fast"


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint that cannot be used; the message says which file and why."""


# ---------------------------------------------------------------------------------- reading
def _pickle_globals(path: Path) -> List[str]:
    """``module.name`` of every global the checkpoint's pickle refers to (zip format only)."""
    names = []
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise TeacherCheckpointError(f"{path.name}: zip archive without a data.pkl: not a PyTorch checkpoint")
        data = zf.read(pkl[0])
    strings: List[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            names.append(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
    return names


# what CORL's Cal-QL checkpoints pickle besides tensors (storages are resolved by torch.load)
_PLAIN_GLOBALS = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                  ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
                  ("torch", "Size"), ("torch", "device")}
_PLAIN_GLOBALS |= {(m, n) for m in ("builtins", "__builtin__")
                   for n in ("set", "frozenset", "dict", "list", "tuple", "int", "float", "bool", "str", "slice")}


class _ScalarUnpickler(pickle.Unpickler):
    """Fallback unpickler for PyTorch versions whose ``weights_only`` loader cannot allow a
    global under another module's name: maps any ``*.Scalar`` to ours, allows the few plain
    globals a CORL checkpoint holds and refuses everything else."""

    def find_class(self, module, name):
        if name == "Scalar":
            return Scalar
        if (module, name) in _PLAIN_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")


_SCALAR_PICKLE = types.SimpleNamespace(__name__="pickle", Unpickler=_ScalarUnpickler, load=pickle.load,
                                       UnpicklingError=pickle.UnpicklingError)
_USE_SAFE_GLOBALS = hasattr(torch.serialization, "safe_globals")


def _torch_load(path: Path, allowed: list) -> object:
    """``torch.load(weights_only=True)`` allowing ``(Scalar, "module.Scalar")`` for the listed
    names; where this PyTorch cannot do that, :class:`_ScalarUnpickler` instead."""
    if not allowed:
        return torch.load(path, map_location="cpu", weights_only=True)
    if _USE_SAFE_GLOBALS:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except (TypeError, pickle.UnpicklingError, RuntimeError) as exc:
            if "Scalar" not in str(exc):
                raise
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_SCALAR_PICKLE)


def read_checkpoint(path) -> dict:
    """The checkpoint's top-level dict, loaded safely on the CPU (see the module docstring)."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise TeacherCheckpointError(f"teacher checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint {str(path)!r} is not a file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise TeacherCheckpointError(f"{path.name}: the file is empty")
    allowed = []
    if zipfile.is_zipfile(path):
        try:
            names = _pickle_globals(path)
        except TeacherCheckpointError:
            raise
        except Exception as exc:
            raise TeacherCheckpointError(f"{path.name}: the archive is corrupt ({type(exc).__name__}: {exc})") from None
        allowed = [(Scalar, name) for name in sorted(set(names)) if name.rsplit(".", 1)[-1] == "Scalar"]
    elif head.startswith(b"PK"):
        raise TeacherCheckpointError(f"{path.name}: truncated or corrupt zip archive (no central directory)")
    try:
        state = _torch_load(path, allowed)
    except Exception as exc:  # pickle, zip and torch errors all mean the same thing here
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        if "Unsupported global" in str(exc):
            raise TeacherCheckpointError(f"{path.name}: holds Python objects that cannot be loaded safely ({msg})") from None
        kind = "truncated or corrupt PyTorch checkpoint" if head.startswith(b"PK") else "not a PyTorch checkpoint"
        raise TeacherCheckpointError(f"{path.name}: {kind} ({type(exc).__name__}: {msg})") from None
    if not isinstance(state, dict):
        raise TeacherCheckpointError(f"{path.name}: holds a {type(state).__name__}, expected a dict of "
                                     "CORL checkpoint keys (actor, critic1/critic_1, ...)")
    return state


# ---------------------------------------------------------------------------------- shapes
def _linear_chain(sd: dict, prefix: str, source: str, what: str) -> List[Tuple[int, int]]:
    """[(in, out), ...] of the Linear layers ``{prefix}{0,2,4,..}``, checked to chain."""
    if not isinstance(sd, dict):
        raise TeacherCheckpointError(f"{source}: {what} is a {type(sd).__name__}, expected a state dict")
    layers, i = [], 0
    while f"{prefix}{i}.weight" in sd:
        w, b = sd[f"{prefix}{i}.weight"], sd.get(f"{prefix}{i}.bias")
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise TeacherCheckpointError(f"{source}: {what}[{prefix}{i}.weight] is not a 2-D tensor")
        if b is None:
            raise TeacherCheckpointError(f"{source}: {what} is missing key {prefix}{i}.bias")
        if tuple(b.shape) != (w.shape[0],):
            raise TeacherCheckpointError(f"{source}: {what}[{prefix}{i}.bias] has shape {tuple(b.shape)}, "
                                         f"its weight {tuple(w.shape)} needs ({w.shape[0]},)")
        if layers and layers[-1][1] != w.shape[1]:
            raise TeacherCheckpointError(f"{source}: {what} layers do not chain: {prefix}{i}.weight takes "
                                         f"{w.shape[1]} inputs, the layer before gives {layers[-1][1]}")
        layers.append((int(w.shape[1]), int(w.shape[0])))
        i += 2
    if not layers:
        raise TeacherCheckpointError(f"{source}: {what} is missing key {prefix}0.weight; found {sorted(sd)[:8]}")
    return layers


def _expected_dims(env) -> Optional[Tuple[int, int]]:
    if env is None:
        return None
    from ..data.errors import DatasetError
    from ..data.table import expected_dims

    try:
        return expected_dims(env)
    except DatasetError as exc:
        raise TeacherCheckpointError(str(exc)) from None


def _check_env(source: str, obs_dim: int, act_dim: int, env) -> None:
    dims = _expected_dims(env)
    if dims is not None and dims != (obs_dim, act_dim):
        raise TeacherCheckpointError(f"{source}: the networks are for obs_dim={obs_dim}, act_dim={act_dim}, "
                                     f"but {env!r} has obs_dim={dims[0]}, act_dim={dims[1]}")


def _as_normalizer(obs_norm, source: str) -> Optional[StateNormalizer]:
    if obs_norm is None or isinstance(obs_norm, StateNormalizer):
        return obs_norm
    if isinstance(obs_norm, dict):
        try:
            return StateNormalizer.from_dict(obs_norm)
        except (KeyError, TypeError, ValueError) as exc:
            raise TeacherCheckpointError(f"{source}: bad normalizer dict ({exc})") from None
    if getattr(obs_norm, "normalizer", None) is not None:  # an OfflineData
        return obs_norm.normalizer
    raise TeacherCheckpointError(f"{source}: obs_norm must be a StateNormalizer, its dict, or a dataset; "
                                 f"got {type(obs_norm).__name__}")


def _check_normalizer(norm: Optional[StateNormalizer], obs_dim: int, source: str) -> None:
    if norm is None:
        return
    mean, std = np.asarray(norm.mean), np.asarray(norm.std)
    if mean.shape != (obs_dim,) or std.shape != (obs_dim,):
        raise TeacherCheckpointError(f"{source}: the normalizer has {mean.size} mean / {std.size} std features, "
                                     f"the networks take obs_dim={obs_dim}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise TeacherCheckpointError(f"{source}: the normalizer has non-finite or non-positive entries")


def detect_format(state: dict, source: str = "checkpoint") -> str:
    """``"calql"`` (CORL Cal-QL/CQL/SAC actor-critic keys) or ``"td3bc"``; raises otherwise."""
    actor = state.get("actor")
    if isinstance(actor, dict) and "critic1" in state and any(k.startswith("base_network.") for k in actor):
        return "calql"
    if isinstance(actor, dict) and "critic_1" in state and any(k.startswith("net.") for k in actor):
        return "td3bc"
    missing = [k for k in ("actor", "critic1") if k not in state]
    raise TeacherCheckpointError(
        f"{source}: missing keys {missing or ['actor.base_network.*']}: expected CORL Cal-QL keys (actor with base_network.*, "
        f"critic1, critic2) or TD3+BC keys (actor with net.*, critic_1, critic_2); found {sorted(map(str, state))}")


def _load_module(module: torch.nn.Module, sd: dict, source: str, what: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise TeacherCheckpointError(f"{source}: {what} does not fit the expected network: "
                                     f"{' '.join(str(exc).split())[:400]}") from None


def _build_calql(state: dict, source: str, max_action: float) -> Tuple[TanhGaussianActor, QNetwork]:
    actor_sd, critic_sd = state["actor"], state["critic1"]
    actor_layers = _linear_chain(actor_sd, "base_network.", source, "actor")
    obs_dim, out = actor_layers[0][0], actor_layers[-1][1]
    if out % 2:
        raise TeacherCheckpointError(f"{source}: the actor's last layer has {out} outputs; a tanh-Gaussian actor "
                                     "has 2 * act_dim (mean, then log_std)")
    act_dim = out // 2
    for key in ("log_std_multiplier.constant", "log_std_offset.constant"):
        if key not in actor_sd:
            raise TeacherCheckpointError(f"{source}: actor is missing key {key}")
    critic_layers = _linear_chain(critic_sd, "network.", source, "critic1")
    if critic_layers[0][0] != obs_dim + act_dim or critic_layers[-1][1] != 1:
        raise TeacherCheckpointError(f"{source}: critic1 maps {critic_layers[0][0]} -> {critic_layers[-1][1]}, "
                                     f"the actor (obs {obs_dim}, act {act_dim}) needs {obs_dim + act_dim} -> 1")
    actor = TanhGaussianActor(obs_dim, act_dim, [o for _, o in actor_layers[:-1]], max_action, orthogonal_init=False)
    critic = QNetwork(obs_dim, act_dim, [o for _, o in critic_layers[:-1]], orthogonal_init=False)
    _load_module(actor, actor_sd, source, "actor")
    _load_module(critic, critic_sd, source, "critic1")
    return actor, critic


def _build_td3bc(state: dict, source: str, max_action: float) -> Tuple[DeterministicActor, TwinCritic]:
    actor_sd, critic_sd = state["actor"], state["critic_1"]
    actor_layers = _linear_chain(actor_sd, "net.", source, "actor")
    obs_dim, act_dim = actor_layers[0][0], actor_layers[-1][1]
    critic_layers = _linear_chain(critic_sd, "net.", source, "critic_1")
    if critic_layers[0][0] != obs_dim + act_dim or critic_layers[-1][1] != 1:
        raise TeacherCheckpointError(f"{source}: critic_1 maps {critic_layers[0][0]} -> {critic_layers[-1][1]}, "
                                     f"the actor (obs {obs_dim}, act {act_dim}) needs {obs_dim + act_dim} -> 1")
    actor = DeterministicActor(obs_dim, act_dim, [o for _, o in actor_layers[:-1]], max_action)
    critic = TwinCritic(obs_dim, act_dim, [o for _, o in critic_layers[:-1]])
    _load_module(actor, actor_sd, source, "actor")
    _load_module(critic, critic_sd, source, "critic_1")
    return actor, critic


def teacher_from_state(state: dict, source: str = "checkpoint", obs_norm=None, env=None,
                       max_action: Optional[float] = None) -> Teacher:
    """Build the teacher from an already loaded checkpoint dict (see :func:`load_corl_checkpoint`)."""
    meta = state.get(META_KEY) if isinstance(state.get(META_KEY), dict) else {}
    fmt = detect_format(state, source)
    if max_action is None:
        max_action = float(meta.get("max_action", 1.0))
    if not (math.isfinite(max_action) and max_action > 0):
        raise TeacherCheckpointError(f"{source}: max_action must be positive and finite, got {max_action}")
    if fmt == "calql":
        actor, critic = _build_calql(state, source, max_action)
        obs_dim, act_dim = actor.spec.obs_dim, actor.spec.act_dim
    else:
        actor, critic = _build_td3bc(state, source, max_action)
        obs_dim, act_dim = actor.obs_dim, actor.act_dim
    if meta and (meta.get("obs_dim"), meta.get("act_dim")) != (obs_dim, act_dim):
        raise TeacherCheckpointError(f"{source}: metadata says obs_dim={meta.get('obs_dim')}, act_dim={meta.get('act_dim')} "
                                     f"but the networks are obs_dim={obs_dim}, act_dim={act_dim}")
    _check_env(source, obs_dim, act_dim, env)
    norm = _as_normalizer(obs_norm, source)
    _check_normalizer(norm, obs_dim, source)
    teacher = ActorCriticTeacher(actor, critic, norm) if fmt == "calql" else DeterministicTeacher(actor, critic, norm)
    teacher.metadata = dict(meta)  # ours: algo, env_id, evaluation, ...; CORL files: empty
    return teacher


# ---------------------------------------------------------------------------------- public API
def load_corl_checkpoint(path, obs_norm=None, env=None) -> Teacher:
    """A teacher from a CORL checkpoint (Cal-QL/CQL/SAC -> stochastic actor + ``critic1``,
    TD3+BC -> deterministic actor + ``critic_1``).

    ``obs_norm``: the :class:`StateNormalizer` (or its dict, or the :class:`OfflineData`) of the
    dataset the networks were trained on; CORL files do not store it. ``None`` leaves
    ``teacher.normalizer`` unset (the caller normalizes). ``env``: ``'Hopper-v5'``,
    ``'hopper-medium-v2'`` or ``(obs_dim, act_dim)``, checked against the networks' sizes.
    """
    path = Path(os.fspath(path))
    return teacher_from_state(read_checkpoint(path), path.name, obs_norm, env)


def load_teacher(path, obs_norm=None, env=None) -> Teacher:
    """A teacher from our checkpoint (normalizer from the file) or from a CORL one (normalizer
    from ``obs_norm``). For our files a given ``obs_norm`` must equal the stored one."""
    path = Path(os.fspath(path))
    state = read_checkpoint(path)
    meta = state.get(META_KEY)
    if not isinstance(meta, dict):
        return teacher_from_state(state, path.name, obs_norm, env)
    stored = meta.get("normalizer")
    stored_norm = _as_normalizer(stored, path.name) if stored is not None else None
    given = _as_normalizer(obs_norm, path.name)
    if given is not None and stored_norm is not None:
        if (np.shape(given.mean) != np.shape(stored_norm.mean)
                or not (np.allclose(given.mean, stored_norm.mean, rtol=1e-6, atol=1e-8)
                        and np.allclose(given.std, stored_norm.std, rtol=1e-6, atol=1e-8))):
            raise TeacherCheckpointError(f"{path.name}: the checkpoint carries its own state normalizer and the "
                                         "given obs_norm differs from it (a teacher only works with the statistics "
                                         "it was trained with)")
    return teacher_from_state(state, path.name, stored_norm if stored_norm is not None else given, env)


def algo_name(agent) -> str:
    from ..rl.sac import SAC
    from .calql import CalQL

    if isinstance(agent, CalQL):
        return "calql"
    if isinstance(agent, TD3BC):
        return "td3bc"
    if isinstance(agent, SAC):
        return "sac"
    raise TypeError(f"cannot save a {type(agent).__name__} as a teacher (CalQL, SAC or TD3BC)")


def save_teacher_checkpoint(path, agent, normalizer: Optional[StateNormalizer], env_id: Optional[str],
                            extra: Optional[dict] = None, training_state: bool = True) -> Path:
    """Write ``agent.state_dict()`` (CORL's keys) plus an ``obd_fast`` metadata entry, atomically.

    The metadata holds ``algo``, the ``normalizer`` dict, ``env_id``, ``obs_dim``, ``act_dim``,
    ``actor_hidden``, ``critic_hidden``, ``max_action``, ``config``, ``evaluation`` (from
    ``extra``, else ``None``) and everything else in ``extra``. Only plain Python values and
    tensors are written, so the file loads with ``torch.load(weights_only=True)``.

    ``training_state=False`` writes only what a teacher needs (actor, both critics, ``total_it``
    and the metadata; no optimizers or targets): a quarter to a third of a trained agent's file, for
    shipping. Such a file loads here but is not a full CORL training checkpoint.
    """
    algo = algo_name(agent)
    if normalizer is not None and len(normalizer.mean) != agent.obs_dim:
        raise TeacherCheckpointError(f"normalizer has {len(normalizer.mean)} features, the agent takes {agent.obs_dim}")
    extra = dict(extra or {})
    max_action = agent.max_action if algo == "td3bc" else agent.actor.spec.max_action
    meta = dict(format_version=FORMAT_VERSION, algo=algo,
                normalizer=None if normalizer is None else normalizer.to_dict(), env_id=env_id,
                obs_dim=int(agent.obs_dim), act_dim=int(agent.act_dim),
                actor_hidden=[int(h) for h in agent.config.actor_hidden],
                critic_hidden=[int(h) for h in agent.config.critic_hidden],
                max_action=float(max_action), config=agent.config.to_dict(),
                evaluation=extra.pop("evaluation", None))
    meta.update(extra)
    state = agent.state_dict()
    if not training_state:
        keep = ("actor", "critic_1", "critic_2") if algo == "td3bc" else ("actor", "critic1", "critic2")
        state = {k: state[k] for k in keep + ("total_it",)}
    meta["training_state"] = bool(training_state)
    state[META_KEY] = meta
    return atomic_torch_save(state, path)


def teacher_from_agent(agent, normalizer: Optional[StateNormalizer] = None) -> Teacher:
    """A frozen copy of a training agent's actor and first critic as a teacher (the agent is
    left untouched)."""
    algo = algo_name(agent)
    if algo == "td3bc":
        return DeterministicTeacher(copy.deepcopy(agent.actor), copy.deepcopy(agent.critic_1), normalizer)
    return ActorCriticTeacher(copy.deepcopy(agent.actor), copy.deepcopy(agent.critic1), normalizer)


__all__ = ["TeacherCheckpointError", "read_checkpoint", "detect_format", "teacher_from_state",
           "load_corl_checkpoint", "load_teacher", "save_teacher_checkpoint", "teacher_from_agent"]

