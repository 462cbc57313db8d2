"""Cal-QL: the reported loss terms against an independent float64 computation, the direction of
one critic step, the update's bookkeeping, and CORL's defaults and keys."""
import io
import math

import pytest
import torch

from obd_fast.teacher import CalQL, CalQLConfig

OBS, ACT, B, N = 5, 2, 12, 3
TINY = dict(actor_hidden=(16, 16), critic_hidden=(16, 16), cql_n_actions=N)


def make_agent(seed=0, **cfg):
    torch.manual_seed(seed)
    agent = CalQL(OBS, ACT, CalQLConfig(**{**TINY, **cfg}))
    for m in (agent.actor, agent.critic1, agent.critic2, agent.critic1_target, agent.critic2_target,
              agent.log_alpha, agent.cql_log_alpha):
        m.double()
    with torch.no_grad():  # make the targets differ from the online critics
        for p in list(agent.critic1_target.parameters()) + list(agent.critic2_target.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    return agent


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    f = dict(dtype=torch.float64, generator=g)
    terminals = torch.zeros(B, dtype=torch.float64)
    terminals[::4] = 1.0
    return dict(observations=torch.randn(B, OBS, **f), actions=torch.rand(B, ACT, **f) * 2 - 1,
                rewards=torch.randn(B, **f), next_observations=torch.randn(B, OBS, **f), terminals=terminals,
                mc_returns=torch.zeros(B, dtype=torch.float64))


def make_samples(seed=2):
    g = torch.Generator().manual_seed(seed)
    f = dict(dtype=torch.float64, generator=g)
    u = lambda *s: torch.rand(*s, **f) * 2 - 1  # noqa: E731
    return dict(next_actions=0.9 * u(B, ACT), next_log_pi=torch.randn(B, **f),
                random_actions=u(B, N, ACT),
                current_actions=0.9 * u(B, N, ACT), current_log_pi=torch.randn(B, N, **f),
                next_policy_actions=0.9 * u(B, N, ACT), next_policy_log_pi=torch.randn(B, N, **f))


def mlp(sd, prefix, x):
    """An MLP from a state dict's Linear layers (written here, not taken from the library)."""
    idx = sorted(int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix) and k.endswith(".weight"))
    for j, i in enumerate(idx):
        x = x @ sd[f"{prefix}{i}.weight"].T + sd[f"{prefix}{i}.bias"]
        if j < len(idx) - 1:
            x = torch.clamp(x, min=0.0)
    return x[..., 0]


def reference_terms(agent, batch, samples, alpha, cfg):
    """TD target and CQL terms in float64, from the formulas of the Cal-QL paper / CORL."""
    q = lambda name, s, a: mlp(getattr(agent, name).state_dict(), "network.", torch.cat([s, a], -1))  # noqa: E731
    s, a, s2 = batch["observations"], batch["actions"], batch["next_observations"]
    target_q = torch.min(q("critic1_target", s2, samples["next_actions"]), q("critic2_target", s2, samples["next_actions"]))
    if cfg.backup_entropy:
        target_q = target_q - alpha * samples["next_log_pi"]
    y = batch["rewards"] + (1 - batch["terminals"]) * cfg.gamma * target_q
    out = {"td_target": y}
    s_rep = s.unsqueeze(1).expand(B, N, OBS)
    bound = batch["mc_returns"].unsqueeze(1)
    for k in (1, 2):
        name = f"critic{k}"
        q_data = q(name, s, a)
        q_rand = q(name, s_rep, samples["random_actions"])
        q_cur = q(name, s_rep, samples["current_actions"])
        q_next = q(name, s_rep, samples["next_policy_actions"])
        if cfg.calibrated:
            q_cur, q_next = torch.maximum(q_cur, bound), torch.maximum(q_next, bound)
        if cfg.cql_importance_sample:
            log_unif = ACT * math.log(0.5)
            cat = torch.cat([q_rand - log_unif, q_next - samples["next_policy_log_pi"],
                             q_cur - samples["current_log_pi"]], 1)
        else:
            cat = torch.cat([q_rand, q_data.unsqueeze(1), q_next, q_cur], 1)
        ood = cfg.cql_temp * torch.log(torch.exp(cat / cfg.cql_temp).sum(1))
        out[f"td{k}"] = ((q_data - y) ** 2).mean()
        out[f"diff{k}"] = (ood - q_data).mean()
        out[f"cql{k}"] = cfg.cql_alpha * out[f"diff{k}"]
    out["loss"] = out["td1"] + out["td2"] + out["cql1"] + out["cql2"]
    return out


def set_bounds_to_median(agent, batch, samples):
    """MC returns at the median Q of the policy actions, so about half of the bounds bind."""
    with torch.no_grad():
        s_rep = batch["observations"].unsqueeze(1).expand(B, N, OBS)
        q_cur = agent.critic1(s_rep, samples["current_actions"])
        batch["mc_returns"] = q_cur.median(dim=1).values + 0.01


@pytest.mark.parametrize("variant", [dict(), dict(calibrated=False), dict(cql_importance_sample=False),
                                     dict(backup_entropy=True, cql_temp=0.5, cql_alpha=2.0, gamma=0.9)])
def test_critic_loss_terms_match_independent_computation(variant):
    agent = make_agent(**variant)
    batch, samples = make_batch(), make_samples()
    set_bounds_to_median(agent, batch, samples)
    alpha = torch.tensor(0.3, dtype=torch.float64)
    loss, info = agent.critic_loss(batch, alpha, samples)
    ref = reference_terms(agent, batch, samples, alpha, agent.config)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref["loss"], rtol=1e-10, atol=1e-10)
    for k in (1, 2):
        assert info[f"qf{k}_loss"] == pytest.approx(float(ref[f"td{k}"]), rel=1e-10)
        assert info[f"cql_qf{k}_diff"] == pytest.approx(float(ref[f"diff{k}"]), rel=1e-10)
        assert info[f"cql_min_qf{k}_loss"] == pytest.approx(float(ref[f"cql{k}"]), rel=1e-10)
    assert info["critic_td_loss"] == pytest.approx(float(ref["td1"] + ref["td2"]), rel=1e-10)
    assert info["cql_loss"] == pytest.approx(float(ref["cql1"] + ref["cql2"]), rel=1e-10)
    assert info["average_target_q"] == pytest.approx(float(ref["td_target"].mean()), rel=1e-10)
    assert info["qf_loss"] == pytest.approx(float(ref["loss"]), rel=1e-10)
    if agent.config.calibrated:  # the bounds were set so that some, not all, bind
        assert 0.0 < info["bound_rate_cql_q1_current_actions"] < 1.0


def test_calibration_changes_the_loss_only_where_bounds_bind():
    batch, samples = make_batch(), make_samples()
    alpha = torch.tensor(0.1, dtype=torch.float64)
    cal, plain = make_agent(), make_agent(calibrated=False)
    batch["mc_returns"] = torch.full((B,), -1e6, dtype=torch.float64)  # never binds
    assert cal.critic_loss(batch, alpha, samples)[0].item() == pytest.approx(plain.critic_loss(batch, alpha, samples)[0].item(), rel=1e-12)
    batch["mc_returns"] = torch.full((B,), 1e3, dtype=torch.float64)  # always binds: OOD values lifted
    l_cal, i_cal = cal.critic_loss(batch, alpha, samples)
    l_plain, _ = plain.critic_loss(batch, alpha, samples)
    assert i_cal["bound_rate_cql_q1_current_actions"] == 1.0
    assert l_cal.item() > l_plain.item()


def test_sampled_cql_inputs():
    agent = make_agent()
    batch = make_batch()
    torch.manual_seed(5)
    s = agent.sample_cql_inputs(batch)
    assert s["random_actions"].shape == (B, N, ACT) and s["current_actions"].shape == (B, N, ACT)
    assert s["current_log_pi"].shape == (B, N) and s["next_log_pi"].shape == (B,)
    assert s["random_actions"].abs().max() <= 1.0
    assert not s["current_actions"].requires_grad
    # log-probs belong to the actions: the actor's density of the same actions
    obs_rep = batch["observations"].unsqueeze(1).expand(B, N, OBS)
    lp = agent.actor.log_prob(obs_rep, s["current_actions"])
    torch.testing.assert_close(lp, s["current_log_pi"], rtol=1e-4, atol=1e-4)
    # the n samples per state differ (not one sample repeated)
    assert (s["current_actions"][:, 0] - s["current_actions"][:, 1]).abs().max() > 1e-3
    # drawing is seeded by the global generator
    torch.manual_seed(5)
    s2 = agent.sample_cql_inputs(batch)
    assert all(torch.equal(s[k], s2[k]) for k in s)


def test_one_critic_sgd_step_lowers_loss_and_widens_data_vs_ood_gap():
    agent = make_agent(cql_alpha=50.0)
    batch, samples = make_batch(), make_samples()
    set_bounds_to_median(agent, batch, samples)
    alpha = torch.tensor(0.2, dtype=torch.float64)
    params = list(agent.critic1.parameters()) + list(agent.critic2.parameters())

    def gap():
        with torch.no_grad():
            s = batch["observations"]
            s_rep = s.unsqueeze(1).expand(B, N, OBS)
            return (agent.critic1(s, batch["actions"]).mean() - agent.critic1(s_rep, samples["random_actions"]).mean()).item()

    loss0, _ = agent.critic_loss(batch, alpha, samples)
    gap0 = gap()
    grads = torch.autograd.grad(loss0, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(1e-4 * g)
    loss1, _ = agent.critic_loss(batch, alpha, samples)
    assert loss1.item() < loss0.item()
    assert gap() > gap0  # data actions pushed up relative to out-of-distribution ones


def test_update_bookkeeping_and_state_dict_round_trip():
    torch.manual_seed(0)
    agent = CalQL(OBS, ACT, CalQLConfig(**TINY))
    batch = {k: v.float() for k, v in make_batch().items()}
    batch["mc_returns"] = torch.randn(B)
    actor0 = [p.detach().clone() for p in agent.actor.parameters()]
    target0 = [p.detach().clone() for p in agent.critic1_target.parameters()]
    info = agent.update(batch)
    assert agent.total_it == 1
    for key in ("critic_loss", "critic_td_loss", "cql_loss", "policy_loss", "alpha", "alpha_loss", "log_pi",
                "qf1_loss", "qf2_loss", "cql_qf1_diff", "cql_min_qf2_loss", "bound_rate_cql_q1_next_actions"):
        assert math.isfinite(info[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(actor0, agent.actor.parameters()))
    for t_old, t_new, c in zip(target0, agent.critic1_target.parameters(), agent.critic1.parameters()):
        torch.testing.assert_close(t_new, 0.995 * t_old + 0.005 * c.detach(), rtol=1e-6, atol=1e-7)

    state = agent.state_dict()
    for key in ("actor", "critic1", "critic2", "critic1_target", "critic2_target", "critic_1_optimizer",
                "critic_2_optimizer", "actor_optim", "sac_log_alpha", "sac_log_alpha_optim", "cql_log_alpha",
                "cql_log_alpha_optim", "total_it"):
        assert key in state, key
    buf = io.BytesIO()
    torch.save(state, buf)  # through bytes: an in-memory state dict shares Adam's step tensors
    buf.seek(0)
    torch.manual_seed(1)
    clone = CalQL(OBS, ACT, CalQLConfig(**TINY))
    clone.load_state_dict(torch.load(buf, weights_only=True))
    torch.manual_seed(7)
    a = agent.update(batch)
    torch.manual_seed(7)
    b = clone.update(batch)
    assert a == b
    for p, q in zip(agent.critic2.parameters(), clone.critic2.parameters()):
        assert torch.equal(p, q)


def test_bc_steps_train_the_actor_by_likelihood():
    torch.manual_seed(0)
    agent = CalQL(OBS, ACT, CalQLConfig(**TINY, bc_steps=1))
    batch = {k: v.float() for k, v in make_batch().items()}
    lp0 = agent.actor.log_prob(batch["observations"], batch["actions"]).mean().item()
    for _ in range(1):
        agent.update(batch)
    assert agent.actor.log_prob(batch["observations"], batch["actions"]).mean().item() > lp0


def test_corl_defaults_and_init():
    cfg = CalQLConfig()
    assert (cfg.gamma, cfg.tau, cfg.actor_lr, cfg.critic_lr, cfg.alpha_lr) == (0.99, 5e-3, 3e-5, 3e-4, 3e-5)
    assert (cfg.cql_alpha, cfg.cql_n_actions, cfg.cql_temp, cfg.cql_importance_sample) == (10.0, 10, 1.0, True)
    assert cfg.backup_entropy is False and cfg.orthogonal_init is True and cfg.calibrated is True
    assert tuple(cfg.actor_hidden) == (256, 256, 256) and tuple(cfg.critic_hidden) == (256, 256)
    assert (cfg.reward_scale, cfg.reward_bias, cfg.bc_steps, cfg.alpha_multiplier) == (1.0, 0.0, 0, 1.0)
    torch.manual_seed(0)
    agent = CalQL(11, 3)
    assert agent.target_entropy == -3.0
    assert agent.actor_optim.param_groups[0]["lr"] == 3e-5 and agent.alpha_optim.param_groups[0]["lr"] == 3e-5
    assert agent.critic_1_optimizer.param_groups[0]["lr"] == 3e-4
    # CORL's orthogonal init: every Linear (the last included) orthogonal with gain sqrt(2), zero bias
    for net in (agent.actor.base_network, agent.critic1.network, agent.critic2_target.network):
        for lin in [m for m in net if isinstance(m, torch.nn.Linear)]:
            w = lin.weight.detach().double()
            small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(small, 2.0 * torch.eye(small.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
            assert not lin.bias.any()
    for a, b in zip(agent.critic1.parameters(), agent.critic1_target.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        CalQLConfig(cql_n_actions=0)
    with pytest.raises(TypeError):
        from obd_fast.rl import SACConfig

        CalQL(3, 1, SACConfig())
