"""Where the synthetic set starts: ``n`` pairs chosen from (or shaped like) the real data.

* ``real``: ``n`` distinct random real pairs (the paper; with replacement when the data has fewer);
* ``random``: standard-normal states and uniform actions in ``[-max_action, max_action]``;
* ``kmeans++``: k-means++ seeding (D^2 sampling) over the normalized states of a pool of rows;
* ``top-q``: the pool's rows with the highest teacher value ``q*(s, a)``.

Every draw comes from the run's generator, in a fixed order, so a seed fixes the start (and
resuming never repeats these draws: they happen before the first outer step).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .objectives import teacher_values

INITS = ("real", "random", "kmeans++", "top-q")


def initial_pairs(init: str, n: int, real_obs: torch.Tensor, real_act: torch.Tensor, generator: torch.Generator,
                  max_action: float = 1.0, pool_size: int = 50_000, teacher=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(S, A)``: ``n`` starting pairs on ``real_obs``'s device (copies, never views of the data)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    rows, device = len(real_obs), real_obs.device
    if init == "random":
        obs = torch.randn(n, real_obs.shape[1], generator=generator)
        act = max_action * (2 * torch.rand(n, real_act.shape[1], generator=generator) - 1)
        return obs.to(device), act.to(device)
    if init == "real":
        if rows >= n:
            idx = torch.randperm(rows, generator=generator)[:n]
        else:
            idx = torch.randint(0, rows, (n,), generator=generator)
    elif init == "kmeans++":
        pool = _pool(rows, pool_size, generator)
        idx = pool[kmeanspp(real_obs[pool.to(device)], n, generator)]
    else:  # top-q
        if teacher is None:
            raise ValueError("init 'top-q' needs a teacher (its critic ranks the real pairs)")
        pool = _pool(rows, pool_size, generator)
        on_device = pool.to(device)
        q = teacher_values(teacher, real_obs[on_device], real_act[on_device])
        q = torch.nan_to_num(q.float().cpu(), nan=-float("inf"))
        order = torch.argsort(q, descending=True, stable=True)
        idx = pool[order[:n]] if len(pool) >= n else pool[order[torch.arange(n) % len(pool)]]
    idx = idx.to(device)
    return real_obs[idx].clone(), real_act[idx].clone()


def _pool(rows: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """The rows the kmeans++ / top-q inits consider: all of them, or ``size`` random ones."""
    if rows <= size:
        return torch.arange(rows)
    return torch.randperm(rows, generator=generator)[:size]


def kmeanspp(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``n`` rows of ``x`` chosen by k-means++ seeding (D^2 sampling, in float64)."""
    x = x.double().cpu()
    chosen = [int(torch.randint(0, len(x), (1,), generator=generator))]
    d2 = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(1, n):
        total = float(d2.sum())
        if total > 0 and math.isfinite(total):
            j = int(torch.multinomial(d2 / total, 1, generator=generator))
        else:  # every remaining point coincides with a center: draw uniformly
            j = int(torch.randint(0, len(x), (1,), generator=generator))
        chosen.append(j)
        d2 = torch.minimum(d2, ((x - x[j]) ** 2).sum(1))
    return torch.tensor(chosen)
