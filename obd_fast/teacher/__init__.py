"""Teachers for PBC / Av-PBC: ``pi*`` and ``q*`` behind one :class:`Teacher` interface.

* :class:`Teacher`, :class:`ActorCriticTeacher` (tanh-Gaussian actor: Cal-QL, SAC, CORL files),
  :class:`DeterministicTeacher` (TD3+BC), :class:`FunctionTeacher` (any two callables).
* Training: :class:`CalQL` / :class:`CalQLConfig` (the paper's teacher), :class:`TD3BC` /
  :class:`TD3BCConfig` (the cheap CPU teacher), :func:`train_teacher` (resumable runs; also
  ``python -m obd_fast.teacher.train``).
* Files: :func:`load_teacher` (ours or CORL's), :func:`load_corl_checkpoint`,
  :func:`save_teacher_checkpoint`; problems raise :class:`TeacherCheckpointError`.
"""
from .base import ActorCriticTeacher, FunctionTeacher, Teacher
from .calql import CalQL, CalQLConfig
from .checkpoints import (TeacherCheckpointError, load_corl_checkpoint, load_teacher, save_teacher_checkpoint,
                          teacher_from_agent)
from .td3bc import TD3BC, DeterministicActor, DeterministicTeacher, TD3BCConfig, TwinCritic

__all__ = ["Teacher", "ActorCriticTeacher", "FunctionTeacher", "DeterministicTeacher",
           "CalQL", "CalQLConfig", "TD3BC", "TD3BCConfig", "DeterministicActor", "TwinCritic",
           "load_teacher", "load_corl_checkpoint", "save_teacher_checkpoint", "teacher_from_agent",
           "TeacherCheckpointError", "train_teacher"]


def __getattr__(name):
    # imported on first use so that ``python -m obd_fast.teacher.train`` does not import the
    # module twice (runpy warns when the package already imported it)
    if name == "train_teacher":
        from .train import train_teacher

        return train_teacher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
