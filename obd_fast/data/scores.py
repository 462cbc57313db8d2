"""D4RL-style normalized scores on the paper's 0-100 scale.

``100 * (R - R_random) / (R_expert - R_random)``. Note: Minari's own ``get_normalized_score``
returns the 0-1 fraction; this function returns 0-100 like the paper and D4RL tables.
"""
from __future__ import annotations

import numpy as np

from .errors import DatasetError

# D4RL reference returns (random, expert) for the MuJoCo locomotion tasks
D4RL_REF_SCORES = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}


def task_name(env: str) -> str | None:
    """'Hopper-v5', 'hopper-medium-v2', 'mujoco/hopper/medium-v0', 'HalfCheetah' -> D4RL task name."""
    flat = env.lower().replace("_", "").replace("-", "").replace("/", "")
    for name in sorted(D4RL_REF_SCORES, key=len, reverse=True):
        if name in flat:
            return name
    return None


def reference_scores(env_or_data) -> tuple[float, float]:
    """(random, expert) returns: a dataset's own Minari ref scores if present, else D4RL's by env."""
    meta = getattr(env_or_data, "metadata", None)
    if meta is not None:
        if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
            return float(meta["ref_min_score"]), float(meta["ref_max_score"])
        names = [getattr(env_or_data, "env_id", None), meta.get("dataset_id")]
    else:
        names = [env_or_data]
    for name in names:
        task = task_name(name) if isinstance(name, str) else None
        if task is not None:
            return D4RL_REF_SCORES[task]
    raise DatasetError(f"no reference scores for {names[0]!r}: known tasks are {sorted(D4RL_REF_SCORES)}; "
                       "pass ref_min= and ref_max=")


def normalized_score(env_or_data, returns, ref_min: float | None = None, ref_max: float | None = None):
    """Episode return(s) -> 0-100 normalized score (float for a scalar, array otherwise)."""
    if ref_min is None or ref_max is None:
        lo, hi = reference_scores(env_or_data)
        ref_min = lo if ref_min is None else ref_min
        ref_max = hi if ref_max is None else ref_max
    if ref_max == ref_min:
        raise DatasetError(f"ref_min and ref_max are equal ({ref_min})")
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)
    return float(score) if score.ndim == 0 else score
