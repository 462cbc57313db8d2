"""The in-memory transition table every loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import DatasetError
from .normalize import StateNormalizer

# observation / action sizes of the MuJoCo tasks (Gymnasium v5, D4RL v2 alike)
ENV_DIMS = {"hopper": (11, 3), "halfcheetah": (17, 6), "walker2d": (17, 6)}


def episode_ids_from_ends(ends: np.ndarray) -> np.ndarray:
    """Row i ends an episode when ``ends[i]``; the id of a row counts the episode ends before it."""
    ends = np.asarray(ends, dtype=bool)
    return np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64) if len(ends) else np.zeros(0, np.int64)


def discounted_returns_to_go(rewards: np.ndarray, episode_ids: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo ``G_t = r_t + gamma * G_{t+1}`` within each episode (0 after the episode's last row)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.empty_like(rewards)
    running = 0.0
    for i in range(len(rewards) - 1, -1, -1):  # one backward pass; O(N) and fast enough for 1M rows
        if i == len(rewards) - 1 or episode_ids[i + 1] != episode_ids[i]:
            running = 0.0
        running = rewards[i] + gamma * running
        out[i] = running
    return out


@dataclass
class OfflineData:
    """Transitions as aligned numpy arrays (row i: s_i, a_i, r_i, s'_i, terminal_i, timeout_i, episode_i).

    Observations are stored raw; ``normalizer`` holds the dataset statistics (mean, std + 1e-3) and
    travels with the table, so anything built from normalized states can carry it along.
    ``terminals`` means the environment ended the episode (no bootstrap); ``timeouts`` means the
    episode was cut (time limit or end of the recorded data) and s' is still a valid successor.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_ids: np.ndarray
    env_id: str | None = None
    metadata: dict = field(default_factory=dict)
    normalizer: StateNormalizer | None = None

    def __post_init__(self):
        if self.normalizer is None and len(self.observations):
            self.normalizer = StateNormalizer.from_observations(self.observations)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(len(np.unique(self.episode_ids)))

    def returns_to_go(self, gamma: float = 0.99) -> np.ndarray:
        """Monte-Carlo returns-to-go per row; gamma=0.99 as CORL's Cal-QL, gamma=1 undiscounted.

        Episodes cut by a timeout are summed only up to the cut (no bootstrap).
        """
        if not 0.0 <= gamma <= 1.0:
            raise DatasetError(f"gamma must be in [0, 1], got {gamma}")
        return discounted_returns_to_go(self.rewards, self.episode_ids, gamma)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, in episode order."""
        _, first = np.unique(self.episode_ids, return_index=True)
        return np.add.reduceat(self.rewards.astype(np.float64), np.sort(first)) if len(self) else np.zeros(0)

    def normalized_observations(self):
        return self.normalizer.normalize(self.observations)

    def normalized_next_observations(self):
        return self.normalizer.normalize(self.next_observations)

    def check_env(self, obs_dim: int, act_dim: int) -> None:
        """Raise DatasetError unless observations and actions have the env's sizes."""
        if (self.obs_dim, self.act_dim) != (obs_dim, act_dim):
            raise DatasetError(f"dataset {self.metadata.get('source', '')!r} has obs_dim={self.obs_dim}, "
                               f"act_dim={self.act_dim}; the env expects obs_dim={obs_dim}, act_dim={act_dim}")


def expected_dims(expected_env) -> tuple[int, int]:
    """``(obs_dim, act_dim)`` from a tuple or a task name such as 'Hopper-v5' / 'hopper-medium-v2'."""
    if isinstance(expected_env, (tuple, list)):
        return int(expected_env[0]), int(expected_env[1])
    from .scores import task_name

    task = task_name(str(expected_env))
    if task is None:
        raise DatasetError(f"unknown expected_env {expected_env!r}: use one of {sorted(ENV_DIMS)} "
                           "or an (obs_dim, act_dim) tuple")
    return ENV_DIMS[task]
