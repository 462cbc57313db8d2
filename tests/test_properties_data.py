"""Property tests (hypothesis) of the data loaders.

Random valid D4RL-style dicts written to .npz / .hdf5 load back field by field (checked against
an independent implementation of the README's rules); damaged or malformed sources raise a
``DatasetError`` subclass whose message names the file or the field, never another exception:
truncated files, overwritten bytes, missing keys, strings/objects/complex/records, length
mismatches, 3-D arrays, NaN/Inf rows, empty arrays, directories, missing paths, garbage Minari
directories. HDF5 files are parsed in a child process by the loader (libhdf5 can crash or hang on
damaged files), so overwritten HDF5 bytes are safe to try here.
"""
import json
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import obd_fast.data.loaders as loaders
from obd_fast.data import DatasetError, DatasetKeyError, DatasetNotFoundError, load_dataset

h5py = pytest.importorskip("h5py")

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
FORMATS = ("npz", "hdf5")
# an HDF5 load starts a reader process (about 0.3 s): fewer examples there
EXAMPLES = {"npz": 40, "hdf5": 6}


def props(fmt, scale=1.0):
    return settings(max_examples=max(1, int(EXAMPLES[fmt] * scale)), deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def short_hdf5_timeout(monkeypatch):
    monkeypatch.setattr(loaders, "HDF5_TIMEOUT_S", 15.0, raising=False)  # a damaged file can make libhdf5 loop forever


# -- valid datasets ----------------------------------------------------------------------------

@st.composite
def d4rl_fields(draw, min_rows=1):
    n = draw(st.integers(min_rows, 30))
    obs_dim, act_dim = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    obs_t, act_t, rew_t = (draw(st.sampled_from([np.float32, np.float64])) for _ in range(3))
    flag_t = draw(st.sampled_from([np.bool_, np.float32, np.uint8, np.int64]))
    terminals = rng.random(n) < draw(st.sampled_from([0.0, 0.1, 0.3]))
    timeouts = rng.random(n) < draw(st.sampled_from([0.0, 0.1, 0.3]))
    rewards = (rng.normal(size=n) * 3).astype(rew_t)
    fields = {
        "observations": (rng.normal(size=(n, obs_dim)) * 10).astype(obs_t),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(act_t),
        "rewards": rewards[:, None] if draw(st.booleans()) else rewards,  # D4RL files sometimes store (n, 1)
        "terminals": terminals.astype(flag_t),
        "timeouts": timeouts.astype(flag_t),
    }
    if draw(st.booleans()):
        fields["next_observations"] = (rng.normal(size=(n, obs_dim)) * 10).astype(obs_t)
    env = draw(st.none() | st.text(string.ascii_letters + "-", min_size=1, max_size=12).map(lambda s: s + "-v5"))
    return fields, env


def write(fmt, path, fields, env=None):
    path = path.with_suffix("." + fmt)
    if fmt == "npz":
        extra = {} if env is None else {"env_id": np.array(env)}
        np.savez(path, **fields, **extra)
    else:
        with h5py.File(path, "w") as f:
            for k, v in fields.items():
                f.create_dataset(k, data=v)
            if env is not None:
                f.attrs["env_id"] = env
    return path


def expected_table(fields):
    """The README's rules, written out row by row (independent of the loader's vectorized code)."""
    obs = np.asarray(fields["observations"])
    n = len(obs)
    term = np.asarray(fields["terminals"]).reshape(n).astype(bool)
    tout = np.asarray(fields["timeouts"]).reshape(n).astype(bool)
    ends = term | tout
    ends[-1] = True
    episode, ep = [], 0
    for i in range(n):
        episode.append(ep)
        ep += int(ends[i])
    has_next = "next_observations" in fields
    keep, next_obs, timeouts = [], [], tout.copy()
    for i in range(n):
        if has_next:
            keep.append(i)
            next_obs.append(fields["next_observations"][i])
            timeouts[i] = tout[i] or (ends[i] and not term[i])
        elif ends[i] and not term[i]:  # no successor: dropped, the row before (same episode) is cut
            if i > 0 and not ends[i - 1]:
                timeouts[i - 1] = True
        else:
            keep.append(i)
            next_obs.append(obs[i] if term[i] else obs[i + 1])
    kept_eps = [episode[i] for i in keep]
    renumber = {e: j for j, e in enumerate(sorted(set(kept_eps)))}
    return dict(keep=keep, observations=obs[keep], actions=np.asarray(fields["actions"])[keep],
                rewards=np.asarray(fields["rewards"]).reshape(n)[keep].astype(np.float64),
                next_observations=np.array(next_obs).reshape(len(keep), obs.shape[1]).astype(obs.dtype),
                terminals=term[keep], timeouts=timeouts[keep],
                episode_ids=np.array([renumber[e] for e in kept_eps], dtype=np.int64),
                dropped=n - len(keep))


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_field_by_field(fmt, tmp_path):
    @props(fmt, 1.5)
    @given(case=d4rl_fields())
    def check(case):
        fields, env = case
        path = write(fmt, tmp_path / "d", fields, env)
        want = expected_table(fields)
        if not want["keep"]:
            with pytest.raises(DatasetError, match=f"{path.name}: no transition has a successor"):
                load_dataset(path)
            return
        data = load_dataset(path)
        for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                    "episode_ids"):
            got = getattr(data, key)
            assert got.dtype == want[key].dtype, key
            np.testing.assert_array_equal(got, want[key], err_msg=key)
        assert data.env_id == env and data.metadata["format"] == fmt
        assert data.metadata["dropped_without_successor"] == want["dropped"]
        obs64 = want["observations"].astype(np.float64)
        np.testing.assert_allclose(data.normalizer.mean, obs64.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(data.normalizer.std, obs64.std(0) + 1e-3, rtol=1e-12)
    check()


# -- damaged files -----------------------------------------------------------------------------

def assert_valid(data):
    """A table that loaded from a damaged file must still be self-consistent and finite."""
    n = len(data)
    assert n > 0
    for key in ("observations", "actions", "next_observations", "terminals", "timeouts", "episode_ids"):
        assert len(getattr(data, key)) == n
    assert data.observations.shape == data.next_observations.shape
    for arr in (data.observations, data.actions, data.rewards, data.normalizer.mean, data.normalizer.std):
        assert np.isfinite(arr).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_raise(fmt, tmp_path):
    @props(fmt)
    @given(case=d4rl_fields(), cut=st.floats(0.0, 1.0, exclude_max=True))
    def check(case, cut):
        path = write(fmt, tmp_path / "good", *case)
        raw = path.read_bytes()
        bad = path.with_name("cut." + fmt)
        bad.write_bytes(raw[:int(cut * len(raw))])
        with pytest.raises(DatasetError) as info:
            load_dataset(bad)
        assert bad.name in str(info.value)
    check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwritten_bytes_raise_or_load_consistently(fmt, tmp_path):
    @props(fmt, 1.5)
    @given(case=d4rl_fields(min_rows=3), hits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                 st.integers(0, 255)), min_size=1, max_size=24))
    def check(case, hits):
        path = write(fmt, tmp_path / "good", *case)
        raw = bytearray(path.read_bytes())
        for where, byte in hits:
            raw[int(where * len(raw))] = byte
        bad = path.with_name("hit." + fmt)
        bad.write_bytes(bytes(raw))
        try:
            data = load_dataset(bad)
        except DatasetError as exc:
            assert bad.name in str(exc)
        else:
            assert_valid(data)  # HDF5 has no checksums: a hit inside the numbers can go unnoticed
    check()


# -- malformed contents ------------------------------------------------------------------------

def bad_values(fmt, kind, arr, draw):
    """A malformed replacement for field ``arr`` and a regex its error must match."""
    n = len(arr)
    if kind == "strings":
        text = np.array([f"{i}" for i in range(n)])
        return (text.astype("S") if fmt == "hdf5" or draw(st.booleans()) else text), "real numbers"
    if kind == "objects":
        if fmt == "npz":
            return np.array([object()] * n, dtype=object), "pickled Python objects"
        return "vlen", "variable-length"
    if kind == "complex":
        return arr.astype(np.complex128) + 1j, "real numbers"
    if kind == "records":
        rec = np.zeros(n, dtype=[("a", "f8"), ("b", "i4")])
        return rec, "real numbers"
    if kind == "length":
        cut = draw(st.integers(1, n))
        return arr[:n - cut] if draw(st.booleans()) else np.concatenate([arr, arr[:cut]]), "different lengths"
    if kind == "3d":
        return arr.reshape(arr.shape + (1,) * (3 - arr.ndim)), r"must be [12]-D"
    if kind == "scalar":
        return np.asarray(arr.flat[0]), "scalar"
    raise AssertionError(kind)


FIELD_KINDS = ["strings", "objects", "complex", "records", "length", "3d", "scalar"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_malformed_fields_are_named(fmt, tmp_path):
    @props(fmt, 2)
    @given(data=st.data(), case=d4rl_fields(min_rows=2), kind=st.sampled_from(FIELD_KINDS))
    def check(data, case, kind):
        fields, env = case
        key = data.draw(st.sampled_from(sorted(fields)))
        value, pattern = bad_values(fmt, kind, np.asarray(fields[key]), data.draw)
        path = tmp_path / "bad"
        if fmt == "hdf5" and isinstance(value, str):  # variable-length rows
            fields = dict(fields)
            del fields[key]
            path = write(fmt, path, fields, env)
            with h5py.File(path, "a") as f:
                ds = f.create_dataset(key, (len(case[0][key]),), dtype=h5py.vlen_dtype(np.float64))
                for i in range(len(ds)):
                    ds[i] = np.arange(i % 3, dtype=np.float64)
        else:
            path = write(fmt, path, dict(fields, **{key: value}), env)
        with pytest.raises(DatasetError, match=pattern) as info:
            load_dataset(path)
        assert path.name in str(info.value) and key in str(info.value), str(info.value)
    check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_keys_are_listed(fmt, tmp_path):
    @props(fmt, 0.7)
    @given(case=d4rl_fields(), drop=st.sets(st.sampled_from(REQUIRED), min_size=1))
    def check(case, drop):
        fields, env = case
        path = write(fmt, tmp_path / "d", {k: v for k, v in fields.items() if k not in drop}, env)
        with pytest.raises(DatasetKeyError) as info:
            load_dataset(path)
        msg = str(info.value)
        assert path.name in msg and all(repr(k) in msg for k in drop), msg
    check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_finite_rows_are_reported(fmt, tmp_path):
    @props(fmt, 0.7)
    @given(data=st.data(), case=d4rl_fields(min_rows=2))
    def check(data, case):
        fields, env = case
        floats = [k for k, v in fields.items() if np.asarray(v).dtype.kind == "f"]
        key = data.draw(st.sampled_from(floats))
        arr = np.array(fields[key], copy=True)
        rows = sorted(data.draw(st.sets(st.integers(0, len(arr) - 1), min_size=1, max_size=len(arr))))
        for r in rows:
            flat = arr[r].reshape(-1) if arr.ndim > 1 else arr[r:r + 1]
            flat[data.draw(st.integers(0, flat.size - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        path = write(fmt, tmp_path / "d", dict(fields, **{key: arr}), env)
        with pytest.raises(DatasetError, match=rf"{len(rows)} rows have non-finite values \(NaN/Inf\) in .*{key}"
                                               rf".*first rows: \[{', '.join(map(str, rows[:5]))}\]"):
            load_dataset(path)
    check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_and_absurd_datasets(fmt, tmp_path):
    rng = np.random.default_rng(0)
    base = {"observations": rng.normal(size=(6, 3)), "actions": rng.normal(size=(6, 2)), "rewards": np.ones(6),
            "terminals": np.zeros(6, bool), "timeouts": np.zeros(6, bool)}
    empty = write(fmt, tmp_path / "empty", {k: v[:0] for k, v in base.items()})
    with pytest.raises(DatasetError, match=f"{empty.name}: the dataset has no transitions"):
        load_dataset(empty)
    huge = dict(base, observations=base["observations"] * 1e300, next_observations=base["observations"])
    path = write(fmt, tmp_path / "huge", huge)
    with pytest.raises(DatasetError, match=f"{path.name}: the observations' mean/std overflow"):
        load_dataset(path)
    flags = dict(base, terminals=np.full(6, 0.5))
    path = write(fmt, tmp_path / "flags", flags)
    with pytest.raises(DatasetError, match="'terminals' must be 0/1 flags"):
        load_dataset(path)


# -- paths and directories ---------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".hdf5", ".h5", ".npz"])
def test_directories_and_missing_paths(tmp_path, suffix):
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"folder{suffix} is a directory"):
        load_dataset(folder)
    with pytest.raises(DatasetNotFoundError, match=f"absent{suffix}"):
        load_dataset(tmp_path / f"absent{suffix}")


def test_other_files_with_a_data_suffix(tmp_path):
    for name, content in (("zero.npz", b""), ("text.npz", b"hello"), ("zero.hdf5", b""), ("text.h5", b"hello")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DatasetError, match=name):
            load_dataset(tmp_path / name)
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    with pytest.raises(DatasetError, match="array.npz: holds a single .npy array"):
        load_dataset(tmp_path / "array.npz")


def test_garbage_minari_directories(tmp_path):
    pytest.importorskip("minari")

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(meta=st.one_of(st.binary(max_size=64),
                          st.fixed_dictionaries({"dataset_id": st.text(max_size=12), "total_episodes": st.integers(),
                                                 "total_steps": st.integers(),
                                                 "data_format": st.sampled_from(["hdf5", "arrow", "x"])}).map(
                              lambda d: json.dumps(d).encode())),
           main=st.binary(max_size=256), with_data_dir=st.booleans())
    def check(meta, main, with_data_dir):
        root = tmp_path / "minari-like"
        data_dir = root / "data" if with_data_dir else root
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "metadata.json").write_bytes(meta)
        (data_dir / "main_data.hdf5").write_bytes(main)
        with pytest.raises(DatasetError) as info:
            load_dataset(root)
        assert "minari-like" in str(info.value)
    check()
    with pytest.raises(DatasetNotFoundError, match="unknown dataset 'nobody/nothing-v0'"):
        load_dataset("nobody/nothing-v0")
