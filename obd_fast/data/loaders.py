"""Loaders: one function per source kind, and :func:`load_dataset` to pick one.

Sources: a Minari dataset id or directory (via ``minari``, imported lazily so ``import obd_fast``
stays light), a D4RL-style ``.hdf5`` file, an ``.npz`` with the same keys, or ``bundled:NAME``.

D4RL-style files without ``next_observations``: within an episode s'_i = s_{i+1}. The last row of
an episode has no successor in the file. If it is terminal, it is kept with s' = s_i as a
placeholder (a terminal transition never bootstraps, so s' is unused). Otherwise (timeout, or the
file ends mid-episode) the row is dropped, the row before it gets ``timeouts = True``, and the
number dropped is recorded in ``metadata["dropped_without_successor"]`` (D4RL's own
``qlearning_dataset`` drops those timeout rows too).

The compact form (the bundled walker2d and halfcheetah files): no ``next_observations`` but
``final_next_observations``, one row per episode holding s' of its last row, in file order.
Within an episode s' is the next row, so the table is the same as with ``next_observations``, at
about 60% of the size.
"""
from __future__ import annotations

import json
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


_ROW_VECTORS = ("rewards", "terminals", "timeouts")
_FLAGS = ("terminals", "timeouts")


def _check_dtypes(arrays: dict, source) -> None:
    """Numbers only: text, objects, compound records or complex values are not data we can train on."""
    for name, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise DatasetError(f"{source}: {name!r} must hold real numbers (or booleans), got dtype {arr.dtype}")
    for name in _FLAGS:
        arr = arrays.get(name)
        if arr is not None and arr.dtype.kind != "b" and arr.size:
            finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
            odd = finite[(finite != 0) & (finite != 1)]
            if odd.size:
                raise DatasetError(f"{source}: {name!r} must be 0/1 flags, found {odd.size} other values "
                                   f"(e.g. {odd.flat[0].item()!r})")


def _check_shapes(arrays: dict, source) -> None:
    for name, arr in arrays.items():
        if arr.ndim == 0:
            raise DatasetError(f"{source}: {name!r} must be an array with one entry per row, got a scalar")
    n = len(arrays["rewards"])
    for name, arr in arrays.items():
        if len(arr) != n:
            lengths = {k: len(v) for k, v in arrays.items()}
            raise DatasetError(f"{source}: fields have different lengths {lengths} ({name!r} differs from 'rewards')")
    for name in ("observations", "actions", "next_observations"):
        if name in arrays and arrays[name].ndim != 2:
            raise DatasetError(f"{source}: {name!r} must be 2-D (rows, dim), got shape {arrays[name].shape}")
        if name in arrays and arrays[name].shape[1] == 0:
            raise DatasetError(f"{source}: {name!r} has no columns (shape {arrays[name].shape})")
    for name in _ROW_VECTORS:
        if name in arrays and arrays[name].ndim != 1:
            raise DatasetError(f"{source}: {name!r} must be 1-D (one value per row), got shape {arrays[name].shape}")
    if "next_observations" in arrays and arrays["next_observations"].shape[1] != arrays["observations"].shape[1]:
        raise DatasetError(f"{source}: 'next_observations' has {arrays['next_observations'].shape[1]} columns but "
                           f"'observations' has {arrays['observations'].shape[1]}")
    if n == 0:
        raise DatasetError(f"{source}: the dataset has no transitions")


def _as_row_vector(arr) -> np.ndarray:
    arr = np.asarray(arr)
    return arr.reshape(len(arr)) if arr.ndim == 2 and arr.shape[1] == 1 else arr


def _describe(exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _read_error(source, what: str, exc: BaseException) -> DatasetError:
    """A file that cannot be parsed (truncated, overwritten, not that format) as a DatasetError."""
    return DatasetError(f"{source}: not a readable {what} file ({_describe(exc)})")


def _check_is_file(path: Path, kind: str) -> None:
    if path.is_dir():
        raise DatasetNotFoundError(f"{path.name} is a directory, not an {kind} file")
    if not path.is_file():
        raise DatasetNotFoundError(f"no such {kind} file: {path.name}")


def _text_attr(value, name: str, source) -> str | None:
    """A string stored as an attribute or 0-d array (bytes decoded); None when absent."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "USO":
        value = value.reshape(()).item()
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise DatasetError(f"{source}: {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def _checked_table(source, columns: dict) -> OfflineData:
    """The table, refusing observations whose statistics overflow (finite but absurdly large values,
    typically a damaged file): they would normalize every state to 0 without a word."""
    with np.errstate(over="ignore", invalid="ignore"):
        data = OfflineData(**columns)
    norm = data.normalizer
    if norm is not None and not (np.isfinite(norm.mean).all() and np.isfinite(norm.std).all()):
        big = float(np.abs(data.observations).max())
        raise DatasetError(f"{source}: the observations' mean/std overflow (values up to {big:.3g}); "
                           "the data is damaged or not in physical units")
    return data


# ---------------------------------------------------------------------------------- flat files
def table_from_flat(fields: dict, source: str, env_id: str | None = None, metadata: dict | None = None) -> OfflineData:
    """D4RL-style key -> array mapping to an :class:`OfflineData` (see the module doc for s')."""
    missing = [k for k in REQUIRED_KEYS if k not in fields]
    if missing:
        raise DatasetKeyError(f"{source}: missing required keys {missing}; found {sorted(fields)}")
    arrays = {k: np.asarray(fields[k]) for k in REQUIRED_KEYS}
    if "next_observations" in fields:
        arrays["next_observations"] = np.asarray(fields["next_observations"])
    elif "final_next_observations" in fields:
        arrays["next_observations"] = _expand_final_next(fields, arrays, source)
    for k in _ROW_VECTORS:
        arrays[k] = _as_row_vector(arrays[k])
    _check_dtypes(arrays, source)
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

    return _checked_table(source, dict(
        observations=obs[keep], actions=arrays["actions"][keep], rewards=arrays["rewards"][keep].astype(np.float64),
        next_observations=next_obs[keep], terminals=terminals[keep], timeouts=timeouts[keep],
        episode_ids=np.unique(episode_ids[keep], return_inverse=True)[1].astype(np.int64),
        env_id=env_id, metadata=meta))


def compact_next_observations(fields: dict) -> dict:
    """``fields`` with ``next_observations`` replaced by ``final_next_observations`` (the module
    doc's compact form); :func:`table_from_flat` reads both to the same table."""
    obs, next_obs = np.asarray(fields["observations"]), np.asarray(fields["next_observations"])
    ends = _episode_ends(fields)
    within = ~ends[:-1]
    if not np.array_equal(next_obs[:-1][within], obs[1:][within]):
        raise DatasetError("compact_next_observations: within an episode s' is not the next row's s")
    out = {k: v for k, v in fields.items() if k != "next_observations"}
    out["final_next_observations"] = next_obs[ends]
    return out


def _episode_ends(fields: dict) -> np.ndarray:
    ends = (_as_row_vector(np.asarray(fields["terminals"])) != 0) | (_as_row_vector(np.asarray(fields["timeouts"])) != 0)
    ends[-1] = True  # the file's last row ends its episode whatever its flags say
    return ends


def _expand_final_next(fields: dict, arrays: dict, source) -> np.ndarray:
    obs, final = arrays["observations"], np.asarray(fields["final_next_observations"])
    if obs.ndim != 2 or len(obs) == 0 or len(arrays["terminals"]) != len(obs) or len(arrays["timeouts"]) != len(obs):
        return final  # _check_shapes reports what is wrong with the fields
    ends = _episode_ends(arrays)
    if final.ndim != 2 or final.shape != (int(ends.sum()), obs.shape[1]):
        raise DatasetError(f"{source}: 'final_next_observations' must have one row per episode "
                           f"({int(ends.sum())} x {obs.shape[1]}), got shape {final.shape}")
    next_obs = np.empty(obs.shape, dtype=np.result_type(obs, final))
    next_obs[:-1] = obs[1:]
    next_obs[ends] = final
    return next_obs


# libhdf5 is not hardened against damaged files: a few overwritten bytes can make it crash the
# interpreter (SIGSEGV) or loop forever. So the file is parsed in a child process that only imports
# numpy and h5py and hands the arrays back as an uncompressed .npz (numbers only, no pickles); a
# crash or a hang of the child becomes a DatasetError. Cost: about a third of a second per file.
HDF5_TIMEOUT_S = 120.0  # plus one second per 50 MB of file
_HDF5_READER = r"""
import json, sys
import numpy as np
import h5py

def read(src, wanted):
    arrays, report = {}, {"found": [], "not_dataset": {}, "object_fields": {}, "skipped_attrs": []}
    with h5py.File(src, "r") as f:
        report["found"] = sorted(f.keys())
        for k in wanted:
            if k not in f:
                continue
            node = f[k]
            if not isinstance(node, h5py.Dataset):
                report["not_dataset"][k] = type(node).__name__.lower()
                continue
            value = np.asarray(node[()])
            if value.dtype.hasobject:  # variable-length data: only np.savez with pickles could carry it
                report["object_fields"][k] = str(value.dtype)
                continue
            arrays["f/" + k] = value
        for k in f.attrs:
            v = f.attrs[k]
            if isinstance(v, bytes):
                v = v.decode("utf-8", errors="replace")
            v = np.asarray(v)
            if v.dtype.kind in "biufcSU" and not v.dtype.hasobject:
                arrays["a/" + k] = v
            else:
                report["skipped_attrs"].append(k)
    return arrays, report

if __name__ == "__main__":
    src, dst, wanted = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    try:
        arrays, report = read(src, wanted)
        np.savez(dst, **arrays)
    except Exception as exc:
        report = {"error": type(exc).__name__, "message": str(exc)}
    sys.stdout.write(json.dumps(report))
"""


def _read_hdf5_isolated(path: Path, wanted) -> tuple[dict, dict]:
    """(arrays keyed 'f/NAME' and 'a/NAME', report) from the reader child; DatasetError when it fails."""
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="obd_fast_hdf5_") as tmp:
        out = Path(tmp) / "arrays.npz"
        timeout = HDF5_TIMEOUT_S + path.stat().st_size / 50e6
        cmd = [sys.executable, "-c", _HDF5_READER, str(path), str(out), ",".join(wanted)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=dict(os.environ, PYTHONFAULTHANDLER=""))
        except subprocess.TimeoutExpired:
            raise DatasetError(f"{path.name}: reading it as HDF5 did not finish within {timeout:.0f} s; the file "
                               "is probably damaged (libhdf5 can loop on corrupted metadata)") from None
        except OSError as exc:  # no way to start a child here: read in this process
            ns = {"__name__": "obd_fast_hdf5_reader"}
            exec(compile(_HDF5_READER, "<obd_fast hdf5 reader>", "exec"), ns)
            try:
                return ns["read"](str(path), list(wanted))
            except Exception as inner:
                raise _read_error(path.name, "HDF5", inner) from exc
        if proc.returncode != 0:
            try:  # a negative status is the signal that killed the child (SIGSEGV, SIGABRT, ...)
                what = f"signal {signal.Signals(-proc.returncode).name}"
            except ValueError:
                what = f"exit status {proc.returncode}"
            last = proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else ""
            raise DatasetError(f"{path.name}: the HDF5 library failed reading it ({what}"
                               f"{': ' + last if last else ''}); the file is damaged or not HDF5")
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            raise DatasetError(f"{path.name}: the HDF5 reader gave no result ({proc.stdout[-200:]!r})") from None
        if "error" in report:
            message = report["message"].strip().splitlines()[0][:200] if report["message"].strip() else ""
            raise DatasetError(f"{path.name}: not a readable HDF5 file ({report['error']}: {message})")
        try:
            with np.load(out, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # not expected: the child writes plain arrays only
            raise _read_error(path.name, "HDF5", exc) from exc
    return arrays, report


def load_hdf5(path, env_id: str | None = None) -> OfflineData:
    """A D4RL-style HDF5 file (top-level datasets; extra groups such as ``infos/`` are ignored)."""
    path = Path(path)
    _check_is_file(path, "HDF5")
    arrays, report = _read_hdf5_isolated(path, REQUIRED_KEYS + ("next_observations", "final_next_observations"))
    for k, kind in report["not_dataset"].items():
        raise DatasetError(f"{path.name}: {k!r} is an HDF5 {kind}, not a dataset")
    for k, dtype in report["object_fields"].items():
        raise DatasetError(f"{path.name}: {k!r} must hold real numbers (or booleans), got variable-length "
                           f"dtype {dtype}")
    fields = {k[2:]: v for k, v in arrays.items() if k.startswith("f/")}
    attrs = {k[2:]: (v.item() if v.ndim == 0 else v) for k, v in arrays.items() if k.startswith("a/")}
    missing = [k for k in REQUIRED_KEYS if k not in fields]
    if missing:
        raise DatasetKeyError(f"{path.name}: missing required keys {missing}; found {report['found']}")
    stored = _text_attr(attrs.get("env_id"), "env_id", path.name) or _text_attr(attrs.get("env_name"), "env_name",
                                                                                 path.name)
    return table_from_flat(fields, path.name, env_id=env_id or stored, metadata={"format": "hdf5", **attrs})


def load_npz(path, env_id: str | None = None) -> OfflineData:
    """An ``.npz`` with the D4RL keys (optionally ``env_id`` as a 0-d string array)."""
    path = Path(path)
    _check_is_file(path, "npz")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path.name}: holds a single .npy array, not an .npz archive of named fields")
        with loaded as f:
            fields = {}
            for key in f.files:
                try:
                    fields[key] = f[key]
                except ValueError as exc:
                    if "pickle" in str(exc) or "Object arrays" in str(exc):
                        raise DatasetError(f"{path.name}: {key!r} holds pickled Python objects (an object array); "
                                           "it is not loaded, since unpickling can run code: store numbers") from exc
                    raise
    except DatasetError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, EOFError, zlib.error, ValueError (pickled objects), ...
        if isinstance(exc, ValueError) and "pickle" in str(exc):  # not a zip archive: np.load tried a pickle
            raise DatasetError(f"{path.name}: not an .npz archive (it would have to be unpickled, which can "
                               "run code; refused)") from exc
        raise _read_error(path.name, "npz", exc) from exc
    stored_env = _text_attr(fields.pop("env_id", None), "env_id", path.name)
    return table_from_flat(fields, path.name, env_id=env_id or stored_env, metadata={"format": "npz"})


# ---------------------------------------------------------------------------------- Minari
def _minari_env_id(dataset) -> str | None:
    spec = dataset.spec.env_spec if dataset.spec is not None else None
    return getattr(spec, "id", None)


def table_from_minari(dataset, source: str) -> OfflineData:
    """Episodes of a ``minari.MinariDataset`` to one table: s' = the episode's next observation."""
    try:
        return _table_from_minari(dataset, source)
    except DatasetError:
        raise
    except Exception as exc:  # damaged episode files: h5py/pyarrow errors, minari's own assertions
        raise DatasetError(f"{source}: the Minari dataset's episodes could not be read ({_describe(exc)})") from exc


def _table_from_minari(dataset, source: str) -> OfflineData:
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
    return _checked_table(source, dict(**arrays, episode_ids=np.concatenate(episode_ids),
                                       env_id=_minari_env_id(dataset), metadata=meta))


def load_minari(id_or_path) -> OfflineData:
    """A Minari dataset by id (under ``MINARI_DATASETS_PATH``) or by its directory."""
    import minari  # lazy: minari pulls in gymnasium

    path = Path(os.fspath(id_or_path))
    if path.is_dir():
        data_dir = path / "data" if (path / "data").is_dir() else path
        try:
            dataset = minari.MinariDataset(data_dir)
        except Exception as exc:  # ValueError('No data found'), bad JSON, minari's assertions on metadata, ...
            raise DatasetNotFoundError(f"{path.name}: not a readable Minari dataset directory "
                                       f"({_describe(exc)})") from exc
        return table_from_minari(dataset, path.name)
    try:
        dataset = minari.load_dataset(str(id_or_path))
    except FileNotFoundError:
        try:
            local = sorted(minari.list_local_datasets())
        except Exception:  # a damaged dataset elsewhere under the Minari root must not hide this message
            local = []
        raise DatasetNotFoundError(
            f"unknown dataset {str(id_or_path)!r}: local Minari datasets are {local or 'none'}; bundled: "
            f"{available_bundled() or 'none'}; or pass an .hdf5/.npz path") from None
    except Exception as exc:  # an id minari cannot parse, or a damaged local copy
        raise DatasetError(f"Minari dataset {str(id_or_path)!r} could not be opened ({_describe(exc)})") from exc
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
