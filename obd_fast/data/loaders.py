"""Loaders: one function per source kind, and :func:`load_dataset` to pick one.

Sources: a Minari dataset id or directory (via ``minari``, imported lazily so ``import obd_fast``
stays light), a D4RL-style ``.hdf5`` file, an ``.npz`` with the same keys, or ``bundled:NAME``.

D4RL-style files without ``next_observations``: within an episode s'_i = s_{i+1}. The last row of
an episode has no successor in the file. If it is terminal, it is kept with s' = s_i as a
placeholder (a terminal transition never bootstraps, so s' is unused). Otherwise (timeout, or the
file ends mid-episode) the row is dropped, the row before it gets ``timeouts = True``, and the
number dropped is recorded in ``metadata["dropped_without_successor"]`` (D4RL's own
``qlearning_dataset`` drops those timeout rows too).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DatasetError, DatasetKeyError, DatasetNotFoundError
from .table import OfflineData, episode_ids_from_ends, expected_dims

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
BUNDLED_ROOT = Path(__file__).resolve().parent / "bundled"
_HDF5_SUFFIXES = (".hdf5", ".h5")


# ---------------------------------------------------------------------------------- checks
def _check_finite(arrays: dict, source) -> None:
    """Refuse NaN/Inf: say how many rows and which come first, never train on them silently."""
    bad = np.zeros(len(arrays["rewards"]), dtype=bool)
    names = []
    for name, arr in arrays.items():
        if arr.dtype.kind != "f":
            continue
        rows = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if rows.any():
            names.append(name)
            bad |= rows
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise DatasetError(f"{source}: {int(bad.sum())} rows have non-finite values (NaN/Inf) in "
                           f"{', '.join(names)}; first rows: {first}")


def _check_shapes(arrays: dict, source) -> None:
    n = len(arrays["rewards"])
    for name, arr in arrays.items():
        if len(arr) != n:
            lengths = {k: len(v) for k, v in arrays.items()}
            raise DatasetError(f"{source}: fields have different lengths {lengths} ({name!r} differs from 'rewards')")
    for name in ("observations", "actions", "next_observations"):
        if name in arrays and arrays[name].ndim != 2:
            raise DatasetError(f"{source}: {name!r} must be 2-D (rows, dim), got shape {arrays[name].shape}")
    if n == 0:
        raise DatasetError(f"{source}: the dataset has no transitions")


def _as_row_vector(arr) -> np.ndarray:
    arr = np.asarray(arr)
    return arr.reshape(len(arr)) if arr.ndim == 2 and arr.shape[1] == 1 else arr


# ---------------------------------------------------------------------------------- flat files
def table_from_flat(fields: dict, source: str, env_id: str | None = None, metadata: dict | None = None) -> OfflineData:
    """D4RL-style key -> array mapping to an :class:`OfflineData` (see the module doc for s')."""
    missing = [k for k in REQUIRED_KEYS if k not in fields]
    if missing:
        raise DatasetKeyError(f"{source}: missing required keys {missing}; found {sorted(fields)}")
    arrays = {k: np.asarray(fields[k]) for k in REQUIRED_KEYS}
    if "next_observations" in fields:
        arrays["next_observations"] = np.asarray(fields["next_observations"])
    for k in ("rewards", "terminals", "timeouts"):
        arrays[k] = _as_row_vector(arrays[k])
    _check_shapes(arrays, source)
    _check_finite(arrays, source)

    obs, terminals, timeouts = arrays["observations"], arrays["terminals"].astype(bool), arrays["timeouts"].astype(bool)
    ends = terminals | timeouts
    ends[-1] = True  # the file's last row ends its episode whatever its flags say
    episode_ids = episode_ids_from_ends(ends)
    meta = dict(metadata or {}, source=str(source), dropped_without_successor=0)

    if "next_observations" in arrays:
        next_obs, keep = arrays["next_observations"], np.ones(len(obs), dtype=bool)
        timeouts = timeouts | (ends & ~terminals)
    else:
        next_obs = np.empty_like(obs)
        next_obs[:-1] = obs[1:]
        next_obs[terminals] = obs[terminals]  # placeholder: terminal rows never bootstrap
        keep = ~(ends & ~terminals)
        before_dropped = np.flatnonzero(~keep) - 1
        # the previous row now ends its (truncated) episode, if it belongs to the same episode
        before_dropped = before_dropped[(before_dropped >= 0) & (episode_ids[np.maximum(before_dropped, 0)]
                                                                  == episode_ids[np.flatnonzero(~keep)])]
        timeouts = timeouts.copy()
        timeouts[before_dropped] = True
        meta["dropped_without_successor"] = int((~keep).sum())
        if not keep.any():
            raise DatasetError(f"{source}: no transition has a successor observation")

    return OfflineData(
        observations=obs[keep], actions=arrays["actions"][keep], rewards=arrays["rewards"][keep].astype(np.float64),
        next_observations=next_obs[keep], terminals=terminals[keep], timeouts=timeouts[keep],
        episode_ids=np.unique(episode_ids[keep], return_inverse=True)[1].astype(np.int64),
        env_id=env_id, metadata=meta)


def load_hdf5(path, env_id: str | None = None) -> OfflineData:
    """A D4RL-style HDF5 file (top-level datasets; extra groups such as ``infos/`` are ignored)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"no such HDF5 file: {path.name}")
    with h5py.File(path, "r") as f:
        fields = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    env_id = env_id or attrs.get("env_id") or attrs.get("env_name")
    return table_from_flat(fields, path.name, env_id=env_id and str(env_id), metadata={"format": "hdf5", **attrs})


def load_npz(path, env_id: str | None = None) -> OfflineData:
    """An ``.npz`` with the D4RL keys (optionally ``env_id`` as a 0-d string array)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"no such npz file: {path.name}")
    with np.load(path, allow_pickle=False) as f:
        fields = {k: f[k] for k in f.files}
    stored_env = fields.pop("env_id", None)
    env_id = env_id or (str(stored_env) if stored_env is not None else None)
    return table_from_flat(fields, path.name, env_id=env_id, metadata={"format": "npz"})


# ---------------------------------------------------------------------------------- Minari
def _minari_env_id(dataset) -> str | None:
    spec = dataset.spec.env_spec if dataset.spec is not None else None
    return getattr(spec, "id", None)


def table_from_minari(dataset, source: str) -> OfflineData:
    """Episodes of a ``minari.MinariDataset`` to one table: s' = the episode's next observation."""
    columns = {k: [] for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}
    episode_ids = []
    for idx, ep in enumerate(dataset.iterate_episodes()):
        if not isinstance(ep.observations, np.ndarray) or not isinstance(ep.actions, np.ndarray):
            raise DatasetError(f"{source}: only flat Box observations/actions are supported, "
                               f"got {type(ep.observations).__name__}")
        obs, steps = ep.observations, len(ep.rewards)
        if len(obs) != steps + 1 or len(ep.actions) != steps:
            raise DatasetError(f"{source}: episode {idx} has {len(obs)} observations, {len(ep.actions)} "
                               f"actions and {steps} rewards (expected steps+1, steps, steps)")
        terminals = np.asarray(ep.terminations, dtype=bool)
        timeouts = np.asarray(ep.truncations, dtype=bool).copy()
        if steps and not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True  # recording stopped mid-episode: treat it as cut
        columns["observations"].append(obs[:-1].reshape(steps, -1))
        columns["next_observations"].append(obs[1:].reshape(steps, -1))
        columns["actions"].append(np.asarray(ep.actions).reshape(steps, -1))
        columns["rewards"].append(np.asarray(ep.rewards, dtype=np.float64))
        columns["terminals"].append(terminals)
        columns["timeouts"].append(timeouts)
        episode_ids.append(np.full(steps, idx, dtype=np.int64))
    if not episode_ids:
        raise DatasetError(f"{source}: the dataset has no episodes")
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    _check_shapes(arrays, source)
    _check_finite(arrays, source)
    meta = dict(dataset.storage.metadata)
    meta.update(source=str(source), format="minari", dropped_without_successor=0)
    return OfflineData(**arrays, episode_ids=np.concatenate(episode_ids), env_id=_minari_env_id(dataset),
                       metadata=meta)


def load_minari(id_or_path) -> OfflineData:
    """A Minari dataset by id (under ``MINARI_DATASETS_PATH``) or by its directory."""
    import minari  # lazy: minari pulls in gymnasium

    path = Path(os.fspath(id_or_path))
    if path.is_dir():
        data_dir = path / "data" if (path / "data").is_dir() else path
        try:
            dataset = minari.MinariDataset(data_dir)
        except (ValueError, OSError, KeyError) as exc:  # minari says ValueError('No data found')
            raise DatasetNotFoundError(f"{path.name}: not a readable Minari dataset directory ({exc})") from exc
        return table_from_minari(dataset, path.name)
    try:
        dataset = minari.load_dataset(str(id_or_path))
    except FileNotFoundError:
        local = sorted(minari.list_local_datasets())
        raise DatasetNotFoundError(
            f"unknown dataset {str(id_or_path)!r}: local Minari datasets are {local or 'none'}; bundled: "
            f"{available_bundled() or 'none'}; or pass an .hdf5/.npz path") from None
    return table_from_minari(dataset, str(id_or_path))


# ---------------------------------------------------------------------------------- bundled
def available_bundled() -> list[str]:
    if not BUNDLED_ROOT.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_ROOT.iterdir() if p.is_dir() and any(p.iterdir()))


def load_bundled(name: str) -> OfflineData:
    """``bundled:NAME`` = ``obd_fast/data/bundled/NAME/`` holding a Minari dataset or one .hdf5/.npz."""
    folder = BUNDLED_ROOT / name
    if folder.is_dir():
        if (folder / "data").is_dir():
            return load_minari(folder)
        for pattern, loader in (("*.hdf5", load_hdf5), ("*.h5", load_hdf5), ("*.npz", load_npz)):
            files = sorted(folder.glob(pattern))
            if files:
                return loader(files[0])
    if name == "hopper-medium":
        raise DatasetNotFoundError(
            "the bundled dataset 'hopper-medium' is not built yet: it will be made by rolling out a "
            "medium-level SAC policy on Gymnasium Hopper-v5 and shipped in the package (obd_fast/data/bundled/"
            "hopper-medium/). Meanwhile pass a Minari id (e.g. 'mujoco/hopper/medium-v0') or an .hdf5/.npz path.")
    raise DatasetNotFoundError(f"unknown bundled dataset {name!r}; bundled datasets here: {available_bundled() or 'none'}")


# ---------------------------------------------------------------------------------- dispatch
def load_dataset(source, *, env_id: str | None = None, expected_env=None) -> OfflineData:
    """Load any supported source into an :class:`OfflineData`.

    ``source``: ``"bundled:NAME"``, a path to ``.hdf5``/``.h5``/``.npz`` or a Minari dataset
    directory, or a Minari dataset id. ``env_id`` names the env for flat files that do not store it.
    ``expected_env`` ('Hopper-v5', 'hopper', or ``(obs_dim, act_dim)``) checks the dimensions.
    Errors are :class:`DatasetError` (a ``ValueError``) subclasses; nothing is written.
    """
    text = os.fspath(source) if isinstance(source, os.PathLike) else source
    if not isinstance(text, str):
        raise DatasetError(f"source must be a str or path, got {type(source).__name__}")
    path = Path(text)
    if text.startswith("bundled:"):
        data = load_bundled(text[len("bundled:"):])
    elif path.suffix.lower() in _HDF5_SUFFIXES:
        data = load_hdf5(path, env_id=env_id)
    elif path.suffix.lower() == ".npz":
        data = load_npz(path, env_id=env_id)
    else:
        data = load_minari(source)
    if env_id and data.env_id is None:
        data.env_id = env_id
    if expected_env is not None:
        data.check_env(*expected_dims(expected_env))
    return data
