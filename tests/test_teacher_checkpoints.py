"""Teacher checkpoints: our format and CORL's (Cal-QL with pickled ``Scalar`` modules, TD3+BC),
the released Cal-QL teachers, loading without ``Scalar`` in ``__main__``, and every error."""
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from obd_fast import PolicySpec
from obd_fast.data import StateNormalizer
from obd_fast.teacher import (ActorCriticTeacher, CalQL, CalQLConfig, DeterministicTeacher, TD3BC, TD3BCConfig,
                              TeacherCheckpointError, load_corl_checkpoint, load_teacher, save_teacher_checkpoint,
                              teacher_from_agent)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corl-calql"
RELEASED = {"hopper-medium-v2.pt": (11, 3, "Hopper-v5"), "halfcheetah-medium-replay-v2.pt": (17, 6, "HalfCheetah-v5"),
            "walker2d-medium-expert-v2.pt": (17, 6, "Walker2d-v5")}
OBS, ACT = 6, 2
TINY = dict(actor_hidden=(16, 16, 16), critic_hidden=(16, 16))


def normalizer(d=OBS, seed=0):
    rng = np.random.default_rng(seed)
    return StateNormalizer(mean=rng.normal(size=d), std=rng.uniform(0.5, 2.0, size=d))


def calql_agent(seed=0):
    torch.manual_seed(seed)
    return CalQL(OBS, ACT, CalQLConfig(**TINY))


def td3bc_agent(seed=0):
    torch.manual_seed(seed)
    return TD3BC(OBS, ACT, TD3BCConfig(actor_hidden=(16, 16), critic_hidden=(16, 16)))


def same_function(t1, t2, stochastic=True):
    obs = torch.randn(9, OBS)
    assert torch.equal(t1.act(obs), t2.act(obs))
    if stochastic:
        noise = torch.randn(9, ACT)
        assert torch.equal(t1.act(obs, noise), t2.act(obs, noise))
    a = t1.act(obs)
    assert torch.equal(t1.q(obs, a), t2.q(obs, a))


class CorlScalar(nn.Module):
    """Stand-in for CORL's ``Scalar`` (pickled by class name, as CORL's scripts do)."""

    def __init__(self, v):
        super().__init__()
        self.constant = nn.Parameter(torch.tensor(v, dtype=torch.float32))


def corl_calql_state(agent):
    """A dict laid out as CORL's ``CalQL.state_dict()``: learnable scalars as whole modules."""
    state = agent.state_dict()
    state["sac_log_alpha"] = CorlScalar(-0.5)
    state["cql_log_alpha"] = CorlScalar(1.0)
    return state


def save_with_scalar_module(state, path, module_name, monkeypatch):
    """Pickle ``state`` with its Scalar class importable as ``module_name.Scalar`` only while saving."""
    cls = type("Scalar", (CorlScalar,), {"__module__": module_name})
    cls.__qualname__ = "Scalar"
    if module_name == "__main__":
        monkeypatch.setattr(sys.modules["__main__"], "Scalar", cls, raising=False)
    else:
        mod = types.ModuleType(module_name)
        mod.Scalar = cls
        monkeypatch.setitem(sys.modules, module_name, mod)
    for key in ("sac_log_alpha", "cql_log_alpha"):
        old = state[key]
        state[key] = cls.__new__(cls)
        state[key].__dict__.update(old.__dict__)
    torch.save(state, path)
    monkeypatch.undo()


# ---------------------------------------------------------------------------------- round trips
def test_our_calql_round_trip(tmp_path):
    agent = calql_agent()
    norm = normalizer()
    path = save_teacher_checkpoint(tmp_path / "t.pt", agent, norm, "Hopper-v5", extra=dict(evaluation={"score": 1.5}, note="x"))
    raw = torch.load(path, weights_only=True)  # plain data only
    assert {"actor", "critic1", "critic2", "critic1_target", "sac_log_alpha", "cql_log_alpha", "total_it"} <= set(raw)
    meta = raw["obd_fast"]
    assert meta["algo"] == "calql" and meta["env_id"] == "Hopper-v5" and meta["note"] == "x"
    assert (meta["obs_dim"], meta["act_dim"], meta["actor_hidden"], meta["critic_hidden"]) == (OBS, ACT, [16] * 3, [16, 16])
    assert meta["evaluation"] == {"score": 1.5}

    teacher = load_teacher(path)
    assert isinstance(teacher, ActorCriticTeacher) and teacher.stochastic
    np.testing.assert_array_equal(teacher.normalizer.mean, norm.mean)
    np.testing.assert_array_equal(teacher.normalizer.std, norm.std)
    same_function(teacher, teacher_from_agent(agent, norm))
    assert teacher.metadata["algo"] == "calql"
    # the same file through the CORL loader: same networks, normalizer only if given
    corl = load_corl_checkpoint(path, env=(OBS, ACT))
    assert corl.normalizer is None
    same_function(teacher, corl)
    # the flat theta of the core's policy reproduces the actor
    spec = PolicySpec(OBS, ACT, (16, 16, 16), head="gaussian")
    theta = spec.params_from_module(teacher.actor)
    obs, noise = torch.randn(4, OBS), torch.randn(4, ACT)
    torch.testing.assert_close(spec.forward(theta, obs, noise), teacher.act(obs, noise))
    # a slim file (no optimizers or targets) gives the same teacher
    slim = save_teacher_checkpoint(tmp_path / "slim.pt", agent, norm, "Hopper-v5", training_state=False)
    assert set(torch.load(slim, weights_only=True)) == {"actor", "critic1", "critic2", "total_it", "obd_fast"}
    assert slim.stat().st_size < path.stat().st_size
    same_function(teacher, load_teacher(slim))
    # a given obs_norm must agree with the stored one
    assert load_teacher(path, obs_norm=norm).normalizer is not None
    with pytest.raises(TeacherCheckpointError, match="normalizer"):
        load_teacher(path, obs_norm=normalizer(seed=1))


def test_our_td3bc_round_trip(tmp_path):
    agent = td3bc_agent()
    path = save_teacher_checkpoint(tmp_path / "t.pt", agent, normalizer(), None)
    teacher = load_teacher(path)
    assert isinstance(teacher, DeterministicTeacher) and not teacher.stochastic
    same_function(teacher, teacher_from_agent(agent), stochastic=False)
    assert {"critic_1", "critic_1_optimizer", "actor_optimizer", "actor_target"} <= set(torch.load(path, weights_only=True))


def test_corl_td3bc_layout(tmp_path):
    agent = td3bc_agent()
    full = agent.state_dict()
    corl = {k: full[k] for k in ("critic_1", "critic_1_optimizer", "critic_2", "critic_2_optimizer", "actor",
                                 "actor_optimizer", "total_it")}  # CORL's TD3_BC.state_dict()
    torch.save(corl, tmp_path / "td3bc.pt")
    norm = normalizer()
    teacher = load_corl_checkpoint(tmp_path / "td3bc.pt", obs_norm=norm, env=(OBS, ACT))
    assert isinstance(teacher, DeterministicTeacher) and teacher.normalizer is norm
    same_function(teacher, teacher_from_agent(agent), stochastic=False)
    # and the agent resumes from it (targets copied from the online networks, as CORL does)
    clone = td3bc_agent(seed=1)
    clone.load_state_dict(torch.load(tmp_path / "td3bc.pt", weights_only=True))
    assert all(torch.equal(p, q) for p, q in zip(clone.actor_target.parameters(), agent.actor.parameters()))


@pytest.mark.parametrize("module_name", ["__main__", "cal_ql"])
def test_corl_calql_with_pickled_scalar_modules(tmp_path, monkeypatch, module_name):
    agent = calql_agent()
    path = tmp_path / "corl.pt"
    save_with_scalar_module(corl_calql_state(agent), path, module_name, monkeypatch)
    assert not hasattr(sys.modules["__main__"], "Scalar") and "cal_ql" not in sys.modules
    with pytest.raises(Exception):  # what a user of plain torch.load gets
        torch.load(path, weights_only=False)
    teacher = load_corl_checkpoint(path, obs_norm=normalizer())
    same_function(teacher, teacher_from_agent(agent))
    clone = calql_agent(seed=3)  # the training state loads too
    from obd_fast.teacher.checkpoints import read_checkpoint

    clone.load_state_dict(read_checkpoint(path))
    assert clone.log_alpha.constant.item() == pytest.approx(-0.5)


@pytest.mark.parametrize("safe_globals", [True, False])
def test_scalar_mapping_paths_and_foreign_objects_refused(tmp_path, monkeypatch, safe_globals):
    """Both loaders (weights_only with mapped names, and the restricted unpickler used where
    PyTorch cannot map names) read CORL's Scalars and refuse any other pickled class."""
    import obd_fast.teacher.checkpoints as ck

    agent = calql_agent()
    save_with_scalar_module(corl_calql_state(agent), tmp_path / "corl.pt", "__main__", monkeypatch)
    evil_mod = types.ModuleType("evil_mod")

    class Payload:
        pass

    Payload.__module__, Payload.__qualname__ = "evil_mod", "Payload"
    evil_mod.Payload = Payload
    monkeypatch.setitem(sys.modules, "evil_mod", evil_mod)
    state = corl_calql_state(agent)
    state["extra"] = Payload()
    save_with_scalar_module(state, tmp_path / "evil.pt", "__main__", monkeypatch)  # also undoes evil_mod

    monkeypatch.setattr(ck, "_USE_SAFE_GLOBALS", safe_globals)
    same_function(load_corl_checkpoint(tmp_path / "corl.pt"), teacher_from_agent(agent))
    with pytest.raises(TeacherCheckpointError, match="cannot be loaded safely"):
        load_corl_checkpoint(tmp_path / "evil.pt")


def test_loading_in_a_fresh_interpreter_without_scalar(tmp_path, monkeypatch):
    agent = calql_agent()
    path = tmp_path / "corl.pt"
    save_with_scalar_module(corl_calql_state(agent), path, "__main__", monkeypatch)
    obs = torch.randn(3, OBS)
    expected = teacher_from_agent(agent).act(obs)
    torch.save(dict(obs=obs, expected=expected), tmp_path / "io.pt")
    released = [str(SHARED / n) for n in RELEASED] if SHARED.is_dir() else []
    script = textwrap.dedent(f"""
        import sys, torch
        import __main__
        assert not hasattr(__main__, "Scalar")
        from obd_fast.teacher import load_corl_checkpoint
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        t = load_corl_checkpoint({str(path)!r})
        assert torch.equal(t.act(io["obs"]), io["expected"])
        for p in {released!r}:
            t = load_corl_checkpoint(p)
            assert torch.isfinite(t.act(torch.zeros(2, t.obs_dim))).all()
        print("ok", len({released!r}))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")


# ---------------------------------------------------------------------------------- released files
@pytest.mark.skipif(not SHARED.is_dir(), reason="the released CORL Cal-QL checkpoints are not available here")
@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_calql_checkpoints(name):
    obs_dim, act_dim, env = RELEASED[name]
    norm = StateNormalizer(mean=np.zeros(obs_dim), std=np.ones(obs_dim))
    teacher = load_corl_checkpoint(SHARED / name, obs_norm=norm, env=env)
    assert isinstance(teacher, ActorCriticTeacher)
    assert (teacher.obs_dim, teacher.act_dim, teacher.max_action) == (obs_dim, act_dim, 1.0)
    assert teacher.actor.spec.hidden == (256, 256, 256)
    assert tuple(teacher.critic.network[0].weight.shape) == (256, obs_dim + act_dim)
    obs = torch.randn(32, obs_dim, generator=torch.Generator().manual_seed(0))
    a, a_noisy = teacher.act(obs), teacher.act(obs, torch.randn(32, act_dim))
    q = teacher.q(obs, a)
    assert a.shape == (32, act_dim) and q.shape == (32,)
    assert torch.isfinite(a).all() and torch.isfinite(a_noisy).all() and torch.isfinite(q).all()
    assert a.abs().max() <= 1.0
    assert load_teacher(SHARED / name, env=(obs_dim, act_dim)).normalizer is None
    wrong = "Hopper-v5" if obs_dim == 17 else "Walker2d-v5"
    with pytest.raises(TeacherCheckpointError, match="obs_dim"):
        load_corl_checkpoint(SHARED / name, env=wrong)


# ---------------------------------------------------------------------------------- errors
@pytest.fixture()
def good_file(tmp_path):
    return save_teacher_checkpoint(tmp_path / "good.pt", calql_agent(), normalizer(), "Hopper-v5")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(TeacherCheckpointError, match="does not exist"):
        load_teacher(tmp_path / "nope.pt")
    with pytest.raises(TeacherCheckpointError, match="not a file"):
        load_corl_checkpoint(tmp_path)
    assert issubclass(TeacherCheckpointError, ValueError)


def test_not_a_torch_file(tmp_path):
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint\n")
    with pytest.raises(TeacherCheckpointError, match="not a PyTorch checkpoint"):
        load_teacher(tmp_path / "text.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(TeacherCheckpointError, match="empty"):
        load_teacher(tmp_path / "empty.pt")


def test_truncated_and_corrupt(tmp_path, good_file):
    data = good_file.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherCheckpointError, match="truncated or corrupt"):
        load_teacher(tmp_path / "cut.pt")
    # garbage in the pickle itself
    import zipfile

    with zipfile.ZipFile(good_file) as zin, zipfile.ZipFile(tmp_path / "bad.pt", "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            payload = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                payload = payload[:40] + b"\xff" * 16 + payload[56:]
            zout.writestr(item, payload)
    with pytest.raises(TeacherCheckpointError, match="good.pt|bad.pt"):
        load_teacher(tmp_path / "bad.pt")


def test_not_a_dict_and_missing_keys(tmp_path, good_file):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(TeacherCheckpointError, match="Tensor"):
        load_teacher(tmp_path / "tensor.pt")
    state = torch.load(good_file, weights_only=True)
    for mutate, pattern in [
        (lambda s: s.pop("critic1"), "missing keys"),
        (lambda s: s.pop("actor"), "missing keys"),
        (lambda s: s["actor"].pop("log_std_offset.constant"), "log_std_offset"),
        (lambda s: s["critic1"].pop("network.2.bias"), "network.2.bias"),
        (lambda s: s["critic1"].__setitem__("network.2.weight", torch.zeros(16, 9)), "do not chain"),
        (lambda s: s["critic1"].__setitem__("network.0.weight", torch.zeros(16, OBS + ACT + 1)), "critic1 maps"),
        (lambda s: s["actor"].update({"base_network.6.weight": torch.zeros(5, 16), "base_network.6.bias": torch.zeros(5)}),
         "2 \\* act_dim"),
    ]:
        s = torch.load(good_file, weights_only=True)
        s.pop("obd_fast")
        mutate(s)
        torch.save(s, tmp_path / "m.pt")
        with pytest.raises(TeacherCheckpointError, match=pattern):
            load_corl_checkpoint(tmp_path / "m.pt")
    state["obd_fast"]["obs_dim"] = OBS + 1
    torch.save(state, tmp_path / "meta.pt")
    with pytest.raises(TeacherCheckpointError, match="metadata"):
        load_teacher(tmp_path / "meta.pt")


def test_env_and_normalizer_mismatch(good_file):
    assert load_teacher(good_file, env=(OBS, ACT)).obs_dim == OBS
    with pytest.raises(TeacherCheckpointError, match="obs_dim=11, act_dim=3"):
        load_teacher(good_file, env="Hopper-v5")
    with pytest.raises(TeacherCheckpointError, match="act_dim=3"):
        load_corl_checkpoint(good_file, env=(OBS, 3))
    with pytest.raises(TeacherCheckpointError, match="unknown"):
        load_corl_checkpoint(good_file, env="CartPole-v1")
    with pytest.raises(TeacherCheckpointError, match="normalizer has 4"):
        load_corl_checkpoint(good_file, obs_norm=normalizer(4))
    with pytest.raises(TeacherCheckpointError, match="normalizer has 4"):
        load_corl_checkpoint(good_file, obs_norm=normalizer(4).to_dict())
    with pytest.raises(TeacherCheckpointError, match="obs_norm must be"):
        load_corl_checkpoint(good_file, obs_norm=[1, 2, 3])
    with pytest.raises(TeacherCheckpointError, match="normalizer has 4"):
        save_teacher_checkpoint(good_file.parent / "x.pt", calql_agent(), normalizer(4), None)
