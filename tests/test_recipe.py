"""The dataset recipe (online SAC -> medium / medium-replay datasets) on a tiny budget."""
import json

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("minari")

from obd_fast.data import load_dataset  # noqa: E402
from obd_fast.data.errors import DatasetError  # noqa: E402
from obd_fast.data.recipe import RecipeConfig, make_dataset, write_bundle  # noqa: E402
from obd_fast.rl import SAC  # noqa: E402

TINY = RecipeConfig(max_env_steps=360, start_steps=120, eval_every=150, eval_episodes=1, medium_transitions=200,
                    checkpoint_every=60, hidden=(16, 16), batch_size=16, target_score=1e9)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    with pytest.warns(UserWarning, match="did not reach"):
        summary = make_dataset(out, TINY, progress=False)
    return out, summary


def _npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_outputs_load_and_agree(tiny_run):
    out, summary = tiny_run
    medium = summary["datasets"]["medium"]
    assert medium["transitions"] >= TINY.medium_transitions
    from_npz = load_dataset(str(out / medium["npz"]))
    from_minari = load_dataset(str(out / medium["minari"]))
    assert len(from_npz) == len(from_minari) == medium["transitions"]
    np.testing.assert_allclose(from_npz.observations, from_minari.observations, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(from_npz.terminals, from_minari.terminals)
    np.testing.assert_array_equal(from_npz.episode_ids, from_minari.episode_ids)
    assert from_minari.env_id == "Hopper-v5" and from_npz.env_id == "Hopper-v5"
    # episode returns recorded in the summary are those of the stored rewards
    assert np.isclose(from_npz.episode_returns().mean(), medium["return_mean"], rtol=1e-4)


def test_replay_set_holds_every_training_step(tiny_run):
    out, summary = tiny_run
    replay = load_dataset(str(out / summary["datasets"]["medium-replay"]["npz"]))
    assert len(replay) == summary["train_env_steps"] == TINY.max_env_steps
    # within an episode s'_i == s_{i+1}: the buffer was split at the right places
    same_episode = replay.episode_ids[1:] == replay.episode_ids[:-1]
    np.testing.assert_array_equal(replay.next_observations[:-1][same_episode], replay.observations[1:][same_episode])
    ends = np.flatnonzero(~same_episode)
    assert (replay.terminals[ends] | replay.timeouts[ends]).all()


def test_curve_and_summary_written(tiny_run):
    out, summary = tiny_run
    assert (out / "training_curve.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["train_env_steps"] == summary["train_env_steps"]
    assert len(summary["evaluations"]) == TINY.max_env_steps // TINY.eval_every


def test_refuses_to_overwrite_without_resume(tiny_run):
    out, _ = tiny_run
    with pytest.raises(DatasetError, match="resume"):
        make_dataset(out, TINY, progress=False)


def test_resume_after_interrupt_matches_uninterrupted(tiny_run, tmp_path, monkeypatch):
    out, _ = tiny_run
    original = SAC.update
    calls = {"n": 0}

    def failing_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 150:  # somewhere after a few checkpoints
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(SAC, "update", failing_update)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(tmp_path, TINY, progress=False)
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "summary.json").exists()
    monkeypatch.setattr(SAC, "update", original)
    with pytest.warns(UserWarning, match="did not reach"):
        make_dataset(tmp_path, TINY, resume=True, progress=False)
    for name in ("hopper-medium.npz", "hopper-medium-replay.npz"):
        a, b = _npz(out / name), _npz(tmp_path / name)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}:{k}")


def test_resume_with_other_config_is_refused(tiny_run, tmp_path):
    import shutil

    shutil.copy(tiny_run[0] / "checkpoint.pt", tmp_path / "checkpoint.pt")
    other = RecipeConfig(**{**TINY.__dict__, "seed": 5})
    with pytest.raises(DatasetError, match="another configuration"):
        make_dataset(tmp_path, other, resume=True, progress=False)


def test_bundle_readme(tiny_run, tmp_path):
    out, summary = tiny_run
    target = write_bundle(out, tmp_path / "hopper-tiny")
    text = (tmp_path / "hopper-tiny" / "README.md").read_text()
    assert f"| seed | {TINY.seed} |" in text and str(summary["datasets"]["medium"]["transitions"]) in text
    assert len(load_dataset(str(target))) == summary["datasets"]["medium"]["transitions"]
