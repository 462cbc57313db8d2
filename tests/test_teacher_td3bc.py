"""TD3+BC: critic target and actor loss against an independent float64 computation, the delayed
actor update, CORL's defaults and keys, and the deterministic teacher."""
import io

import numpy as np
import pytest
import torch

from obd_fast.data import StateNormalizer
from obd_fast.teacher import TD3BC, DeterministicTeacher, TD3BCConfig, Teacher

OBS, ACT, B = 5, 2, 16
TINY = dict(actor_hidden=(16, 16), critic_hidden=(16, 16))


def make_agent(seed=0, **cfg):
    torch.manual_seed(seed)
    agent = TD3BC(OBS, ACT, TD3BCConfig(**{**TINY, **cfg}))
    for m in (agent.actor, agent.actor_target, agent.critic_1, agent.critic_2, agent.critic_1_target,
              agent.critic_2_target):
        m.double()
    with torch.no_grad():  # targets differ from the online networks
        for net in (agent.actor_target, agent.critic_1_target, agent.critic_2_target):
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return agent


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    f = dict(dtype=torch.float64, generator=g)
    terminals = torch.zeros(B, dtype=torch.float64)
    terminals[::5] = 1.0
    return dict(observations=torch.randn(B, OBS, **f), actions=torch.rand(B, ACT, **f) * 2 - 1,
                rewards=torch.randn(B, **f), next_observations=torch.randn(B, OBS, **f), terminals=terminals)


def mlp(sd, x, final_tanh=False):
    idx = sorted(int(k.split(".")[1]) for k in sd if k.endswith(".weight"))
    for j, i in enumerate(idx):
        x = x @ sd[f"net.{i}.weight"].T + sd[f"net.{i}.bias"]
        if j < len(idx) - 1:
            x = torch.clamp(x, min=0.0)
    return torch.tanh(x) if final_tanh else x[..., 0]


def test_critic_loss_matches_independent_computation():
    agent = make_agent(gamma=0.9)
    batch = make_batch()
    noise = (0.2 * torch.randn(B, ACT, dtype=torch.float64)).clamp(-0.5, 0.5)
    loss, info = agent.critic_loss(batch, noise)
    s, a, s2 = batch["observations"], batch["actions"], batch["next_observations"]
    a2 = (mlp(agent.actor_target.state_dict(), s2, True) + noise).clamp(-1, 1)
    sa2 = torch.cat([s2, a2], 1)
    y = batch["rewards"] + 0.9 * (1 - batch["terminals"]) * torch.min(
        mlp(agent.critic_1_target.state_dict(), sa2), mlp(agent.critic_2_target.state_dict(), sa2))
    sa = torch.cat([s, a], 1)
    l1 = ((mlp(agent.critic_1.state_dict(), sa) - y) ** 2).mean()
    l2 = ((mlp(agent.critic_2.state_dict(), sa) - y) ** 2).mean()
    torch.testing.assert_close(loss, l1 + l2, rtol=1e-12, atol=1e-12)
    assert info["critic_1_loss"] == pytest.approx(float(l1), rel=1e-12)
    assert info["critic_2_loss"] == pytest.approx(float(l2), rel=1e-12)
    assert info["target_q_mean"] == pytest.approx(float(y.mean()), rel=1e-12)


def test_target_noise_is_clipped_gaussian():
    agent = make_agent()
    torch.manual_seed(3)
    noise = agent.sample_target_noise(torch.zeros(20000, ACT, dtype=torch.float64))
    assert noise.abs().max() <= 0.5
    assert (noise.abs() == 0.5).float().mean() == pytest.approx(0.0124, abs=0.004)  # P(|N(0, .2)| > .5)
    assert noise.std().item() == pytest.approx(0.2, abs=0.01)


def test_actor_loss_bc_term_and_lambda():
    agent = make_agent(alpha=2.5)
    batch = make_batch()
    loss, info = agent.actor_loss(batch)
    params = list(agent.actor.parameters())
    grads = torch.autograd.grad(loss, params)

    # independent: lambda = alpha / mean|Q1(s, pi(s))| as a constant, BC = mean (pi(s) - a)^2
    sd = dict(agent.actor.state_dict())
    leaves = {k: v.clone().requires_grad_(True) for k, v in sd.items()}
    s, a = batch["observations"], batch["actions"]
    pi = mlp(leaves, s, True)
    q = mlp(agent.critic_1.state_dict(), torch.cat([s, pi], 1))
    lmbda = 2.5 / q.abs().mean().detach()
    bc = ((pi - a) ** 2).mean()
    ref = -lmbda * q.mean() + bc
    assert info["lambda"] == pytest.approx(float(lmbda), rel=1e-12)
    assert info["bc_loss"] == pytest.approx(float(bc.detach()), rel=1e-12)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    ref_grads = torch.autograd.grad(ref, [leaves[k] for k in sd])
    for g, r in zip(grads, ref_grads):  # same parameter order (net.0.weight, net.0.bias, ...)
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_critic_sgd_step_lowers_loss_and_actor_step_moves_towards_data_when_bc_dominates():
    agent = make_agent()
    batch = make_batch()
    noise = torch.zeros(B, ACT, dtype=torch.float64)
    params = list(agent.critic_1.parameters()) + list(agent.critic_2.parameters())
    loss0, _ = agent.critic_loss(batch, noise)
    with torch.no_grad():
        for p, g in zip(params, torch.autograd.grad(loss0, params)):
            p.sub_(1e-3 * g)
    assert agent.critic_loss(batch, noise)[0].item() < loss0.item()

    agent.config.alpha = 1e-6  # essentially behavior cloning
    bc0 = agent.actor_loss(batch)[1]["bc_loss"]
    loss, _ = agent.actor_loss(batch)
    with torch.no_grad():
        for p, g in zip(agent.actor.parameters(), torch.autograd.grad(loss, list(agent.actor.parameters()))):
            p.sub_(1e-2 * g)
    assert agent.actor_loss(batch)[1]["bc_loss"] < bc0


def test_delayed_actor_and_target_updates():
    torch.manual_seed(0)
    agent = TD3BC(OBS, ACT, TD3BCConfig(**TINY))
    batch = {k: v.float() for k, v in make_batch().items()}
    snap = lambda m: [p.detach().clone() for p in m.parameters()]  # noqa: E731
    a0, t0, c0 = snap(agent.actor), snap(agent.critic_1_target), snap(agent.critic_1)
    info1 = agent.update(batch)  # total_it 1: critics only
    assert "actor_loss" not in info1
    assert all(torch.equal(x, y) for x, y in zip(a0, agent.actor.parameters()))
    assert all(torch.equal(x, y) for x, y in zip(t0, agent.critic_1_target.parameters()))
    assert any(not torch.equal(x, y) for x, y in zip(c0, agent.critic_1.parameters()))
    info2 = agent.update(batch)  # total_it 2: actor and all targets
    assert {"actor_loss", "bc_loss", "lambda"} <= set(info2)
    assert any(not torch.equal(x, y) for x, y in zip(a0, agent.actor.parameters()))
    for old, new, c in zip(t0, agent.critic_1_target.parameters(), agent.critic_1.parameters()):
        torch.testing.assert_close(new, 0.995 * old + 0.005 * c.detach(), rtol=1e-6, atol=1e-7)


def test_corl_defaults_keys_and_resume():
    cfg = TD3BCConfig()
    assert (cfg.alpha, cfg.policy_noise, cfg.noise_clip, cfg.policy_freq) == (2.5, 0.2, 0.5, 2)
    assert (cfg.actor_lr, cfg.critic_lr, cfg.tau, cfg.gamma) == (3e-4, 3e-4, 5e-3, 0.99)
    assert tuple(cfg.actor_hidden) == (256, 256) and tuple(cfg.critic_hidden) == (256, 256)
    torch.manual_seed(0)
    agent = TD3BC(17, 6)
    state = agent.state_dict()
    for key in ("actor", "actor_optimizer", "critic_1", "critic_1_optimizer", "critic_2", "critic_2_optimizer", "total_it"):
        assert key in state
    assert {k: tuple(v.shape) for k, v in state["actor"].items()} == {
        "net.0.weight": (256, 17), "net.0.bias": (256,), "net.2.weight": (256, 256), "net.2.bias": (256,),
        "net.4.weight": (6, 256), "net.4.bias": (6,)}
    assert tuple(state["critic_1"]["net.0.weight"].shape) == (256, 23)
    assert tuple(state["critic_2"]["net.4.weight"].shape) == (1, 256)

    # resume: same next update from a saved state (through bytes, as from a file)
    small = TD3BC(OBS, ACT, TD3BCConfig(**TINY))
    batch = {k: v.float() for k, v in make_batch().items()}
    small.update(batch)
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    clone = TD3BC(OBS, ACT, TD3BCConfig(**TINY))
    clone.load_state_dict(torch.load(buf, weights_only=True))
    for ag in (small, clone):
        torch.manual_seed(9)
        ag.update(batch)
    for name in ("actor", "actor_target", "critic_1", "critic_2_target"):
        for p, q in zip(getattr(small, name).parameters(), getattr(clone, name).parameters()):
            assert torch.equal(p, q), name


def test_deterministic_teacher():
    torch.manual_seed(0)
    agent = TD3BC(OBS, ACT, TD3BCConfig(**TINY), max_action=2.0)
    norm = StateNormalizer(mean=np.zeros(OBS), std=np.ones(OBS))
    teacher = DeterministicTeacher(agent.actor, agent.critic_1, norm)
    assert isinstance(teacher, Teacher) and teacher.stochastic is False
    assert (teacher.obs_dim, teacher.act_dim, teacher.max_action) == (OBS, ACT, 2.0)
    obs = torch.randn(7, OBS)
    a = teacher.act(obs)
    assert a.shape == (7, ACT) and a.abs().max() <= 2.0
    assert torch.equal(teacher.act(obs, torch.randn(7, ACT)), a)  # noise is ignored
    assert teacher.q(obs, a).shape == (7,)
    assert teacher.device == torch.device("cpu")
    assert teacher.to(dtype=torch.float64).act(obs.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="normalizer"):
        DeterministicTeacher(agent.actor, agent.critic_1, StateNormalizer(mean=np.zeros(3), std=np.ones(3)))
    other = TD3BC(OBS + 1, ACT, TD3BCConfig(**TINY))
    with pytest.raises(ValueError, match="critic"):
        DeterministicTeacher(agent.actor, other.critic_1)
