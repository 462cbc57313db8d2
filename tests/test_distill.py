"""The distillation driver on tiny problems: objectives, inits, descent, resume, non-finite steps, files."""
import csv
import importlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from obd_fast import DistillConfig, Distiller, NonFiniteError, SyntheticSet, distill
from obd_fast.data.table import OfflineData
from obd_fast.teacher import FunctionTeacher

distill_module = importlib.import_module("obd_fast.distill")  # (obd_fast.distill is the function)

OBS, ACT = 5, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def fake_data(n=400, seed=0, env_id=None):
    r = np.random.default_rng(seed)
    obs = r.normal(size=(n, OBS)) * 2.0 + 1.0
    act = np.tanh(0.5 * obs[:, :ACT] - 0.3 * obs[:, ACT:2 * ACT])
    ends = np.zeros(n, bool)
    ends[49::50] = True
    return OfflineData(obs, act, r.normal(size=n), obs + 0.1, np.zeros(n, bool), ends, np.arange(n) // 50,
                       env_id=env_id, metadata={"source": "fake.npz"})


class Actor(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.randn(OBS, ACT, generator=g) * 0.5)

    def forward(self, obs, noise=None):
        pre = obs @ self.w
        return torch.tanh(pre if noise is None else pre + 0.3 * noise)


class Critic(nn.Module):
    def forward(self, obs, act):
        return 5.0 + obs[:, 0] - (act ** 2).sum(1)


def fake_teacher(stochastic=True, critic=None):
    return FunctionTeacher(Actor(), critic or Critic(), OBS, ACT, stochastic=stochastic)


TINY = dict(n_syn=8, inner_steps=4, hidden=(16, 16), real_batches=2, real_batch_size=16, eval_every=0,
            final_eval=False, save_every=2, plot=False, eval_batch=64)


def tiny(**kw):
    return DistillConfig(**{**TINY, **kw})


def test_defaults_are_the_papers():
    c = DistillConfig()
    assert (c.n_syn, c.inner_steps, c.inner_lr, c.inner_momentum) == (256, 100, 0.1, 0.0)
    assert (c.real_batches, c.real_batch_size, c.beta) == (10, 256, 0.02)
    assert (c.outer_lr, c.outer_momentum, c.clip_norm) == (0.1, 0.9, 2.0)
    assert c.hidden == (256, 256, 256) and c.head == "gaussian" and c.init == "real" and c.backend == "auto"
    assert c.max_nonfinite_in_a_row == 10


@pytest.mark.parametrize("objective", ["dbc", "pbc", "av-pbc"])
def test_objective_targets_and_weights(objective):
    data, teacher = fake_data(), fake_teacher()
    d = Distiller(data, teacher, tiny(objective=objective))
    b = d.draw()
    obs, target, weight = d.targets(b.index, b.teacher_noise)
    norm = teacher.normalizer or data.normalizer
    expect_obs = torch.as_tensor(norm.normalize(data.observations[b.index.numpy()]), dtype=torch.float32)
    assert torch.allclose(obs, expect_obs, atol=1e-5)
    if objective == "dbc":
        assert torch.allclose(target, torch.as_tensor(data.actions[b.index.numpy()], dtype=torch.float32))
        assert weight is None
        return
    sampled = teacher.act(obs, b.teacher_noise)  # a* sampled with the step's noise
    assert torch.allclose(target, sampled) and not torch.allclose(target, teacher.act(obs))
    if objective == "pbc":
        assert weight is None
    else:
        assert torch.allclose(weight, 0.02 * teacher.q(obs, sampled))


def test_fresh_draws_every_step_and_seeded():
    d1, d2 = Distiller(fake_data(), None, tiny(objective="dbc")), Distiller(fake_data(), None, tiny(objective="dbc"))
    a, b = d1.draw(), d1.draw()
    assert not torch.equal(a.theta0, b.theta0) and not torch.equal(a.inner_noise, b.inner_noise)
    assert not torch.equal(a.index, b.index)
    c = d2.draw()
    assert torch.equal(a.theta0, c.theta0) and torch.equal(a.index, c.index)  # same seed, same stream


def test_outer_steps_lower_the_objective_on_a_fixed_batch():
    d = Distiller(fake_data(), fake_teacher(), tiny(objective="pbc", outer_lr=0.05, outer_momentum=0.0))
    fixed = d.draw()
    d.draw = lambda: fixed  # fixed theta0, noise and real batch: plain gradient descent on one function
    losses = [d.step() for _ in range(6)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] and all(b <= a + 1e-6 for a, b in zip(losses, losses[1:]))


def test_steps_move_the_set_with_clipped_momentum_sgd():
    d = Distiller(fake_data(), None, tiny(objective="dbc", clip_norm=1e-3, outer_momentum=0.5, outer_lr=1.0))
    s0, a0 = d.syn_obs.clone(), d.syn_act.clone()
    d.step()
    step1 = torch.cat([(d.syn_obs - s0).reshape(-1), (d.syn_act - a0).reshape(-1)])
    assert abs(float(step1.norm()) - 1e-3) < 1e-5  # lr 1 * clipped gradient of norm 1e-3
    s1, a1 = d.syn_obs.clone(), d.syn_act.clone()
    d.step()
    vel = torch.cat([d.vel_obs.reshape(-1), d.vel_act.reshape(-1)])
    assert float(vel.norm()) <= 1.5e-3 + 1e-6 and float(vel.norm()) > 0.4e-3  # momentum 0.5 keeps half of step 1
    assert torch.allclose(d.syn_obs, s1 - d.vel_obs) and torch.allclose(d.syn_act, a1 - d.vel_act)


def test_init_real_and_random():
    data = fake_data()
    d = Distiller(data, None, tiny(objective="dbc", init="real"))
    real = torch.as_tensor(data.normalizer.normalize(data.observations), dtype=torch.float32)
    match = (d.syn_obs[:, None, :] - real[None]).abs().amax(-1) < 1e-5
    rows = match.float().argmax(1)
    assert match.any(1).all() and len(set(rows.tolist())) == 8
    assert torch.allclose(d.syn_act, torch.as_tensor(data.actions[rows.numpy()], dtype=torch.float32))
    r = Distiller(data, None, tiny(objective="dbc", init="random"))
    assert r.syn_obs.shape == (8, OBS) and r.syn_act.abs().max() <= 1.0
    assert not (r.syn_obs[:, None, :] - real[None]).abs().amax(-1).lt(1e-5).any()


def test_init_kmeanspp_picks_spread_real_rows():
    data = fake_data(n=300)
    data.observations[:250] = data.observations[0]  # 250 copies of one state, 50 distinct ones
    data.normalizer = None
    data.__post_init__()
    d = Distiller(data, None, tiny(objective="dbc", init="kmeans++", n_syn=20))
    real = torch.as_tensor(data.normalizer.normalize(data.observations), dtype=torch.float32)
    dist = (d.syn_obs[:, None, :] - real[None]).abs().amax(-1)
    assert (dist.min(1).values < 1e-5).all()
    acts = torch.as_tensor(data.actions, dtype=torch.float32)
    for s_row, a_row in zip(dist < 1e-5, d.syn_act):  # each action is the dataset action of such a state
        assert (acts[s_row] - a_row).abs().amax(1).min() < 1e-6
    # D^2 sampling: the duplicated state is chosen at most once, unlike uniform sampling (~17 of 20)
    dup = (d.syn_obs - real[0]).abs().amax(-1) < 1e-5
    assert int(dup.sum()) <= 1


def test_init_top_q_takes_the_highest_q_rows():
    data, teacher = fake_data(), fake_teacher()
    d = Distiller(data, teacher, tiny(objective="av-pbc", init="top-q"))
    real = torch.as_tensor(data.normalizer.normalize(data.observations), dtype=torch.float32)
    q = teacher.q(real, torch.as_tensor(data.actions, dtype=torch.float32))
    top = q.topk(8).values
    assert torch.allclose(teacher.q(d.syn_obs, d.syn_act).sort(descending=True).values, top, atol=1e-5)


@pytest.mark.parametrize("kw,message", [
    (dict(objective="pbc"), "needs a teacher"),
    (dict(objective="av-pbc"), "needs a teacher"),
    (dict(objective="dbc", init="top-q"), "needs a teacher"),
    (dict(objective="xbc"), "unknown objective"),
    (dict(objective="dbc", init="grid"), "unknown init"),
    (dict(objective="dbc", n_syn=0), "n_syn"),
])
def test_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        Distiller(fake_data(), None, tiny(**kw))


def test_teacher_must_fit_the_data():
    t = FunctionTeacher(Actor(), Critic(), OBS + 1, ACT)
    with pytest.raises(ValueError, match="obs_dim"):
        Distiller(fake_data(), t, tiny(objective="pbc"))


def _scores(syn):  # a deterministic stand-in for rollouts
    return {"mean": float(syn.actions.sum()), "std": 0.5}


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch):
    data, teacher = fake_data(), fake_teacher()
    kw = dict(objective="av-pbc", steps=7, config=tiny(eval_every=3, final_eval=True), progress=False,
              eval_fn=_scores, seed=5)
    full = distill(data, teacher, out_dir=tmp_path / "full", **kw)

    real_step = Distiller.step
    calls = {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 6:  # killed during step 6: the last save was after step 4
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Distiller, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        distill(data, teacher, out_dir=tmp_path / "cut", **kw)
    monkeypatch.setattr(Distiller, "step", real_step)
    saved = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert saved["step"] == 4
    resumed = distill(data, teacher, out_dir=tmp_path / "cut", resume=True, **kw)

    assert resumed.step == full.step == 7
    assert torch.equal(resumed.observations, full.observations) and torch.equal(resumed.actions, full.actions)
    assert resumed.history == full.history and [h["step"] for h in full.history] == [3, 6, 7]
    a = torch.load(tmp_path / "full" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    for k in ("vel_obs", "vel_act", "generator"):
        assert torch.equal(a[k], b[k]), k
    assert a["log"]["loss"] == b["log"]["loss"] and a["log"]["step"] == list(range(1, 8))
    on_disk = SyntheticSet.load(tmp_path / "cut" / "synset.pt")
    assert torch.equal(on_disk.observations, full.observations) and on_disk.step == 7


def test_resume_can_extend_a_finished_run(tmp_path):
    data = fake_data()
    kw = dict(objective="dbc", config=tiny(), progress=False)
    six = distill(data, None, steps=6, out_dir=tmp_path / "a", **kw)
    distill(data, None, steps=3, out_dir=tmp_path / "b", **kw)
    ext = distill(data, None, steps=6, out_dir=tmp_path / "b", resume=True, **kw)
    assert ext.step == 6 and torch.equal(ext.observations, six.observations)


def test_existing_run_needs_resume_and_same_settings(tmp_path):
    data = fake_data()
    distill(data, None, objective="dbc", steps=2, out_dir=tmp_path, config=tiny(), progress=False)
    with pytest.raises(ValueError, match="already holds a distillation run"):
        distill(data, None, objective="dbc", steps=2, out_dir=tmp_path, config=tiny(), progress=False)
    with pytest.raises(ValueError, match="different settings.*n_syn"):
        distill(data, None, objective="dbc", steps=4, out_dir=tmp_path, config=tiny(n_syn=9), resume=True,
                progress=False)
    with pytest.raises(ValueError, match="dataset"):
        distill(fake_data(n=300), None, objective="dbc", steps=4, out_dir=tmp_path, config=tiny(), resume=True,
                progress=False)


def _nan_on(calls_to_fail, monkeypatch):
    real = distill_module.meta_gradient
    count = {"n": 0}

    def fake(*args, **kwargs):
        count["n"] += 1
        loss, ds, da = real(*args, **kwargs)
        if count["n"] in calls_to_fail:
            return loss * float("nan"), ds, da * float("inf")
        return loss, ds, da

    monkeypatch.setattr(distill_module, "meta_gradient", fake)


def test_non_finite_steps_are_skipped_counted_and_logged(tmp_path, monkeypatch):
    _nan_on({2, 3}, monkeypatch)
    d = Distiller(fake_data(), None, tiny(objective="dbc"))
    d.step()
    before = (d.syn_obs.clone(), d.syn_act.clone(), d.vel_obs.clone())
    assert math.isnan(d.step()) and math.isnan(d.step())
    assert all(torch.equal(x, y) for x, y in zip(before, (d.syn_obs, d.syn_act, d.vel_obs)))  # nothing moved
    assert d.nonfinite_total == 2 and d.nonfinite_in_a_row == 2
    assert math.isfinite(d.step())
    assert d.nonfinite_in_a_row == 0 and d.log["skipped"] == [0, 1, 1, 0] and d.step_count == 4
    d.save(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [r["skipped"] for r in rows] == ["0", "1", "1", "0"]
    assert torch.isfinite(SyntheticSet.load(tmp_path / "synset.pt").actions).all()


def test_stops_after_too_many_non_finite_steps_in_a_row(tmp_path, monkeypatch):
    _nan_on(set(range(3, 100)), monkeypatch)
    with pytest.raises(NonFiniteError, match="3 outer steps in a row"):
        distill(fake_data(), None, objective="dbc", steps=20, out_dir=tmp_path, config=tiny(max_nonfinite_in_a_row=3),
                progress=False)
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # the last save (step 4) is intact and finite
    assert state["step"] == 4 and state["log"]["skipped"] == [0, 0, 1, 1] and state["nonfinite_total"] == 2
    assert torch.isfinite(state["syn_act"]).all() and torch.isfinite(state["vel_obs"]).all()


def test_non_finite_teacher_values_are_skipped_too():
    class NanCritic(nn.Module):
        def forward(self, obs, act):
            return torch.full((len(obs),), float("nan"))

    d = Distiller(fake_data(), fake_teacher(critic=NanCritic()), tiny(objective="av-pbc", max_nonfinite_in_a_row=2))
    assert math.isnan(d.step())
    with pytest.raises(NonFiniteError):
        d.step()


def test_files_and_metadata(tmp_path):
    data = fake_data(env_id=None)
    syn = distill(data, fake_teacher(), objective="pbc", steps=4, out_dir=tmp_path, eval_every=2, progress=False,
                  config=tiny(plot=True, final_eval=True), eval_fn=_scores, teacher_path="t.pt", seed=1)
    for name in ("synset.pt", "state.pt", "log.csv", "learning_curve.png", "config.json"):
        assert (tmp_path / name).is_file(), name
    back = SyntheticSet.load(tmp_path / "synset.pt")
    assert back.objective == "pbc" and back.step == 4 and back.seed == 1 and back.teacher_path == "t.pt"
    assert back.data_source == "fake.npz" and back.config["n_syn"] == 8 and back.config["hidden"] == [16, 16]
    assert [h["step"] for h in back.history] == [2, 4] and back.history[-1]["score_mean"] == _scores(syn)["mean"]
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[1]["score_mean"] != "" and rows[0]["score_mean"] == "" and rows[1]["eval_loss"] != ""
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_time_budget_stops_and_saves(tmp_path):
    syn = distill(fake_data(), None, objective="dbc", steps=50, out_dir=tmp_path, config=tiny(max_seconds=1e-9),
                  progress=False)
    assert syn.step == 1 and torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 1


def test_a_diverged_evaluation_is_saved_as_none(tmp_path):
    syn = distill(fake_data(), None, objective="dbc", steps=2, out_dir=tmp_path, config=tiny(plot=True, final_eval=True),
                  eval_fn=lambda s: {"mean": float("nan"), "std": float("inf")}, progress=False)
    assert syn.history[-1]["score_mean"] is None and syn.history[-1]["score_std"] is None
    assert SyntheticSet.load(tmp_path / "synset.pt").history == syn.history
    assert list(csv.DictReader(open(tmp_path / "log.csv")))[-1]["score_mean"] == ""


def test_cuda_graph_is_used_only_on_cuda():
    # On the CPU the flag changes nothing: outer steps call meta_gradient eagerly either way.
    data = fake_data()
    runs = []
    for flag in (True, False):
        d = Distiller(data, None, tiny(objective="dbc", cuda_graph=flag))
        assert not d.uses_cuda_graph()
        d.step()
        runs.append(d.syn_obs)
    assert torch.equal(runs[0], runs[1])
    assert DistillConfig.from_dict(tiny(cuda_graph=False).to_dict()).cuda_graph is False
    assert DistillConfig.from_dict({"steps": 3}).cuda_graph is True  # a run saved before the flag existed
