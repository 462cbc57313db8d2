"""The outer step's pieces: the random draws of one step, gradient clipping, and the optimizer.

**Draws.** Everything random in an outer step comes from :meth:`StepDraws.draw`, which takes a
``torch.Generator`` and nothing else: ``theta_0``, the real rows (with replacement), the inner
steps' head noise, the outer loss's head noise and the teacher's noise, in that order. A run
draws step after step from its one seeded generator, which is what makes a resumed run repeat an
uninterrupted one. A meta-batch of K independent samples per step fits this shape: sample 0 keeps
the run's generator (the stream of today's K=1 runs), and sample k >= 1 of step t draws from a
generator seeded by ``(seed, t, k)`` alone, so no sample depends on which process computes it.

**Clipping.** :func:`clip_grad_norm` scales the gradients over (S, A) together to norm at most
``max_norm`` with ``torch.nn.utils.clip_grads_with_norm_``, given the norm computed in float64.
``torch.nn.utils.clip_grad_norm_`` would take the norm in float32, whose coefficient differs
from the float64 one in the last bits for about half of the steps, and every synthetic set made
so far was clipped with the float64 norm (the same norm is logged as ``grad_norm``).

**Optimizer.** :class:`OuterSGD` is ``torch.optim.SGD`` (momentum, dampening 0, no Nesterov, no
weight decay: the paper's outer optimizer) with the update rounded as ``p - (lr * buf)``.
``torch.optim.SGD`` computes ``p.add_(buf, alpha=-lr)``, which the CPU kernels evaluate as one
fused multiply-add: the last bit of some entries differs from ``p - (lr * buf)``, so existing
runs would not resume bit for bit. Its state (``momentum_buffer`` per parameter) and
``state_dict`` are SGD's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .policy import PolicySpec


@dataclass
class Batch:
    """Everything random in one outer step."""

    theta0: torch.Tensor
    index: torch.Tensor
    inner_noise: torch.Tensor
    outer_noise: torch.Tensor
    teacher_noise: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.theta0, self.index, self.inner_noise, self.outer_noise,
                                                self.teacher_noise)))


@dataclass(frozen=True)
class StepDraws:
    """The sizes of one outer step's random inputs."""

    spec: PolicySpec
    n_syn: int
    inner_steps: int
    real_rows: int       # real states per step (real_batches * real_batch_size)
    data_rows: int       # rows of the dataset the real states are drawn from

    def draw(self, generator: torch.Generator) -> Batch:
        """One step's draws, on the CPU, in the order that fixes every existing run's stream."""
        b, act_dim = self.real_rows, self.spec.act_dim
        theta0 = self.spec.init_params(generator=generator)
        index = torch.randint(0, self.data_rows, (b,), generator=generator)
        inner_noise = torch.randn(self.inner_steps, self.n_syn, act_dim, generator=generator)
        outer_noise = torch.randn(b, act_dim, generator=generator)
        teacher_noise = torch.randn(b, act_dim, generator=generator)
        return Batch(theta0, index, inner_noise, outer_noise, teacher_noise)


def grad_norm(tensors: Sequence[torch.Tensor]) -> float:
    """The 2-norm of all ``tensors`` together, summed in float64."""
    return float(torch.sqrt(sum(t.double().pow(2).sum() for t in tensors)))


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float, norm: float) -> None:
    """Scale the ``.grad`` of ``params`` by ``min(1, max_norm / (norm + 1e-6))`` (``max_norm`` 0:
    no clipping), ``norm`` being their joint norm from :func:`grad_norm`."""
    if max_norm > 0:
        total = torch.tensor(norm, dtype=torch.float64)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=False)


class OuterSGD(torch.optim.SGD):
    """``torch.optim.SGD`` with momentum whose step rounds ``lr * buf`` before subtracting it
    (see the module docstring). Momentum buffers exist from the start (zeros), so the first
    step is ``buf = 0 * momentum + grad`` like every other one."""

    def __init__(self, params, lr: float, momentum: float):
        super().__init__(params, lr=lr, momentum=momentum, foreach=False)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("OuterSGD.step takes no closure")
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p]["momentum_buffer"]
                buf.mul_(momentum).add_(p.grad)
                p.sub_(lr * buf)
