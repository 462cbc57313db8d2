"""The distillation driver: the paper's bi-level loop on real data with a teacher.

Each outer step (:meth:`Distiller.step`) draws, from one seeded ``torch.Generator``, a fresh
policy ``theta_0``, the head noise of every inner step, ``real_batches x real_batch_size`` real
states (with replacement), the outer loss's head noise and the noise of the teacher's sampled
actions; computes the objective's targets and weights; gets ``(H, dH/dS, dH/dA)`` from
:func:`obd_fast.meta_gradient` (fused when available); clips the gradient norm over (S, A) and
takes an SGD-with-momentum step (``torch.optim.SGD`` semantics, dampening 0).

Objectives (DESIGN.md): ``dbc`` (targets = dataset actions), ``pbc`` (targets = teacher actions
sampled with fresh noise), ``av-pbc`` (PBC weighted by ``beta * q1(s, a*)``).

:func:`distill` runs the loop with periodic evaluation, atomic saves (``synset.pt``: the synthetic
set with its metadata; ``state.pt``: everything needed to continue bit for bit), ``log.csv``,
``learning_curve.png`` and a tqdm bar. A resumed run gives the same synthetic set as an
uninterrupted one with the same seed: all randomness comes from the saved generator, and the
evaluations use generators of their own.

A step whose targets, weights, loss or meta-gradient are not finite is skipped (nothing is
updated, the generator has still advanced), counted and logged; ``max_nonfinite_in_a_row`` such
steps in a row stop the run with :class:`NonFiniteError`. Nothing non-finite is ever saved.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .checkpoint import atomic_torch_save, atomic_write, atomic_write_text
from .checks import all_finite
from ._extension import resolve_backend
from .graph import MetaGradientGraph
from .ops import meta_gradient, unroll_bc, weighted_bc_loss
from .policy import PolicySpec
from .synset import OBJECTIVES, SyntheticSet

INITS = ("real", "random", "kmeans++", "top-q")
STATE_FORMAT = "obd-fast-distill-state"
STATE_VERSION = 1
LOG_COLUMNS = ("step", "loss", "grad_norm", "skipped", "seconds")
EVAL_COLUMNS = ("eval_loss", "score_mean", "score_std")
# settings a resumed run must share with the saved one (the others, e.g. steps, may change)
RESUME_FIELDS = ("objective", "n_syn", "init", "inner_steps", "inner_lr", "inner_momentum", "real_batches",
                 "real_batch_size", "beta", "outer_lr", "outer_momentum", "clip_norm", "hidden", "head",
                 "teacher_sample", "seed", "init_pool")


class NonFiniteError(FloatingPointError):
    """Too many outer steps in a row had a non-finite loss or meta-gradient."""


@dataclass
class DistillConfig:
    """Distillation settings; the defaults are the paper's (DESIGN.md's table)."""

    objective: str = "av-pbc"
    steps: int = 20_000                 # outer steps (paper: Av-PBC hopper 20k; DBC/PBC hopper 50k)
    n_syn: int = 256                    # synthetic pairs
    init: str = "real"                  # "real" (random real pairs, paper), "random", "kmeans++", "top-q"
    inner_steps: int = 100              # T: plain SGD steps of BC per outer step
    inner_lr: float = 0.1
    inner_momentum: float = 0.0
    real_batches: int = 10              # real states per outer step: real_batches * real_batch_size
    real_batch_size: int = 256
    beta: float = 0.02                  # Av-PBC weight scale: w = beta * q1(s, a*)
    outer_lr: float = 0.1               # SGD on (S, A)
    outer_momentum: float = 0.9
    clip_norm: float = 2.0              # gradient norm clipped over (S, A) together; 0 disables
    hidden: tuple = (256, 256, 256)     # policy MLP
    head: str = "gaussian"              # tanh-Gaussian head (paper) or "tanh"
    teacher_sample: bool = True         # PBC/Av-PBC targets a* sampled from pi* (paper); False: tanh(mean)
    seed: int = 0
    init_pool: int = 50_000             # rows considered by the kmeans++ / top-q inits
    backend: str = "auto"               # meta_gradient backend ("auto": fused when available)
    precision: str = "native"           # fused matrix products: "native", "bf16" (float32 tensors), "tf32"
    checkpoint_every: Optional[int] = None
    device: str = "cpu"
    cuda_graph: bool = True             # on CUDA with the fused backend: replay the meta-gradient as a CUDA graph
    max_nonfinite_in_a_row: int = 10
    eval_every: int = 1000              # outer steps between evaluations; <= 0: only at the end
    final_eval: bool = True             # evaluate once more when the run ends
    eval_episodes: int = 10             # rollouts per evaluated policy (0: no rollouts, BC loss only)
    eval_policies: int = 1              # BC-trained policies per evaluation
    eval_batch: int = 2560              # held-out real states for the BC-loss evaluation
    save_every: int = 500               # outer steps between saves of synset.pt / state.pt
    max_seconds: Optional[float] = None  # stop (and save) once a run has taken this long
    plot: bool = True                   # write learning_curve.png at each save

    def validate(self) -> "DistillConfig":
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {OBJECTIVES}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; expected one of {INITS}")
        for name in ("n_syn", "inner_steps", "real_batches", "real_batch_size", "max_nonfinite_in_a_row",
                     "init_pool", "eval_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.steps) < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        for name in ("inner_lr", "outer_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v}")
        for name in ("inner_momentum", "outer_momentum", "clip_norm", "beta"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.eval_episodes < 0 or self.eval_policies < 1:
            raise ValueError("eval_episodes must be >= 0 and eval_policies >= 1")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


@dataclass
class Batch:
    """Everything random in one outer step."""

    theta0: torch.Tensor
    index: torch.Tensor
    inner_noise: torch.Tensor
    outer_noise: torch.Tensor
    teacher_noise: torch.Tensor


class Distiller:
    """The bi-level loop, one outer step at a time.

    ``data``: an :class:`~obd_fast.data.OfflineData` (raw states). States are normalized with the
    teacher's normalizer when it has one (the statistics it was trained with), else the data's.
    ``teacher``: a :class:`~obd_fast.teacher.Teacher` (needed for PBC, Av-PBC and the top-q init).
    ``eval_fn(synset) -> dict`` replaces the rollout evaluation (its ``score_mean`` / ``score_std``
    are logged); by default rollouts run when the data names an environment and
    ``eval_episodes > 0``.
    """

    def __init__(self, data, teacher=None, config: Optional[DistillConfig] = None, *,
                 data_source: Optional[str] = None, teacher_path: Optional[str] = None,
                 eval_fn: Optional[Callable[[SyntheticSet], dict]] = None):
        self.config = cfg = replace(config or DistillConfig()).validate()
        if cfg.objective in ("pbc", "av-pbc") and teacher is None:
            raise ValueError(f"objective {cfg.objective!r} needs a teacher")
        if cfg.init == "top-q" and teacher is None:
            raise ValueError("init 'top-q' needs a teacher (its critic ranks the real pairs)")
        if len(data) < 1:
            raise ValueError("the dataset is empty")
        if teacher is not None and (teacher.obs_dim, teacher.act_dim) != (data.obs_dim, data.act_dim):
            raise ValueError(f"the teacher is for obs_dim={teacher.obs_dim}, act_dim={teacher.act_dim}; the dataset "
                             f"has obs_dim={data.obs_dim}, act_dim={data.act_dim}")
        self.teacher = teacher
        self.data_len = len(data)
        self.env_id = data.env_id
        self.data_source = data_source or (str(data.metadata.get("source")) if data.metadata.get("source") else None)
        self.teacher_path = teacher_path
        self.eval_fn = eval_fn
        self.device = torch.device(cfg.device)
        self.normalizer = (teacher.normalizer if teacher is not None and teacher.normalizer is not None
                           else data.normalizer)
        max_action = float(getattr(teacher, "max_action", 1.0)) if teacher is not None else 1.0
        self.spec = PolicySpec(data.obs_dim, data.act_dim, tuple(cfg.hidden), cfg.head, max_action)
        obs = self.normalizer.normalize(np.asarray(data.observations, dtype=np.float64))
        self.real_obs = torch.as_tensor(obs, dtype=torch.float32).to(self.device)
        self.real_act = torch.as_tensor(np.asarray(data.actions), dtype=torch.float32).to(self.device)
        if not (torch.isfinite(self.real_obs).all() and torch.isfinite(self.real_act).all()):
            raise ValueError("the dataset has non-finite states or actions (after normalization)")

        self.gen = torch.Generator().manual_seed(int(cfg.seed))
        self.syn_obs, self.syn_act = self._init_synset()
        self.vel_obs = torch.zeros_like(self.syn_obs)
        self.vel_act = torch.zeros_like(self.syn_act)
        self.step_count = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.log: Dict[str, list] = {c: [] for c in LOG_COLUMNS}
        self.history: List[dict] = []
        self._heldout = None
        self._graph = None  # MetaGradientGraph, built at the first outer step when used

    # -- initialization ------------------------------------------------------------------------
    def _pool(self) -> torch.Tensor:
        n = self.data_len
        if n <= self.config.init_pool:
            return torch.arange(n)
        return torch.randperm(n, generator=self.gen)[:self.config.init_pool]

    def _init_synset(self):
        cfg, n, gen = self.config, self.config.n_syn, self.gen
        if cfg.init == "random":
            obs = torch.randn(n, self.spec.obs_dim, generator=gen)
            act = self.spec.max_action * (2 * torch.rand(n, self.spec.act_dim, generator=gen) - 1)
            return obs.to(self.device), act.to(self.device)
        if cfg.init == "real":
            if self.data_len >= n:
                idx = torch.randperm(self.data_len, generator=gen)[:n]
            else:
                idx = torch.randint(0, self.data_len, (n,), generator=gen)
        elif cfg.init == "kmeans++":
            idx = self._kmeanspp(self._pool(), n)
        else:  # top-q
            pool = self._pool()
            q = self._teacher_q(self.real_obs[pool.to(self.device)], self.real_act[pool.to(self.device)])
            q = torch.nan_to_num(q.float().cpu(), nan=-float("inf"))
            order = torch.argsort(q, descending=True, stable=True)
            idx = pool[order[:n]] if len(pool) >= n else pool[order[torch.arange(n) % len(pool)]]
        idx = idx.to(self.device)
        return self.real_obs[idx].clone(), self.real_act[idx].clone()

    def _kmeanspp(self, pool: torch.Tensor, n: int) -> torch.Tensor:
        """k-means++ seeding (D^2 sampling) of ``n`` rows of ``pool`` on the normalized states."""
        x = self.real_obs[pool.to(self.device)].double().cpu()
        chosen = [int(torch.randint(0, len(pool), (1,), generator=self.gen))]
        d2 = ((x - x[chosen[0]]) ** 2).sum(1)
        for _ in range(1, n):
            total = float(d2.sum())
            if total > 0 and math.isfinite(total):
                j = int(torch.multinomial(d2 / total, 1, generator=self.gen))
            else:  # every remaining point coincides with a center: draw uniformly
                j = int(torch.randint(0, len(pool), (1,), generator=self.gen))
            chosen.append(j)
            d2 = torch.minimum(d2, ((x - x[j]) ** 2).sum(1))
        return pool[torch.tensor(chosen)]

    # -- teacher -------------------------------------------------------------------------------
    def _teacher_act(self, obs, noise):
        t = self.teacher
        a = t.act(obs.to(t.device), None if noise is None else noise.to(t.device))
        return a.to(self.device, torch.float32)

    def _teacher_q(self, obs, act):
        t = self.teacher
        q = t.q(obs.to(t.device), act.to(t.device))
        return q.reshape(len(obs)).to(self.device, torch.float32)

    def targets(self, index: torch.Tensor, teacher_noise: Optional[torch.Tensor]):
        """(obs, target, weight) of the outer objective for real rows ``index``."""
        obs = self.real_obs[index]
        if self.config.objective == "dbc":
            return obs, self.real_act[index], None
        noise = teacher_noise if self.config.teacher_sample else None
        target = self._teacher_act(obs, noise)
        if self.config.objective == "pbc":
            return obs, target, None
        return obs, target, self.config.beta * self._teacher_q(obs, target)

    # -- the outer step ------------------------------------------------------------------------
    def draw(self) -> Batch:
        """The random inputs of the next outer step, from the run's generator."""
        cfg, gen, spec = self.config, self.gen, self.spec
        b = cfg.real_batches * cfg.real_batch_size
        theta0 = spec.init_params(generator=gen)
        index = torch.randint(0, self.data_len, (b,), generator=gen)
        inner_noise = torch.randn(cfg.inner_steps, cfg.n_syn, spec.act_dim, generator=gen)
        outer_noise = torch.randn(b, spec.act_dim, generator=gen)
        teacher_noise = torch.randn(b, spec.act_dim, generator=gen)
        dev = self.device
        return Batch(theta0.to(dev), index.to(dev), inner_noise.to(dev), outer_noise.to(dev), teacher_noise.to(dev))

    def objective_and_grad(self, batch: Batch):
        """(H, dH/dS, dH/dA) at the current synthetic set for ``batch``; None if the targets or
        weights are not finite."""
        cfg = self.config
        obs, target, weight = self.targets(batch.index, batch.teacher_noise)
        if not all_finite(target) or (weight is not None and not all_finite(weight)):
            return None
        gaussian = self.spec.head == "gaussian"
        inner_noise = batch.inner_noise if gaussian else None
        outer_noise = batch.outer_noise if gaussian else None
        if self.uses_cuda_graph():
            if self._graph is None:
                self._graph = MetaGradientGraph(
                    self.spec, cfg.n_syn, obs.shape[0], steps=cfg.inner_steps, lr=cfg.inner_lr,
                    momentum=cfg.inner_momentum, weighted=weight is not None, dtype=self.syn_obs.dtype,
                    device=self.device, checkpoint_every=cfg.checkpoint_every, precision=cfg.precision)
            out = self._graph(batch.theta0, self.syn_obs, self.syn_act, obs, target, weight, inner_noise, outer_noise)
            return tuple(t.clone() for t in out)  # the graph's outputs are overwritten by its next replay
        return meta_gradient(batch.theta0, self.syn_obs, self.syn_act, self.spec, obs, target, weight,
                             steps=cfg.inner_steps, lr=cfg.inner_lr, momentum=cfg.inner_momentum,
                             inner_noise=inner_noise, outer_noise=outer_noise, backend=cfg.backend,
                             checkpoint_every=cfg.checkpoint_every, precision=cfg.precision)

    def uses_cuda_graph(self) -> bool:
        """Whether outer steps replay one captured meta-gradient (CUDA, fused backend, cuda_graph on):
        the same result as the eager call, without launching its kernels from the host each step."""
        cfg = self.config
        on_cuda = self.device.type == "cuda"
        return bool(cfg.cuda_graph) and on_cuda and resolve_backend(cfg.backend, self.device) == "fused"

    def step(self) -> float:
        """One outer step; returns the objective H before the update (NaN for a skipped step)."""
        cfg = self.config
        t0 = time.perf_counter()
        batch = self.draw()
        out = self.objective_and_grad(batch)
        self.step_count += 1
        loss, norm = float("nan"), float("nan")
        if out is not None:
            h, g_obs, g_act = out
            loss = float(h)
            norm = float(torch.sqrt(g_obs.double().pow(2).sum() + g_act.double().pow(2).sum()))
        if out is None or not (math.isfinite(loss) and math.isfinite(norm)):
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            self._log_row(loss, norm, 1, time.perf_counter() - t0)
            if self.nonfinite_in_a_row >= cfg.max_nonfinite_in_a_row:
                raise NonFiniteError(
                    f"{self.nonfinite_in_a_row} outer steps in a row (up to step {self.step_count}) had a non-finite "
                    f"objective or meta-gradient ({self.nonfinite_total} in all); stopped. Lower the outer lr, use "
                    "precision='native', or check the teacher's critic values")
            return loss
        self.nonfinite_in_a_row = 0
        scale = min(1.0, cfg.clip_norm / (norm + 1e-6)) if cfg.clip_norm > 0 else 1.0
        vel_obs = self.vel_obs * cfg.outer_momentum + g_obs * scale
        vel_act = self.vel_act * cfg.outer_momentum + g_act * scale
        new_obs = self.syn_obs - cfg.outer_lr * vel_obs
        new_act = self.syn_act - cfg.outer_lr * vel_act
        self.vel_obs, self.vel_act, self.syn_obs, self.syn_act = vel_obs, vel_act, new_obs, new_act
        self._log_row(loss, norm, 0, time.perf_counter() - t0)
        return loss

    def _log_row(self, loss, norm, skipped, seconds):
        for k, v in zip(LOG_COLUMNS, (self.step_count, loss, norm, skipped, seconds)):
            self.log[k].append(v)

    # -- evaluation ----------------------------------------------------------------------------
    def heldout(self):
        """A fixed batch of real states with deterministic targets (its own generator)."""
        if self._heldout is None:
            g = torch.Generator().manual_seed(int(self.config.seed) + 7_777_777)
            idx = torch.randint(0, self.data_len, (self.config.eval_batch,), generator=g).to(self.device)
            obs = self.real_obs[idx]
            if self.config.objective == "dbc":
                target, weight = self.real_act[idx], None
            else:
                target = self._teacher_act(obs, None)
                weight = self.config.beta * self._teacher_q(obs, target) if self.config.objective == "av-pbc" else None
            self._heldout = (obs, target, weight)
        return self._heldout

    @torch.no_grad()
    def eval_loss(self, policies: int = 3) -> float:
        """The objective (deterministic actions) on the held-out batch after BC on the synthetic set,
        averaged over ``policies`` fresh policies (fixed seeds, so comparable across steps)."""
        cfg, spec = self.config, self.spec
        obs, target, weight = self.heldout()
        g = torch.Generator().manual_seed(int(cfg.seed) + 99_991)
        losses = []
        for _ in range(policies):
            theta0 = spec.init_params(generator=g).to(self.device)
            noise = torch.randn(cfg.inner_steps, cfg.n_syn, spec.act_dim, generator=g).to(self.device)
            theta = unroll_bc(theta0, self.syn_obs, self.syn_act, spec, steps=cfg.inner_steps, lr=cfg.inner_lr,
                              momentum=cfg.inner_momentum, noise=noise if spec.head == "gaussian" else None,
                              backend=cfg.backend)
            if weight is not None:
                losses.append(float(weighted_bc_loss(theta, spec, obs, target, weight, backend=cfg.backend)))
            else:
                losses.append(float(weighted_bc_loss(theta, spec, obs, target, backend=cfg.backend)))
        return float(np.mean(losses))

    def evaluate(self) -> dict:
        """BC-loss evaluation, plus rollouts when configured; appended to ``history``."""
        cfg = self.config
        rec = {"step": self.step_count, "eval_loss": self.eval_loss()}
        syn = self.synset()
        res = None
        if self.eval_fn is not None:
            res = self.eval_fn(syn)
        elif self.env_id and cfg.eval_episodes > 0:
            from .evaluate import evaluate_synset

            res = evaluate_synset(syn, self.env_id, episodes=cfg.eval_episodes, policies=cfg.eval_policies,
                                  seed=cfg.seed)
        if res is not None:
            rec["score_mean"] = float(res.get("score_mean", res.get("mean")))
            rec["score_std"] = float(res.get("score_std", res.get("std", float("nan"))))
        # a diverged evaluation is recorded as None: files hold plain JSON, never NaN
        rec = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in rec.items()}
        self.history.append(rec)
        return rec

    # -- products and state --------------------------------------------------------------------
    def synset(self) -> SyntheticSet:
        return SyntheticSet(self.syn_obs.detach().cpu().clone(), self.syn_act.detach().cpu().clone(), self.spec,
                            self.normalizer, objective=self.config.objective, step=self.step_count,
                            seed=int(self.config.seed), env_id=self.env_id, data_source=self.data_source,
                            teacher_path=self.teacher_path, config=self.config.to_dict(),
                            history=[dict(h) for h in self.history])

    def state_dict(self) -> dict:
        for t in (self.syn_obs, self.syn_act, self.vel_obs, self.vel_act):
            if not bool(torch.isfinite(t).all()):  # cannot happen (non-finite steps are skipped); never save it
                raise NonFiniteError("the synthetic set or its momentum became non-finite; not saved")
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION, "config": self.config.to_dict(),
            "step": self.step_count, "syn_obs": self.syn_obs.cpu().clone(), "syn_act": self.syn_act.cpu().clone(),
            "vel_obs": self.vel_obs.cpu().clone(), "vel_act": self.vel_act.cpu().clone(),
            "generator": self.gen.get_state(), "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "log": {k: [float(v) for v in vals] for k, vals in self.log.items()},
            "history": json.loads(json.dumps(self.history)),
            "data": {"rows": self.data_len, "obs_dim": self.spec.obs_dim, "act_dim": self.spec.act_dim},
        }

    def load_state_dict(self, state: dict, source: str = "state") -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{source}: not an obd-fast distillation state")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{source}: state version {state.get('version')!r}, expected {STATE_VERSION}")
        saved = state["config"]
        mine = self.config.to_dict()
        diff = [f"{k}: saved {saved.get(k)!r}, now {mine[k]!r}" for k in RESUME_FIELDS if saved.get(k) != mine[k]]
        if diff:
            raise ValueError(f"{source}: cannot resume with different settings ({'; '.join(diff)})")
        want = {"rows": self.data_len, "obs_dim": self.spec.obs_dim, "act_dim": self.spec.act_dim}
        if state["data"] != want:
            raise ValueError(f"{source}: the run was made on a dataset with {state['data']}, this one has {want}")
        shapes = {"syn_obs": self.syn_obs.shape, "syn_act": self.syn_act.shape}
        for k, shape in dict(shapes, vel_obs=shapes["syn_obs"], vel_act=shapes["syn_act"]).items():
            if tuple(state[k].shape) != tuple(shape) or not bool(torch.isfinite(state[k]).all()):
                raise ValueError(f"{source}: {k} has shape {tuple(state[k].shape)} or non-finite values")
        dev = self.device
        self.syn_obs, self.syn_act = state["syn_obs"].to(dev, torch.float32), state["syn_act"].to(dev, torch.float32)
        self.vel_obs, self.vel_act = state["vel_obs"].to(dev, torch.float32), state["vel_act"].to(dev, torch.float32)
        self.gen.set_state(state["generator"])
        self.step_count = int(state["step"])
        self.nonfinite_total = int(state["nonfinite_total"])
        self.nonfinite_in_a_row = int(state["nonfinite_in_a_row"])
        self.log = {k: list(state["log"].get(k, [])) for k in LOG_COLUMNS}
        for k in ("step", "skipped"):
            self.log[k] = [int(v) for v in self.log[k]]
        self.history = list(state["history"])

    # -- files ---------------------------------------------------------------------------------
    def log_csv(self) -> str:
        evals = {h["step"]: h for h in self.history}
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(LOG_COLUMNS + EVAL_COLUMNS)
        n = len(self.log["step"])
        for i in range(n):
            row = [self.log[k][i] for k in LOG_COLUMNS]
            e = evals.get(self.log["step"][i], {})
            w.writerow(row + ["" if e.get(k) is None else e[k] for k in EVAL_COLUMNS])
        return buf.getvalue()

    def save(self, out_dir) -> None:
        """Atomically write ``synset.pt``, ``state.pt``, ``log.csv`` (and ``learning_curve.png``)."""
        out = Path(out_dir)
        self.synset().save(out / "synset.pt")
        atomic_torch_save(self.state_dict(), out / "state.pt")
        atomic_write_text(out / "log.csv", self.log_csv())
        if self.config.plot:
            plot_learning_curve(self.log, self.history, out / "learning_curve.png",
                                title=f"{self.config.objective} (N={self.config.n_syn}, T={self.config.inner_steps})")


def load_state(path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the distillation state ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); move it away to start over") from None


def plot_learning_curve(log: dict, history: List[dict], path, title: str = "") -> None:
    """Outer objective per step and the evaluations, as a PNG (matplotlib's Agg canvas, no pyplot,
    so no global backend is touched)."""
    from matplotlib.figure import Figure

    steps = np.asarray(log["step"], dtype=float)
    loss = np.asarray(log["loss"], dtype=float)
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    ax = axes[0]
    if len(steps):
        k = max(1, len(loss) // 50)
        ax.plot(steps, loss, lw=0.5 if k > 1 else 1.0, alpha=0.4 if k > 1 else 1.0, color="C0",
                label="outer objective H")
        if k > 1:
            kernel = np.ones(k) / k
            valid = np.nan_to_num(loss, nan=np.nanmean(loss) if np.isfinite(loss).any() else 0.0)
            ax.plot(steps[k - 1:], np.convolve(valid, kernel, mode="valid"), color="C0", label=f"mean of {k}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("outer step")
    ax.set_ylabel("objective")
    ax = axes[1]
    scored = [h for h in history if h.get("score_mean") is not None]
    if scored:
        ax.errorbar([h["step"] for h in scored], [h["score_mean"] for h in scored],
                    yerr=[h.get("score_std") or 0.0 for h in scored], marker="o", capsize=3)
        ax.set_ylabel("normalized return (0-100)")
    else:
        evals = [h for h in history if h.get("eval_loss") is not None]
        ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], marker="o")
        ax.set_ylabel("held-out objective after BC")
    ax.set_xlabel("outer step")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def distill(data, teacher=None, objective: Optional[str] = None, steps: Optional[int] = None, out_dir=None,
            eval_every: Optional[int] = None, seed: Optional[int] = None, resume: bool = False,
            config: Optional[DistillConfig] = None, progress: bool = True, data_source: Optional[str] = None,
            teacher_path: Optional[str] = None, eval_fn: Optional[Callable] = None, **overrides) -> SyntheticSet:
    """Distill ``data`` (with ``teacher`` for PBC/Av-PBC) into a :class:`SyntheticSet`.

    ``config`` (default: the paper's :class:`DistillConfig`, objective Av-PBC, seed 0) with
    ``objective``, ``seed``, ``steps``, ``eval_every`` (when given) and any other field in
    ``overrides`` replaced. With ``out_dir`` the run saves
    there every ``save_every`` steps and at the end; ``resume=True`` continues from its
    ``state.pt`` (an existing ``state.pt`` without ``resume`` is an error, so runs are never
    overwritten by accident). Returns the final synthetic set (also ``out_dir/synset.pt``).
    """
    from tqdm.auto import tqdm

    given = dict(objective=objective, seed=None if seed is None else int(seed),
                 steps=None if steps is None else int(steps), eval_every=None if eval_every is None else int(eval_every))
    cfg = replace(config or DistillConfig(), **{k: v for k, v in given.items() if v is not None}, **overrides)
    cfg.validate()
    out = Path(out_dir) if out_dir is not None else None
    state = None
    if out is not None and (out / "state.pt").exists():
        if not resume:
            raise ValueError(f"{out} already holds a distillation run (state.pt): pass resume=True (--resume) to "
                             "continue it, or choose another output directory")
        state = load_state(out / "state.pt")
    dist = Distiller(data, teacher, cfg, data_source=data_source, teacher_path=teacher_path, eval_fn=eval_fn)
    if state is not None:
        dist.load_state_dict(state, str(out / "state.pt"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(
            dict(config=cfg.to_dict(), data_source=dist.data_source, teacher_path=teacher_path, env_id=dist.env_id,
                 spec=dist.spec.to_dict()), indent=1))

    t_start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=min(dist.step_count, cfg.steps), desc=f"distill {cfg.objective}",
               unit="step", disable=not progress, dynamic_ncols=True)
    last_score = next((h.get("score_mean") for h in reversed(dist.history) if "score_mean" in h), None)
    try:
        while dist.step_count < cfg.steps:
            loss = dist.step()
            bar.update(1)
            post = {"loss": f"{loss:.4g}"}
            if dist.nonfinite_total:
                post["skipped"] = dist.nonfinite_total
            if cfg.eval_every > 0 and dist.step_count % cfg.eval_every == 0 and dist.step_count < cfg.steps:
                rec = dist.evaluate()
                last_score = rec.get("score_mean", last_score)
            if last_score is not None:
                post["score"] = f"{last_score:.1f}"
            bar.set_postfix(post, refresh=False)
            timed_out = cfg.max_seconds is not None and time.perf_counter() - t_start >= cfg.max_seconds
            if out is not None and (timed_out or (cfg.save_every > 0 and dist.step_count % cfg.save_every == 0)):
                dist.save(out)
            if timed_out:
                bar.write(f"distill {cfg.objective}: time budget of {cfg.max_seconds:.0f} s reached at step "
                          f"{dist.step_count}/{cfg.steps}")
                break
    finally:
        bar.close()
    if cfg.final_eval and not (dist.history and dist.history[-1]["step"] == dist.step_count):
        dist.evaluate()
    if out is not None:
        dist.save(out)
    return dist.synset()
