"""Reinforcement-learning building blocks shared by the dataset recipe (online SAC) and the
teachers (Cal-QL and its relatives): CORL-compatible networks, the SAC update, a replay buffer."""
from .networks import QNetwork, TanhGaussianActor, soft_update
from .replay import ReplayBuffer
from .sac import SAC, SACConfig

__all__ = ["TanhGaussianActor", "QNetwork", "soft_update", "ReplayBuffer", "SAC", "SACConfig"]
