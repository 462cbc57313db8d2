"""Offline RL datasets: loading (Minari, D4RL-style HDF5, npz, bundled), state normalization and
D4RL normalized scores. ``import obd_fast.data`` does not import minari or gymnasium; only the
Minari loader does, when called.
"""
from .errors import DatasetError, DatasetKeyError, DatasetNotFoundError
from .loaders import available_bundled, load_bundled, load_dataset, load_hdf5, load_minari, load_npz
from .normalize import StateNormalizer
from .scores import D4RL_REF_SCORES, normalized_score
from .table import ENV_DIMS, OfflineData

__all__ = [
    "load_dataset", "load_minari", "load_hdf5", "load_npz", "load_bundled", "available_bundled",
    "OfflineData", "StateNormalizer", "normalized_score", "D4RL_REF_SCORES", "ENV_DIMS",
    "DatasetError", "DatasetKeyError", "DatasetNotFoundError",
]
