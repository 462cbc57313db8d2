"""Train a teacher (Cal-QL or TD3+BC) on an offline dataset, resumably.

:func:`train_teacher` or, from a shell::

    python -m obd_fast.teacher.train --data SOURCE --algo td3bc --steps 200000 --out DIR

``SOURCE`` is anything :func:`obd_fast.data.load_dataset` takes (``bundled:NAME``, a Minari id, an
``.hdf5``/``.npz`` file). States are normalized with the dataset statistics (``data.normalizer``,
eps 1e-3); Cal-QL batches also carry the discounted Monte-Carlo return-to-go of each row (same
discount as the TD target). Rows are drawn uniformly with replacement, ``batch_size`` per update.

The output directory holds

* ``checkpoint.pt``: everything needed to continue (agent with optimizers and targets, the step,
  every random generator, the log so far), written atomically every ``checkpoint_every`` updates
  and at the end. ``resume=True`` (``--resume``) continues from it and ends with exactly the
  weights an uninterrupted run with the same seed ends with; it may also extend a finished run to
  more ``steps``.
* ``teacher.pt``: the final teacher, CORL's keys plus our metadata (normalizer, env, evaluation);
  load it with :func:`obd_fast.teacher.load_teacher`.
* ``log.csv`` (mean losses per logging window, evaluations), ``learning_curve.png``,
  ``summary.json``.

Evaluation (every ``eval_every`` updates and at the end) rolls out the deterministic actor for
``eval_episodes`` episodes in the Gymnasium MuJoCo env (D4RL names map to the ``-v5`` task) and
reports D4RL normalized returns (0-100). It is skipped with ``eval_every=0``, or with a warning
when gymnasium/MuJoCo is missing or the env is unknown. It draws nothing from the training random
generators, so it does not change the training run.
"""
from __future__ import annotations

import hashlib
import math
import random
import warnings
from dataclasses import dataclass
from dataclasses import fields as dc_fields
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .. import plots
from ..options import NONNEG, POS, option
from ..runs import Progress, RunDir, csv_text, rng_state, set_rng_state
from .calql import CalQL, CalQLConfig
from .checkpoints import save_teacher_checkpoint
from .td3bc import TD3BC, TD3BCConfig

ALGOS = {"calql": (CalQL, CalQLConfig), "td3bc": (TD3BC, TD3BCConfig)}
GYM_ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
LOG_KEYS = {
    "calql": ("critic_loss", "critic_td_loss", "cql_loss", "policy_loss", "alpha", "q1_mean", "average_mc_return"),
    "td3bc": ("critic_loss", "actor_loss", "bc_loss", "lambda", "q1_mean"),
}
CHECKPOINT_FORMAT = "obd_fast.teacher.train/1"


class TeacherTrainError(ValueError):
    """Bad arguments or a run directory that does not fit the request."""


class RunExistsError(TeacherTrainError, FileExistsError):
    """The output directory already holds a run and ``resume`` was not given."""


@dataclass
class TeacherRunConfig:
    """The settings of a teacher training run besides the algorithm's own (``CalQLConfig`` /
    ``TD3BCConfig``): the defaults of :func:`train_teacher` and of ``obd-fast train-teacher``."""

    algo: str = option("calql", "the teacher's algorithm", choices=tuple(ALGOS))
    steps: int = option(1_000_000, "gradient updates (CORL: 1M)", type=POS)
    seed: int = option(0, type=int)
    eval_every: int = option(5000, "updates between evaluations; 0: none", type=NONNEG)
    eval_episodes: int = option(10, type=POS)
    batch_size: int = option(256, type=POS)
    checkpoint_every: Optional[int] = option(None, "updates between saves of checkpoint.pt (None: eval_every, "
                                                   "10000 without evaluation)", type=POS)
    log_every: Optional[int] = option(None, "updates per row of log.csv (None: 1000)", type=POS)
    device: str = option("cpu")


# ---------------------------------------------------------------------------------- data
def _make_config(algo: str, config, batch_size: int):
    _, cfg_cls = ALGOS[algo]
    if config is None:
        cfg = cfg_cls()
    elif isinstance(config, cfg_cls):
        cfg = config
    elif isinstance(config, dict):
        known = {f.name for f in dc_fields(cfg_cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TeacherTrainError(f"unknown {cfg_cls.__name__} fields {unknown}; known: {sorted(known)}")
        cfg = cfg_cls(**config)
    else:
        raise TeacherTrainError(f"config for {algo!r} must be a {cfg_cls.__name__} or a dict, got {type(config).__name__}")
    cfg.batch_size = int(batch_size)
    return cfg


def prepare_tensors(data, algo: str, cfg, device="cpu") -> Dict[str, torch.Tensor]:
    """The dataset as training tensors: normalized float32 states, scaled rewards, terminals as
    floats and, for Cal-QL, Monte-Carlo returns-to-go of the scaled rewards (discount ``cfg.gamma``)."""
    if data.normalizer is None:
        raise TeacherTrainError("the dataset has no state normalizer (empty dataset?)")
    rewards = np.asarray(data.rewards, np.float64) * cfg.reward_scale + cfg.reward_bias
    out = dict(
        observations=data.normalizer.normalize(np.asarray(data.observations, np.float64)),
        actions=np.asarray(data.actions, np.float64),
        rewards=rewards,
        next_observations=data.normalizer.normalize(np.asarray(data.next_observations, np.float64)),
        terminals=np.asarray(data.terminals, np.float64),
    )
    if algo == "calql":
        from ..data.table import discounted_returns_to_go

        out["mc_returns"] = discounted_returns_to_go(rewards, np.asarray(data.episode_ids), cfg.gamma)
    return {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32).to(device) for k, v in out.items()}


def _fingerprint(tensors: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _eval_env(env_id: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(Gymnasium env id to evaluate in, None) or (None, why evaluation is skipped)."""
    if env_id is None:
        return None, "the dataset names no environment (pass env_id)"
    try:
        import gymnasium as gym
    except ImportError:
        return None, "gymnasium is not installed (pip install 'obd-fast[rl]')"
    candidates = [env_id]
    from ..data.scores import task_name

    task = task_name(env_id)
    if task is not None and GYM_ENVS[task] != env_id:
        candidates.append(GYM_ENVS[task])
    for cand in candidates:
        if cand in gym.registry:
            try:
                gym.make(cand).close()
            except Exception as exc:  # MuJoCo missing or broken
                return None, f"cannot create {cand!r}: {type(exc).__name__}: {exc}"
            return cand, None
    return None, f"no Gymnasium environment for {env_id!r}"


def _score(data, eval_env: str, returns: np.ndarray) -> np.ndarray:
    from ..data.errors import DatasetError
    from ..data.scores import normalized_score

    for ref in (data, eval_env):
        try:
            return np.asarray(normalized_score(ref, returns), dtype=np.float64)
        except DatasetError:
            continue
    return np.full(len(returns), np.nan)


# ---------------------------------------------------------------------------------- training
R = TeacherRunConfig  # the defaults, stated once on the dataclass


def train_teacher(data, algo: str = R.algo, out_dir="runs/teacher", steps: int = R.steps, seed: int = R.seed,
                  resume: bool = False, eval_every: int = R.eval_every, eval_episodes: int = R.eval_episodes,
                  env_id: Optional[str] = None, batch_size: int = R.batch_size, device=R.device, progress: bool = True,
                  config=None, checkpoint_every: Optional[int] = R.checkpoint_every,
                  log_every: Optional[int] = R.log_every, threads: Optional[int] = None) -> dict:
    """Train ``algo`` ("calql" or "td3bc") for ``steps`` updates; returns the summary (also
    ``out_dir/summary.json``). See the module docstring for the files written.

    ``data``: an :class:`~obd_fast.data.OfflineData` or a source for ``load_dataset``.
    ``config``: a :class:`CalQLConfig` / :class:`TD3BCConfig` or a dict of its fields (defaults:
    CORL's). ``checkpoint_every`` defaults to ``eval_every`` (10000 without evaluation),
    ``log_every`` to 1000 (both also act at the last update). ``threads`` sets
    ``torch.set_num_threads`` for the whole process.
    """
    if algo not in ALGOS:
        raise TeacherTrainError(f"algo must be one of {sorted(ALGOS)}, got {algo!r}")
    steps, eval_every, eval_episodes = int(steps), int(eval_every), int(eval_episodes)
    if steps < 1:
        raise TeacherTrainError(f"steps must be >= 1, got {steps}")
    if eval_every < 0 or eval_episodes < 1:
        raise TeacherTrainError(f"eval_every must be >= 0 and eval_episodes >= 1, got {eval_every}, {eval_episodes}")
    if batch_size < 1:
        raise TeacherTrainError(f"batch_size must be >= 1, got {batch_size}")
    checkpoint_every = int(checkpoint_every or (eval_every if eval_every > 0 else 10_000))
    log_every = int(log_every or 1000)
    if checkpoint_every < 1 or log_every < 1:
        raise TeacherTrainError("checkpoint_every and log_every must be >= 1")
    if threads is not None:
        torch.set_num_threads(int(threads))

    if not hasattr(data, "observations"):
        from ..data import load_dataset

        data = load_dataset(data, env_id=env_id)
    env_id = env_id or data.env_id
    source = data.metadata.get("source") if isinstance(getattr(data, "metadata", None), dict) else None

    run = RunDir(out_dir, "checkpoint.pt", "a teacher run", RunExistsError, outputs=("teacher.pt", "log.csv"))
    resuming = run.check(resume)
    out = run.path
    out.mkdir(parents=True, exist_ok=True)

    agent_cls, _ = ALGOS[algo]
    cfg = _make_config(algo, config, batch_size)
    device = torch.device(device)
    tensors = prepare_tensors(data, algo, cfg, device)
    n_rows = len(tensors["rewards"])
    fingerprint = _fingerprint(tensors)

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    sampler = torch.Generator().manual_seed(seed + 1)
    agent = agent_cls(data.obs_dim, data.act_dim, cfg, max_action=1.0, device=device)
    start, rows, evals, elapsed_before = 0, [], [], 0.0
    sums: Dict[str, float] = {}  # loss sums and counts of the current logging window
    counts: Dict[str, int] = {}

    if resuming:
        ck = run.load_state()
        expect = dict(format=CHECKPOINT_FORMAT, algo=algo, config=cfg.to_dict(), seed=seed, data=fingerprint)
        for key, value in expect.items():
            if ck.get(key) != value:
                what = "the dataset differs" if key == "data" else f"{key}={ck.get(key)!r} there, {value!r} now"
                raise TeacherTrainError(f"cannot resume {run.state_path}: it was made with another setup ({what})")
        if ck["step"] > steps:
            raise TeacherTrainError(f"{run.state_path} is at update {ck['step']}, beyond steps={steps}")
        agent.load_state_dict(ck["agent"])
        set_rng_state(ck["rng"], sampler=sampler)
        start, rows, evals, elapsed_before = ck["step"], list(ck["log"]), list(ck["evaluations"]), ck["elapsed"]
        sums, counts = dict(ck["window"][0]), dict(ck["window"][1])

    eval_env, skip_reason = (None, "eval_every=0") if eval_every == 0 else _eval_env(env_id)
    if eval_every and eval_env is None:
        warnings.warn(f"teacher evaluation skipped: {skip_reason}")

    def evaluate(step: int) -> dict:
        from ..rollout import rollout_returns

        actor = agent.actor
        returns = rollout_returns(lambda x: actor(x), eval_env, eval_episodes, seed=seed,
                                  normalizer=data.normalizer, device=device)
        scores = _score(data, eval_env, returns)
        result = dict(step=step, return_mean=float(returns.mean()), return_std=float(returns.std()),
                      normalized_score=float(scores.mean()), normalized_std=float(scores.std()),
                      returns=[float(r) for r in returns])
        evals.append(result)
        return result

    def save_checkpoint(step: int, elapsed: float) -> None:
        run.save_state(dict(format=CHECKPOINT_FORMAT, algo=algo, config=cfg.to_dict(), seed=seed, data=fingerprint,
                            step=step, agent=agent.state_dict(), rng=rng_state(sampler=sampler), log=rows,
                            window=(sums, counts), evaluations=evals, elapsed=elapsed, env_id=env_id))

    log_columns = ["step", "seconds", *LOG_KEYS[algo], "return_mean", "normalized_score"]
    last_score = evals[-1]["normalized_score"] if evals else None
    step = start
    with Progress(steps, start, f"{algo} teacher", "upd", progress, elapsed_before=elapsed_before) as bar:
        while step < steps:
            idx = torch.randint(n_rows, (cfg.batch_size,), generator=sampler).to(device)
            info = agent.update({k: v[idx] for k, v in tensors.items()})
            step += 1
            for k in LOG_KEYS[algo]:
                if k in info:
                    sums[k] = sums.get(k, 0.0) + info[k]
                    counts[k] = counts.get(k, 0) + 1
            evaluated = None
            if eval_env is not None and (step % eval_every == 0 or step == steps):
                evaluated = evaluate(step)
                last_score = evaluated["normalized_score"]
            if step % log_every == 0 or step == steps or evaluated is not None:
                row = dict(step=step, seconds=round(bar.elapsed(), 3), **{k: sums[k] / counts[k] for k in counts})
                if evaluated is not None:
                    row.update(return_mean=evaluated["return_mean"], normalized_score=evaluated["normalized_score"])
                rows.append(row)
                sums, counts = {}, {}
                run.write_text("log.csv", csv_text(log_columns, rows))
            if step % checkpoint_every == 0 or step == steps:
                save_checkpoint(step, bar.elapsed())
            post = {}
            if step % 50 == 0 or step == steps:
                post["loss"] = f"{info['critic_loss']:.3g}"
                if last_score is not None:
                    post["score"] = f"{last_score:.1f}"
            bar.update(1, **post)
        train_seconds = bar.elapsed()
    if start == steps:  # resumed a finished run: nothing to train, make sure the outputs exist
        save_checkpoint(step, elapsed_before)
        run.write_text("log.csv", csv_text(log_columns, rows))

    final_eval = evals[-1] if evals and evals[-1]["step"] == steps else None
    extra = dict(evaluation=final_eval, evaluations=[{k: v for k, v in e.items() if k != "returns"} for e in evals],
                 steps=steps, seed=seed, data_source=source, data_rows=n_rows, eval_env=eval_env,
                 train_seconds=round(train_seconds, 1))
    teacher_path = save_teacher_checkpoint(out / "teacher.pt", agent, data.normalizer, env_id, extra)
    plots.teacher_curve(out / "learning_curve.png", rows, evals, "policy_loss" if algo == "calql" else "actor_loss",
                        title=f"{algo} on {source or env_id or 'dataset'} (seed {seed})")
    summary = dict(algo=algo, steps=steps, seed=seed, env_id=env_id, eval_env=eval_env,
                   evaluation_skipped=skip_reason if eval_env is None else None,
                   data=dict(source=source, rows=n_rows, obs_dim=data.obs_dim, act_dim=data.act_dim),
                   final_evaluation=final_eval,
                   best_normalized_score=max((e["normalized_score"] for e in evals), default=None),
                   train_seconds=round(train_seconds, 1), resumed_from=start if resume and start else None,
                   teacher=teacher_path.name, out_dir=str(out), config=cfg.to_dict(), batch_size=cfg.batch_size)
    run.write_json("summary.json", summary, indent=2, default=_json_default)
    return summary


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def main(argv=None) -> int:
    """``python -m obd_fast.teacher.train``: the ``obd-fast train-teacher`` command."""
    from ..cli import main as cli_main

    return cli_main(argv, command="train-teacher", prog="python -m obd_fast.teacher.train")


if __name__ == "__main__":
    raise SystemExit(main())
