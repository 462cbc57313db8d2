"""The distillation driver: the paper's bi-level loop on real data with a teacher.

A :class:`Distiller` is a loop over parts with one job each:

* the objective (:mod:`obd_fast.objectives`): targets and weights on the real batch;
* the initialization (:mod:`obd_fast.initialization`): where the synthetic set starts;
* the step's random draws (:class:`obd_fast.outer.StepDraws`), all from the run's one generator;
* the meta-gradient (:func:`obd_fast.meta_gradient`, fused when available, replayed as a CUDA
  graph on CUDA);
* the outer update: the gradient clipped over (S, A) together, then SGD with momentum
  (:mod:`obd_fast.outer`).

A step whose targets, weights, loss or meta-gradient are not finite is skipped (nothing is
updated, the generator has still advanced), counted and logged; ``max_nonfinite_in_a_row`` such
steps in a row stop the run with :class:`NonFiniteError`. Nothing non-finite is ever saved.

:func:`distill` runs the loop with periodic evaluation, atomic saves (``synset.pt``: the synthetic
set with its metadata; ``state.pt``: everything needed to continue bit for bit), ``log.csv``,
``learning_curve.png`` and a progress bar. A resumed run gives the same synthetic set as an
uninterrupted one with the same seed: all randomness comes from the saved generator, and the
evaluations use generators of their own.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from . import plots
from ._extension import resolve_backend
from .atomic import atomic_torch_save, atomic_write_text
from .checks import BACKENDS, PRECISIONS, all_finite
from .graph import MetaGradientGraph
from .initialization import INITS, initial_pairs
from .objectives import OBJECTIVES, make_objective
from .ops import meta_gradient, unroll_bc, weighted_bc_loss
from .options import NONNEG, POS, minutes_as_seconds, nonneg_float, option, positive_float, widths
from .outer import Batch, OuterSGD, StepDraws, clip_grad_norm, grad_norm
from .policy import HEADS, PolicySpec
from .runs import Progress, RunDir, csv_text
from .synset import SyntheticSet

STATE_FORMAT = "obd-fast-distill-state"
STATE_VERSION = 1
LOG_COLUMNS = ("step", "loss", "grad_norm", "skipped", "seconds")
EVAL_COLUMNS = ("eval_loss", "score_mean", "score_std")
RUN = "a distillation run"  # what RunDir's messages call it

__all__ = ["DistillSettings", "RunControl", "DistillConfig", "Distiller", "NonFiniteError", "Batch", "distill",
           "load_state"]


class NonFiniteError(FloatingPointError):
    """Too many outer steps in a row had a non-finite loss or meta-gradient."""


@dataclass
class DistillSettings:
    """The algorithm's settings: what the synthetic set's numbers depend on, so a resumed run must
    use the saved ones. The defaults are the paper's (``docs/design.md``)."""

    objective: str = option("av-pbc", "what the set is distilled towards", choices=OBJECTIVES)
    n_syn: int = option(256, "synthetic pairs", type=POS)
    init: str = option("real", "starting pairs: random real ones (paper), random values, k-means++ or the "
                               "highest teacher values over a pool of rows", choices=INITS)
    inner_steps: int = option(100, "T: plain SGD steps of BC per outer step", type=POS)
    inner_lr: float = option(0.1, "inner SGD learning rate", type=positive_float)
    inner_momentum: float = option(0.0, "inner SGD momentum", type=nonneg_float)
    real_batches: int = option(10, "real states per outer step: real_batches * real_batch_size", type=POS)
    real_batch_size: int = option(256, type=POS)
    beta: float = option(0.02, "Av-PBC weight scale: w = beta * q1(s, a*)", type=nonneg_float)
    outer_lr: float = option(0.1, "SGD on (S, A)", type=positive_float)
    outer_momentum: float = option(0.9, type=nonneg_float)
    clip_norm: float = option(2.0, "gradient norm clipped over (S, A) together; 0 disables", type=nonneg_float)
    hidden: tuple = option((256, 256, 256), "hidden widths of the policy MLP", type=widths)
    head: str = option("gaussian", "tanh-Gaussian head (paper) or plain tanh", choices=HEADS)
    teacher_sample: bool = option(True, "PBC/Av-PBC targets are the teacher's deterministic actions instead of "
                                        "samples a* ~ pi*(s) (paper)")
    seed: int = option(0, "seed of the run's random generator", type=int)
    init_pool: int = option(50_000, "rows considered by the kmeans++ / top-q inits", type=POS)


@dataclass
class RunControl:
    """How a run is carried out; a resumed run may change these."""

    steps: int = option(20_000, "outer steps", type=POS)
    backend: str = option("auto", "meta_gradient backend (auto: fused when available)", choices=BACKENDS)
    precision: str = option("native", "fused matrix products: native, bf16 (float32 tensors) or tf32",
                            choices=PRECISIONS)
    checkpoint_every: Optional[int] = option(None, "fused: keep theta every k inner steps", type=POS)
    device: str = option("cpu")
    cuda_graph: bool = option(True, "on CUDA: launch each meta-gradient eagerly instead of replaying a captured "
                                    "CUDA graph")
    max_nonfinite_in_a_row: int = option(10, "stop after this many non-finite outer steps in a row", type=POS)
    eval_every: int = option(1000, "outer steps between evaluations; 0: only at the end", type=NONNEG)
    final_eval: bool = option(True, "no evaluation when the run ends")
    eval_episodes: int = option(10, "rollouts per evaluated policy; 0: no rollouts (held-out BC loss only)",
                                type=NONNEG)
    eval_policies: int = option(1, "BC-trained policies per evaluation", type=POS)
    eval_batch: int = option(2560, "held-out real states of the BC-loss evaluation", type=POS)
    save_every: int = option(500, "outer steps between saves of synset.pt / state.pt", type=POS)
    max_seconds: Optional[float] = option(None, "stop (and save) after this many minutes", flag="--max-minutes",
                                          type=minutes_as_seconds, metavar="MINUTES")
    plot: bool = option(True, "no learning_curve.png")


@dataclass
class DistillConfig(RunControl, DistillSettings):
    """All settings of a distillation: :class:`DistillSettings` (the algorithm) and
    :class:`RunControl` (how it runs), as one flat dataclass."""

    def validate(self) -> "DistillConfig":
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {tuple(OBJECTIVES)}")
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

    def settings(self) -> DistillSettings:
        return DistillSettings(**{f.name: getattr(self, f.name) for f in fields(DistillSettings)})

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


SETTINGS_FIELDS = tuple(f.name for f in fields(DistillSettings))


class Distiller:
    """The bi-level loop, one outer step at a time.

    ``data``: an :class:`~obd_fast.data.OfflineData` (raw states). States are normalized with the
    teacher's normalizer when it has one (the statistics it was trained with), else the data's.
    ``teacher``: a :class:`~obd_fast.teacher.Teacher` (needed for PBC, Av-PBC and the top-q init).
    ``eval_fn(synset) -> dict`` replaces the rollout evaluation (its ``score_mean`` / ``score_std``
    are logged); by default rollouts run when the data names an environment and
    ``eval_episodes > 0``.

    The synthetic set ``(syn_obs, syn_act)`` is the pair of tensors :attr:`optimizer` updates in
    place; ``vel_obs`` / ``vel_act`` are its momentum buffers.
    """

    def __init__(self, data, teacher=None, config: Optional[DistillConfig] = None, *,
                 data_source: Optional[str] = None, teacher_path: Optional[str] = None,
                 eval_fn: Optional[Callable[[SyntheticSet], dict]] = None):
        self.config = cfg = replace(config or DistillConfig()).validate()
        if OBJECTIVES[cfg.objective].needs_teacher and teacher is None:
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
        self.objective = make_objective(cfg, teacher, self.real_obs)

        self.gen = torch.Generator().manual_seed(int(cfg.seed))
        self._syn = initial_pairs(cfg.init, cfg.n_syn, self.real_obs, self.real_act, self.gen, max_action,
                                  cfg.init_pool, teacher)
        self.optimizer = OuterSGD(self._syn, lr=cfg.outer_lr, momentum=cfg.outer_momentum)
        self.draws = StepDraws(self.spec, cfg.n_syn, cfg.inner_steps, cfg.real_batches * cfg.real_batch_size,
                               self.data_len)
        self.step_count = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.log: Dict[str, list] = {c: [] for c in LOG_COLUMNS}
        self.history: List[dict] = []
        self._heldout = None
        self._graph = None  # MetaGradientGraph, built at the first outer step when used

    # -- the synthetic set and its momentum ---------------------------------------------------
    @property
    def syn_obs(self) -> torch.Tensor:
        return self._syn[0]

    @property
    def syn_act(self) -> torch.Tensor:
        return self._syn[1]

    @property
    def vel_obs(self) -> torch.Tensor:
        return self.optimizer.state[self._syn[0]]["momentum_buffer"]

    @property
    def vel_act(self) -> torch.Tensor:
        return self.optimizer.state[self._syn[1]]["momentum_buffer"]

    # -- the outer step ------------------------------------------------------------------------
    def draw(self) -> Batch:
        """The random inputs of the next outer step, from the run's generator."""
        return self.draws.draw(self.gen).to(self.device)

    def targets(self, index: torch.Tensor, teacher_noise: Optional[torch.Tensor]):
        """(obs, target, weight) of the outer objective for real rows ``index``."""
        obs = self.real_obs[index]
        target, weight = self.objective.targets(obs, self.real_act[index], teacher_noise)
        return obs, target, weight

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
            loss, norm = float(h), grad_norm((g_obs, g_act))
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
        for p, g in zip(self._syn, (g_obs, g_act)):
            p.grad = g
        clip_grad_norm(self._syn, cfg.clip_norm, norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
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
            self._heldout = self.targets(idx, None)
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
            losses.append(float(weighted_bc_loss(theta, spec, obs, target, weight, backend=cfg.backend)))
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
        diff = [f"{k}: saved {saved.get(k)!r}, now {mine[k]!r}" for k in SETTINGS_FIELDS if saved.get(k) != mine[k]]
        if diff:
            raise ValueError(f"{source}: cannot resume with different settings ({'; '.join(diff)})")
        want = {"rows": self.data_len, "obs_dim": self.spec.obs_dim, "act_dim": self.spec.act_dim}
        if state["data"] != want:
            raise ValueError(f"{source}: the run was made on a dataset with {state['data']}, this one has {want}")
        tensors = {"syn_obs": self.syn_obs, "syn_act": self.syn_act, "vel_obs": self.vel_obs, "vel_act": self.vel_act}
        for k, mine_t in tensors.items():
            if tuple(state[k].shape) != tuple(mine_t.shape) or not bool(torch.isfinite(state[k]).all()):
                raise ValueError(f"{source}: {k} has shape {tuple(state[k].shape)} or non-finite values")
        for k, mine_t in tensors.items():
            mine_t.copy_(state[k])
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
        rows = []
        for i, step in enumerate(self.log["step"]):
            row = {k: self.log[k][i] for k in LOG_COLUMNS}
            row.update({k: evals.get(step, {}).get(k) for k in EVAL_COLUMNS})
            rows.append(row)
        return csv_text(LOG_COLUMNS + EVAL_COLUMNS, rows)

    def save(self, out_dir) -> None:
        """Atomically write ``synset.pt``, ``state.pt``, ``log.csv`` (and ``learning_curve.png``)."""
        out = Path(out_dir)
        self.synset().save(out / "synset.pt")
        atomic_torch_save(self.state_dict(), out / "state.pt")
        atomic_write_text(out / "log.csv", self.log_csv())
        if self.config.plot:
            plots.distill_curve(self.log, self.history, out / "learning_curve.png",
                                title=f"{self.config.objective} (N={self.config.n_syn}, T={self.config.inner_steps})")


def load_state(path) -> dict:
    """A saved ``state.pt`` (ValueError, in one line, when it cannot be read)."""
    path = Path(path)
    return RunDir(path.parent, path.name, RUN).load_state()


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
    given = dict(objective=objective, seed=None if seed is None else int(seed),
                 steps=None if steps is None else int(steps), eval_every=None if eval_every is None else int(eval_every))
    cfg = replace(config or DistillConfig(), **{k: v for k, v in given.items() if v is not None}, **overrides)
    cfg.validate()
    run = RunDir(out_dir, "state.pt", RUN) if out_dir is not None else None
    state = run.load_state() if run is not None and run.check(resume) else None
    dist = Distiller(data, teacher, cfg, data_source=data_source, teacher_path=teacher_path, eval_fn=eval_fn)
    if state is not None:
        dist.load_state_dict(state, str(run.state_path))
    if run is not None:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_json("config.json", dict(config=cfg.to_dict(), data_source=dist.data_source,
                                           teacher_path=teacher_path, env_id=dist.env_id, spec=dist.spec.to_dict()),
                       indent=1)

    last_score = next((h.get("score_mean") for h in reversed(dist.history) if "score_mean" in h), None)
    with Progress(cfg.steps, dist.step_count, f"distill {cfg.objective}", "step", progress,
                  max_seconds=cfg.max_seconds) as bar:
        while dist.step_count < cfg.steps:
            loss = dist.step()
            post = {"loss": f"{loss:.4g}"}
            if dist.nonfinite_total:
                post["skipped"] = dist.nonfinite_total
            if cfg.eval_every > 0 and dist.step_count % cfg.eval_every == 0 and dist.step_count < cfg.steps:
                last_score = dist.evaluate().get("score_mean", last_score)
            if last_score is not None:
                post["score"] = f"{last_score:.1f}"
            bar.update(1, **post)
            timed_out = bar.out_of_time()
            if run is not None and (timed_out or (cfg.save_every > 0 and dist.step_count % cfg.save_every == 0)):
                dist.save(run.path)
            if timed_out:
                bar.write(f"distill {cfg.objective}: time budget of {cfg.max_seconds:.0f} s reached at step "
                          f"{dist.step_count}/{cfg.steps}")
                break
    if cfg.final_eval and not (dist.history and dist.history[-1]["step"] == dist.step_count):
        dist.evaluate()
    if run is not None:
        dist.save(run.path)
    return dist.synset()
