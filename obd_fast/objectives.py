"""Outer objectives: what the synthetic set is distilled towards.

An :class:`Objective` turns the outer step's real batch (normalized states, their dataset actions)
into the targets and per-row weights of the weighted BC loss
``H = sum_i w_i ||pi_theta_T(s_i) - a*_i||^2 / sum_i w_i`` (``w = None``: plain mean). The paper's
three are registered under their names:

* ``dbc``: targets are the dataset actions;
* ``pbc``: targets are the teacher's actions, sampled with the step's teacher noise
  (``teacher_sample=False``: its deterministic action);
* ``av-pbc``: PBC weighted by ``w = beta * q*(s, a*)``.

A new objective is a subclass with a ``name`` and a ``targets`` method, registered with
:func:`register_objective`; ``DistillConfig(objective=name)`` and ``obd-fast distill --objective
name`` then use it (``examples/state_density.py`` shows one in a few lines). The held-out
evaluation calls ``targets`` without noise, so it sees the deterministic version of the same
objective.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Type

import torch

#: name -> Objective class; the names ``DistillConfig.objective`` and the CLI accept.
OBJECTIVES: Dict[str, Type["Objective"]] = {}
#: the paper's objectives, in its order (the demo and the result tables run these).
PAPER_OBJECTIVES = ("dbc", "pbc", "av-pbc")


def register_objective(cls: Type["Objective"]) -> Type["Objective"]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute name (a non-empty string)")
    OBJECTIVES[cls.name] = cls
    return cls


def teacher_actions(teacher, obs: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
    """``teacher.act`` on the teacher's device; float32 on ``obs``'s device."""
    a = teacher.act(obs.to(teacher.device), None if noise is None else noise.to(teacher.device))
    return a.to(obs.device, torch.float32)


def teacher_values(teacher, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``teacher.q`` as a (B,) float32 tensor on ``obs``'s device."""
    q = teacher.q(obs.to(teacher.device), act.to(teacher.device))
    return q.reshape(len(obs)).to(obs.device, torch.float32)


class Objective:
    """Targets and weights of the outer loss on a batch of real rows.

    ``config``: the run's :class:`~obd_fast.distill.DistillConfig` (settings such as ``beta``);
    ``teacher``: the teacher or None; ``real_obs``: every normalized real state (on the run's
    device), for objectives that need the dataset as a whole.
    """

    name = ""
    needs_teacher = False

    def __init__(self, config, teacher=None, real_obs: Optional[torch.Tensor] = None):
        if self.needs_teacher and teacher is None:
            raise ValueError(f"objective {self.name!r} needs a teacher")
        self.config, self.teacher = config, teacher

    def targets(self, obs: torch.Tensor, actions: torch.Tensor, teacher_noise: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(target (B, act_dim), weight (B,) or None)`` for real states ``obs`` with dataset
        actions ``actions``; ``teacher_noise`` (B, act_dim) samples the teacher, None asks for
        deterministic targets."""
        raise NotImplementedError


@register_objective
class DBC(Objective):
    """Distill towards the dataset's own actions."""

    name = "dbc"

    def targets(self, obs, actions, teacher_noise=None):
        return actions, None


@register_objective
class PBC(Objective):
    """Distill towards the teacher's actions ``a* ~ pi*(s)``."""

    name = "pbc"
    needs_teacher = True

    def targets(self, obs, actions, teacher_noise=None):
        noise = teacher_noise if self.config.teacher_sample else None
        return teacher_actions(self.teacher, obs, noise), None


@register_objective
class AvPBC(PBC):
    """PBC with each row weighted by the teacher's value of its target, ``beta * q*(s, a*)``."""

    name = "av-pbc"

    def targets(self, obs, actions, teacher_noise=None):
        target, _ = super().targets(obs, actions, teacher_noise)
        return target, self.config.beta * teacher_values(self.teacher, obs, target)


def make_objective(config, teacher=None, real_obs: Optional[torch.Tensor] = None) -> Objective:
    """The registered objective ``config.objective``."""
    try:
        cls = OBJECTIVES[config.objective]
    except KeyError:
        raise ValueError(f"unknown objective {config.objective!r}; expected one of {tuple(OBJECTIVES)}") from None
    return cls(config, teacher, real_obs)
