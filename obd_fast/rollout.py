"""Policy rollouts in Gymnasium MuJoCo tasks, several episodes in lockstep.

Every episode runs in its own env instance seeded ``seed + i``; all unfinished episodes are
stepped together so the policy sees one (k, obs_dim) batch per time step (one network call
instead of k). Observations are normalized with the policy's normalizer before the call.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .data.normalize import StateNormalizer


def make_env(env_id: str):
    try:
        import gymnasium as gym
    except ImportError as exc:  # pragma: no cover - gymnasium is in the rl/test extras
        raise RuntimeError("rollouts need gymnasium with MuJoCo: pip install 'obd-fast[rl]'") from exc
    try:
        return gym.make(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"unknown or unusable environment {env_id!r}: {exc}") from None


@torch.no_grad()
def rollout_returns(policy: Callable[[torch.Tensor], torch.Tensor], env_id: str, episodes: int = 10, seed: int = 0,
                    normalizer: Optional[StateNormalizer] = None, dtype=torch.float32, device="cpu",
                    max_episode_steps: Optional[int] = None) -> np.ndarray:
    """Undiscounted return of ``episodes`` episodes of ``policy`` (normalized obs batch -> actions)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    envs = [make_env(env_id) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    low, high = envs[0].action_space.low, envs[0].action_space.high
    returns = np.zeros(episodes)
    active = np.ones(episodes, dtype=bool)
    steps = 0
    while active.any():
        idx = np.flatnonzero(active)
        x = torch.as_tensor(obs[idx], dtype=dtype, device=device)
        if normalizer is not None:
            x = normalizer.normalize(x)
        actions = policy(x).detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(actions).all():
            raise FloatingPointError("the policy produced non-finite actions")
        for j, i in enumerate(idx):
            o, r, term, trunc, _ = envs[i].step(np.clip(actions[j], low, high))
            obs[i] = o
            returns[i] += r
            if term or trunc:
                active[i] = False
        steps += 1
        if max_episode_steps is not None and steps >= max_episode_steps:
            break
    for env in envs:
        env.close()
    return returns
