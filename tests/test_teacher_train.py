"""Teacher training runs: outputs, exact resume after a crash or to more steps, refusal to
overwrite, evaluation in MuJoCo, and the command line."""
import csv
import json
import sys

import numpy as np
import pytest
import torch

from obd_fast.data import OfflineData
from obd_fast.teacher import ActorCriticTeacher, CalQL, CalQLConfig, DeterministicTeacher, TD3BC, load_teacher, train_teacher
from obd_fast.teacher.train import RunExistsError, TeacherTrainError, prepare_tensors

OBS, ACT = 11, 3  # Hopper's sizes, so the evaluation test can roll out in Hopper-v5
TINY = {"calql": dict(actor_hidden=(16, 16), critic_hidden=(16, 16), cql_n_actions=2),
        "td3bc": dict(actor_hidden=(16, 16), critic_hidden=(16, 16))}
FAST = dict(batch_size=16, eval_every=0, progress=False)


def tiny_data(rows_per_episode=(30, 25, 20), seed=0):
    rng = np.random.default_rng(seed)
    n = sum(rows_per_episode)
    ends = np.cumsum(rows_per_episode) - 1
    terminals = np.zeros(n, bool)
    terminals[ends[0]] = True
    timeouts = np.zeros(n, bool)
    timeouts[ends[1:]] = True
    obs = rng.normal(size=(n + 1, OBS)) * rng.uniform(0.5, 3, OBS) + rng.normal(size=OBS)
    return OfflineData(observations=obs[:-1], actions=rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
                       rewards=rng.normal(1.0, 0.5, n), next_observations=obs[1:], terminals=terminals,
                       timeouts=timeouts, episode_ids=np.repeat(np.arange(len(rows_per_episode)), rows_per_episode),
                       env_id="Hopper-v5")


def weights(path):
    state = torch.load(path, weights_only=True)
    state.pop("obd_fast")
    return state


def assert_same_state(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_prepared_tensors():
    data = tiny_data()
    t = prepare_tensors(data, "calql", CalQLConfig())
    assert all(v.dtype == torch.float32 for v in t.values())
    np.testing.assert_allclose(t["observations"].numpy(), data.normalizer.normalize(data.observations), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t["next_observations"].numpy(), data.normalizer.normalize(data.next_observations),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t["mc_returns"].numpy(), data.returns_to_go(0.99), rtol=1e-5)
    # MC return: discounted within the episode, restarting at each episode
    r = data.rewards
    assert t["mc_returns"][29].item() == pytest.approx(r[29], rel=1e-5)
    assert t["mc_returns"][28].item() == pytest.approx(r[28] + 0.99 * r[29], rel=1e-5)
    assert t["terminals"].sum().item() == 1.0


@pytest.mark.parametrize("algo", ["td3bc", "calql"])
def test_outputs_and_resume_after_crash_is_exact(tmp_path, monkeypatch, algo):
    data = tiny_data()
    kw = dict(steps=12, checkpoint_every=4, log_every=3, config=TINY[algo], seed=3, **FAST)
    full = train_teacher(data, algo, tmp_path / "full", **kw)
    assert full["steps"] == 12 and full["final_evaluation"] is None
    out = tmp_path / "full"
    for name in ("checkpoint.pt", "teacher.pt", "log.csv", "learning_curve.png", "summary.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    assert all(np.isfinite(float(r["critic_loss"])) for r in rows)
    assert json.loads((out / "summary.json").read_text())["algo"] == algo
    teacher = load_teacher(out / "teacher.pt", env="Hopper-v5")
    assert isinstance(teacher, ActorCriticTeacher if algo == "calql" else DeterministicTeacher)
    np.testing.assert_array_equal(teacher.normalizer.mean, data.normalizer.mean)
    assert teacher.metadata["algo"] == algo and teacher.metadata["steps"] == 12

    # crash at update 7 (after the checkpoint at 4), then resume
    cls = CalQL if algo == "calql" else TD3BC
    original = cls.update
    calls = {"n": 0}

    def crashing(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(cls, "update", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(data, algo, tmp_path / "crash", **kw)
    monkeypatch.setattr(cls, "update", original)
    assert torch.load(tmp_path / "crash" / "checkpoint.pt", weights_only=True)["step"] == 4
    with pytest.raises(RunExistsError):
        train_teacher(data, algo, tmp_path / "crash", **kw)
    resumed = train_teacher(data, algo, tmp_path / "crash", resume=True, **kw)
    assert resumed["resumed_from"] == 4
    assert_same_state(weights(out / "teacher.pt"), weights(tmp_path / "crash" / "teacher.pt"))
    crash_rows = list(csv.DictReader(open(tmp_path / "crash" / "log.csv")))
    for key in ("step", "critic_loss", "q1_mean"):  # the logging window survives the crash too
        assert [r[key] for r in crash_rows] == [r[key] for r in rows], key


def test_resume_extends_a_finished_run_exactly(tmp_path):
    data = tiny_data()
    kw = dict(checkpoint_every=5, config=TINY["td3bc"], **FAST)
    train_teacher(data, "td3bc", tmp_path / "a", steps=10, **kw)
    train_teacher(data, "td3bc", tmp_path / "b", steps=6, **kw)
    train_teacher(data, "td3bc", tmp_path / "b", steps=10, resume=True, **kw)
    assert_same_state(weights(tmp_path / "a" / "teacher.pt"), weights(tmp_path / "b" / "teacher.pt"))
    # a different seed gives a different run
    train_teacher(data, "td3bc", tmp_path / "c", steps=10, seed=1, **kw)
    a, c = weights(tmp_path / "a" / "teacher.pt"), weights(tmp_path / "c" / "teacher.pt")
    assert not torch.equal(a["actor"]["net.0.weight"], c["actor"]["net.0.weight"])


def test_resume_refuses_another_setup(tmp_path):
    data = tiny_data()
    train_teacher(data, "td3bc", tmp_path / "r", steps=4, config=TINY["td3bc"], **FAST)
    with pytest.raises(TeacherTrainError, match="seed"):
        train_teacher(data, "td3bc", tmp_path / "r", steps=8, seed=5, resume=True, config=TINY["td3bc"], **FAST)
    with pytest.raises(TeacherTrainError, match="config"):
        train_teacher(data, "td3bc", tmp_path / "r", steps=8, resume=True, config=dict(TINY["td3bc"], alpha=1.0), **FAST)
    with pytest.raises(TeacherTrainError, match="dataset"):
        train_teacher(tiny_data(seed=1), "td3bc", tmp_path / "r", steps=8, resume=True, config=TINY["td3bc"], **FAST)
    with pytest.raises(TeacherTrainError, match="beyond"):
        train_teacher(data, "td3bc", tmp_path / "r", steps=2, resume=True, config=TINY["td3bc"], **FAST)
    (tmp_path / "r" / "checkpoint.pt").unlink()
    with pytest.raises(TeacherTrainError, match="no checkpoint"):
        train_teacher(data, "td3bc", tmp_path / "r", steps=8, resume=True, config=TINY["td3bc"], **FAST)
    with pytest.raises(TeacherTrainError, match="algo"):
        train_teacher(data, "iql", tmp_path / "x", steps=2)
    with pytest.raises(TeacherTrainError, match="unknown"):
        train_teacher(data, "td3bc", tmp_path / "x", steps=2, config=dict(hiden=(3,)))


def test_evaluation_in_mujoco(tmp_path):
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    data = tiny_data()
    summary = train_teacher(data, "td3bc", tmp_path / "e", steps=4, eval_every=2, eval_episodes=2,
                            batch_size=16, progress=False, config=TINY["td3bc"])
    assert summary["eval_env"] == "Hopper-v5"
    evals = json.loads((tmp_path / "e" / "summary.json").read_text())["final_evaluation"]
    assert evals["step"] == 4 and np.isfinite(evals["normalized_score"])
    rows = list(csv.DictReader(open(tmp_path / "e" / "log.csv")))
    assert [r["normalized_score"] != "" for r in rows] == [True, True]
    assert load_teacher(tmp_path / "e" / "teacher.pt").metadata["evaluation"]["step"] == 4

    # an environment gymnasium does not know: evaluation is skipped with a warning
    data.env_id = "nowhere-medium-v0"
    with pytest.warns(UserWarning, match="evaluation skipped"):
        s = train_teacher(data, "td3bc", tmp_path / "n", steps=2, eval_every=1, batch_size=16, progress=False,
                          config=TINY["td3bc"])
    assert s["final_evaluation"] is None and "nowhere" in s["evaluation_skipped"]


def test_command_line(tmp_path, monkeypatch, capsys):
    """``python -m obd_fast.teacher.train ...``, run through runpy in this process (the same
    ``__main__`` path without a second interpreter start)."""
    import runpy
    import warnings

    data = tiny_data()
    np.savez(tmp_path / "tiny.npz", observations=data.observations, actions=data.actions, rewards=data.rewards,
             next_observations=data.next_observations, terminals=data.terminals, timeouts=data.timeouts,
             env_id=np.asarray("Hopper-v5"))
    args = ["--data", str(tmp_path / "tiny.npz"), "--algo", "td3bc", "--steps", "6", "--out", str(tmp_path / "run"),
            "--eval-every", "0", "--batch-size", "8", "--actor-hidden", "8,8", "--critic-hidden", "8,8",
            "--no-progress", "--threads", str(torch.get_num_threads())]

    def run_cli():
        monkeypatch.setattr(sys, "argv", ["train.py", *args])
        with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported by this test
            runpy.run_module("obd_fast.teacher.train", run_name="__main__")
        return exit_info.value.code

    assert run_cli() == 0
    out = capsys.readouterr().out
    assert json.loads(out)["steps"] == 6
    teacher = load_teacher(tmp_path / "run" / "teacher.pt")
    assert teacher.actor.hidden == (8, 8)
    # the same command again refuses to overwrite the run
    assert run_cli() == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --data and --out are required
        from obd_fast.teacher.train import main

        main(["--algo", "td3bc"])
