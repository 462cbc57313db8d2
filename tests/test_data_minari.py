"""Minari datasets built on a real Gymnasium Hopper-v5 load into OfflineData field by field."""
import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
minari = pytest.importorskip("minari")
# EpisodeBuffer + create_dataset_from_buffers write the same datasets as minari.DataCollector,
# which would also import JAX (the minari[create] extra).
from minari.data_collector import EpisodeBuffer  # noqa: E402

from obd_fast.data import DatasetError, DatasetNotFoundError, load_dataset, normalized_score  # noqa: E402

MAX_STEPS = 30
REF_MIN, REF_MAX = -5.0, 95.0


def collect_episodes(total_steps=300, seed=0):
    env = gym.make("Hopper-v5", max_episode_steps=MAX_STEPS)
    env.action_space.seed(seed)
    episodes, steps, ep_seed = [], 0, seed
    while steps < total_steps:
        obs, _ = env.reset(seed=ep_seed)
        ep_seed += 1
        ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, term, trunc, _ = env.step(action)
            for key, value in zip(("observations", "actions", "rewards", "terminations", "truncations"),
                                  (obs, action, reward, term, trunc)):
                ep[key].append(value)
            done = term or trunc
        steps += len(ep["rewards"])
        episodes.append({k: np.asarray(v) for k, v in ep.items()})
    return env, episodes


@pytest.fixture(scope="module")
def hopper_minari(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        env, episodes = collect_episodes()
        assert any(ep["truncations"][-1] for ep in episodes), "need a truncated episode"
        assert any(ep["terminations"][-1] for ep in episodes), "need a terminated episode"
        buffers = [EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"], rewards=ep["rewards"],
                                 terminations=ep["terminations"], truncations=ep["truncations"])
                   for i, ep in enumerate(episodes)]
        with pytest.warns(UserWarning):  # minari warns about the missing author/permalink fields
            minari.create_dataset_from_buffers("test/hopper/random-v0", buffers, env=env, algorithm_name="random",
                                               ref_min_score=REF_MIN, ref_max_score=REF_MAX)
        env.close()
        yield root, episodes


def test_minari_fields_match_buffers(hopper_minari):
    root, episodes = hopper_minari
    data = load_dataset("test/hopper/random-v0", expected_env="Hopper-v5")
    assert data.env_id == "Hopper-v5" and data.metadata["format"] == "minari"
    assert len(data) == sum(len(ep["rewards"]) for ep in episodes) and data.num_episodes == len(episodes)
    start = 0
    for i, ep in enumerate(episodes):
        n = len(ep["rewards"])
        rows = slice(start, start + n)
        np.testing.assert_array_equal(data.observations[rows], ep["observations"][:-1])
        np.testing.assert_array_equal(data.next_observations[rows], ep["observations"][1:])
        np.testing.assert_array_equal(data.actions[rows], ep["actions"])
        np.testing.assert_array_equal(data.rewards[rows], ep["rewards"])
        np.testing.assert_array_equal(data.terminals[rows], ep["terminations"])
        np.testing.assert_array_equal(data.timeouts[rows], ep["truncations"])
        assert (data.episode_ids[rows] == i).all()
        np.testing.assert_allclose(data.returns_to_go(1.0)[start], ep["rewards"].sum())
        start += n
    assert data.timeouts.sum() >= 1 and data.terminals.sum() >= 1


def test_minari_by_directory_and_ref_scores(hopper_minari):
    root, _ = hopper_minari
    data = load_dataset(root / "test" / "hopper" / "random-v0")
    assert data.metadata["ref_min_score"] == REF_MIN and data.metadata["ref_max_score"] == REF_MAX
    # the dataset's own reference scores win over D4RL's hopper numbers
    assert normalized_score(data, REF_MIN) == pytest.approx(0.0)
    assert normalized_score(data, REF_MAX) == pytest.approx(100.0)
    assert normalized_score(data, 45.0) == pytest.approx(50.0)
    # and agree with minari's own 0-1 fraction times 100
    ds = minari.MinariDataset(root / "test" / "hopper" / "random-v0" / "data")
    assert normalized_score(data, 45.0) == pytest.approx(100 * float(minari.get_normalized_score(ds, np.array(45.0))))


def test_minari_normalizer_stats(hopper_minari):
    data = load_dataset("test/hopper/random-v0")
    np.testing.assert_allclose(data.normalizer.mean, data.observations.mean(0))
    np.testing.assert_allclose(data.normalizer.std, data.observations.std(0) + 1e-3)


def test_unknown_id_lists_local(hopper_minari):
    with pytest.raises(DatasetNotFoundError, match="test/hopper/random-v0") as info:
        load_dataset("mujoco/hopper/nothing-v0")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_wrong_env_dims(hopper_minari):
    with pytest.raises(DatasetError, match="obs_dim=11, act_dim=3; the env expects obs_dim=17, act_dim=6"):
        load_dataset("test/hopper/random-v0", expected_env="HalfCheetah-v5")
