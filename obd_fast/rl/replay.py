"""A fixed-capacity replay buffer on numpy arrays, sampled into torch batches."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")


class ReplayBuffer:
    """Transitions (s, a, r, s', terminal) in insertion order; when full, the oldest are overwritten.

    ``state_dict``/``load_state_dict`` make it resumable; ``rng`` is a numpy Generator so sampling
    is seeded and its position is saved with the buffer.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.observations = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.next_observations = np.zeros((capacity, obs_dim), np.float32)
        self.terminals = np.zeros(capacity, np.float32)
        self.size = 0
        self.pos = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward, next_obs, terminal) -> None:
        i = self.pos
        self.observations[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_observations[i], self.terminals[i] = next_obs, float(terminal)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, device="cpu") -> Dict[str, torch.Tensor]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=batch_size)
        return {k: torch.as_tensor(getattr(self, k)[idx], device=device) for k in FIELDS}

    def state_dict(self) -> dict:
        n = self.size
        return {"capacity": self.capacity, "size": n, "pos": self.pos, "rng": self.rng.bit_generator.state,
                **{k: getattr(self, k)[:n].copy() for k in FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay state has capacity {state['capacity']}, this buffer {self.capacity}")
        n = state["size"]
        for k in FIELDS:
            getattr(self, k)[:n] = state[k]
        self.size, self.pos = n, state["pos"]
        self.rng.bit_generator.state = state["rng"]
