"""D4RL-style HDF5 / npz files, next-observation derivation, returns-to-go and bad input."""
import numpy as np
import pytest

from obd_fast.data import DatasetError, DatasetKeyError, DatasetNotFoundError, load_dataset

h5py = pytest.importorskip("h5py")


def flat_fields(seed=0):
    """Three episodes: rows 0-3 end by a terminal, 4-6 by a timeout, 7-9 run off the end of the data."""
    rng = np.random.default_rng(seed)
    n = 10
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[3] = True
    timeouts[6] = True
    return {"observations": rng.normal(size=(n, 11)), "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
            "rewards": np.arange(1.0, n + 1), "terminals": terminals, "timeouts": timeouts}


def write_hdf5(path, fields, **attrs):
    with h5py.File(path, "w") as f:
        for k, v in fields.items():
            f.create_dataset(k, data=v)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


@pytest.fixture(params=["hdf5", "npz"])
def write(request, tmp_path):
    def _write(fields, name="d"):
        if request.param == "hdf5":
            return write_hdf5(tmp_path / f"{name}.hdf5", fields)
        path = tmp_path / f"{name}.npz"
        np.savez(path, **fields)
        return path
    return _write


def test_with_next_observations_loads_as_is(write):
    fields = flat_fields()
    fields["next_observations"] = fields["observations"] + 1
    data = load_dataset(write(fields), env_id="hopper-medium-v2", expected_env="hopper")
    assert len(data) == 10 and data.env_id == "hopper-medium-v2"
    np.testing.assert_array_equal(data.next_observations, fields["observations"] + 1)
    np.testing.assert_array_equal(data.terminals, fields["terminals"])
    expected_timeouts = fields["timeouts"].copy()
    expected_timeouts[-1] = True  # the data ends mid-episode: cut
    np.testing.assert_array_equal(data.timeouts, expected_timeouts)
    np.testing.assert_array_equal(data.episode_ids, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert data.metadata["dropped_without_successor"] == 0


def test_derived_next_observations_drop_rows_without_successor(write):
    fields = flat_fields()
    obs = fields["observations"]
    data = load_dataset(write(fields))
    kept = [0, 1, 2, 3, 4, 5, 7, 8]  # row 6 (timeout) and row 9 (end of data) have no successor
    assert data.metadata["dropped_without_successor"] == 2
    np.testing.assert_array_equal(data.observations, obs[kept])
    np.testing.assert_array_equal(data.next_observations[:3], obs[1:4])
    np.testing.assert_array_equal(data.next_observations[3], obs[3])  # terminal: placeholder, never bootstrapped
    np.testing.assert_array_equal(data.next_observations[4], obs[5])
    np.testing.assert_array_equal(data.next_observations[6], obs[8])
    np.testing.assert_array_equal(data.rewards, fields["rewards"][kept])
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 0, 0, 1, 0, 1])  # the new episode ends are cut
    np.testing.assert_array_equal(data.episode_ids, [0, 0, 0, 0, 1, 1, 2, 2])


def test_returns_to_go_by_hand(write):
    fields = flat_fields()
    fields["next_observations"] = fields["observations"]
    data = load_dataset(write(fields))
    # episode 0: rewards 1, 2, 3, 4
    np.testing.assert_allclose(data.returns_to_go(1.0)[:4], [10, 9, 7, 4])
    g = 0.99
    np.testing.assert_allclose(data.returns_to_go()[:4], [1 + g * 2 + g**2 * 3 + g**3 * 4, 2 + g * 3 + g**2 * 4,
                                                          3 + g * 4, 4])
    # episode 1: rewards 5, 6, 7 ; episode 2: 8, 9, 10
    np.testing.assert_allclose(data.returns_to_go(1.0)[4:], [18, 13, 7, 27, 19, 10])
    np.testing.assert_allclose(data.episode_returns(), [10, 18, 27])
    with pytest.raises(DatasetError, match="gamma"):
        data.returns_to_go(1.5)


def test_env_id_stored_in_hdf5_attrs(tmp_path):
    data = load_dataset(write_hdf5(tmp_path / "d.hdf5", flat_fields(), env_id="Walker2d-v5"))
    assert data.env_id == "Walker2d-v5" and data.metadata["format"] == "hdf5"


def test_missing_key(write):
    fields = flat_fields()
    del fields["timeouts"]
    with pytest.raises(DatasetKeyError, match=r"missing required keys \['timeouts'\]") as info:
        load_dataset(write(fields))
    assert isinstance(info.value, KeyError) and isinstance(info.value, DatasetError)


def test_length_mismatch(write):
    fields = flat_fields()
    fields["actions"] = fields["actions"][:-1]
    with pytest.raises(DatasetError, match="different lengths.*'actions'"):
        load_dataset(write(fields))


@pytest.mark.parametrize("key", ["observations", "rewards", "next_observations"])
def test_non_finite_rows_are_refused(write, key):
    fields = flat_fields()
    fields["next_observations"] = fields["observations"].copy()
    fields[key] = fields[key].copy()
    fields[key][[2, 7]] = np.nan
    fields[key][5] = np.inf
    with pytest.raises(DatasetError, match=rf"3 rows have non-finite values \(NaN/Inf\) in {key}; first rows: \[2, 5, 7\]"):
        load_dataset(write(fields))


def test_wrong_dims_for_env(write):
    with pytest.raises(DatasetError, match="the env expects obs_dim=17, act_dim=6"):
        load_dataset(write(flat_fields()), expected_env="walker2d-medium-v2")
    data = load_dataset(write(flat_fields(), name="e"), expected_env=(11, 3))
    with pytest.raises(DatasetError, match="act_dim=6"):
        data.check_env(11, 6)


def test_missing_files_and_unknown_sources(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no such HDF5 file"):
        load_dataset(tmp_path / "absent.hdf5")
    with pytest.raises(DatasetNotFoundError, match="no such npz file"):
        load_dataset(str(tmp_path / "absent.npz"))
    np.savez(tmp_path / "x.npz", **flat_fields())
    with pytest.raises(DatasetError, match="unknown expected_env"):
        load_dataset(tmp_path / "x.npz", expected_env="ant")


def test_bundled_hopper_medium_ships_with_the_package():
    from obd_fast.data.loaders import BUNDLED_ROOT

    data = load_dataset("bundled:hopper-medium", expected_env="Hopper-v5")
    assert len(data) >= 100_000 and data.env_id == "Hopper-v5"
    files = [p for p in (BUNDLED_ROOT / "hopper-medium").iterdir()]
    assert sum(p.stat().st_size for p in files) <= 15e6
    assert "README.md" in {p.name for p in files}
    # the README's statistics are those of the shipped file
    readme = (BUNDLED_ROOT / "hopper-medium" / "README.md").read_text()
    assert f"| transitions / episodes | {len(data)} / {data.num_episodes} |" in readme
    with pytest.raises(DatasetNotFoundError, match="unknown bundled dataset 'nope'"):
        load_dataset("bundled:nope")


def test_bundled_folder_with_a_file_loads_without_code_change(tmp_path, monkeypatch):
    import obd_fast.data.loaders as loaders

    folder = tmp_path / "hopper-medium"
    folder.mkdir()
    np.savez(folder / "hopper-medium.npz", env_id=np.array("Hopper-v5"), **flat_fields())
    monkeypatch.setattr(loaders, "BUNDLED_ROOT", tmp_path)
    data = load_dataset("bundled:hopper-medium", expected_env="Hopper-v5")
    assert data.env_id == "Hopper-v5" and len(data) == 8
    assert loaders.available_bundled() == ["hopper-medium"]


def test_directory_that_is_not_a_minari_dataset(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="not a readable Minari dataset directory"):
        load_dataset(tmp_path)
