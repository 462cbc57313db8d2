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


def test_training_curve_csv_holds_the_evaluations(tiny_run):
    import csv

    out, summary = tiny_run
    rows = list(csv.DictReader(open(out / "training_curve.csv")))
    assert [int(r["env_steps"]) for r in rows] == [e["env_steps"] for e in summary["evaluations"]]
    assert [float(r["normalized_score"]) for r in rows] == [e["normalized"] for e in summary["evaluations"]]


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


def test_evaluations_come_closer_together_near_the_target():
    from obd_fast.data.recipe import _eval_interval

    cfg = RecipeConfig(target_score=40.0, eval_every=5000, fine_eval_every=1000, fine_eval_from=0.5)
    assert _eval_interval(cfg, []) == 5000
    assert _eval_interval(cfg, [(5000, 100.0, 19.9)]) == 5000
    assert _eval_interval(cfg, [(5000, 100.0, 19.9), (10000, 700.0, 20.0)]) == 1000
    # the latest evaluation decides: a policy that fell back is looked at coarsely again
    assert _eval_interval(cfg, [(10000, 700.0, 20.0), (11000, 90.0, 2.0)]) == 5000


def test_behavior_policy_is_the_snapshot_closest_to_the_target(tmp_path, monkeypatch):
    """A score that leaps past the target (26 -> 73, as SAC on hopper did) freezes the snapshot at
    26, and medium-replay stops at that snapshot's step."""
    import torch

    from obd_fast.data import recipe
    from obd_fast.data.scores import reference_scores

    lo, hi = reference_scores("Hopper-v5")
    scripted = iter([1.0, 20.0, 24.0, 26.0, 73.0])
    monkeypatch.setattr(recipe, "_evaluate",
                        lambda *a, **k: np.full(2, lo + (hi - lo) * next(scripted) / 100.0))
    cfg = RecipeConfig(max_env_steps=2000, start_steps=50, eval_every=60, fine_eval_every=20, eval_episodes=2,
                       medium_transitions=100, checkpoint_every=60, hidden=(16, 16), batch_size=16, target_score=33.3)
    summary = make_dataset(tmp_path, cfg, progress=False)
    assert summary["reached_target"] and summary["train_env_steps"] == 180
    chosen = summary["behavior_policy"]
    assert chosen["env_steps"] == 160 and chosen["normalized"] == pytest.approx(26.0)
    assert summary["datasets"]["medium-replay"]["transitions"] == 160
    saved = torch.load(tmp_path / "behavior_policy.pt", weights_only=False)
    assert saved["env_steps"] == 160
    final_actor = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["agent"]["actor"]
    assert any(not torch.equal(saved["actor"][k], final_actor[k]) for k in final_actor)  # 20 more updates
    readme = write_bundle(tmp_path, tmp_path / "bundle").parent / "README.md"
    assert "step 160: return" in readme.read_text()
    # resuming the finished run keeps the chosen snapshot (no evaluation runs again)
    monkeypatch.setattr(recipe, "_evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    again = make_dataset(tmp_path, cfg, resume=True, progress=False)
    assert again["behavior_policy"] == chosen
    resaved = torch.load(tmp_path / "behavior_policy.pt", weights_only=False)
    assert all(torch.equal(resaved["actor"][k], saved["actor"][k]) for k in saved["actor"])


def test_choose_snapshot_prefers_the_later_on_a_tie():
    from obd_fast.data.recipe import _choose_snapshot

    c = [dict(score=30.0, env_steps=1), dict(score=40.0, env_steps=2), dict(score=50.0, env_steps=3)]
    assert _choose_snapshot(c, 35.0)["env_steps"] == 2
    assert _choose_snapshot(c, 31.0)["env_steps"] == 1


def test_a_relative_output_directory_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RecipeConfig(max_env_steps=200, start_steps=100, eval_every=100, eval_episodes=1, medium_transitions=50,
                       checkpoint_every=100, hidden=(8, 8), batch_size=8, target_score=1e9)
    with pytest.warns(UserWarning, match="did not reach"):
        summary = make_dataset("relative/run", cfg, progress=False)
    assert summary["datasets"]["medium"]["minari"] == "minari/obd-fast/hopper/medium-v0"
    assert load_dataset(str(tmp_path / "relative" / "run" / "minari" / "obd-fast" / "hopper" / "medium-v0")).env_id
