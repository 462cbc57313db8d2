"""Evaluation: BC training with each optimizer, architectures, ensembles, rollouts in Hopper-v5, baselines."""
import numpy as np
import pytest
import torch
from torch import nn

from obd_fast import PolicySpec, SyntheticSet
from obd_fast.data import StateNormalizer, normalized_score
from obd_fast.data.table import OfflineData
from obd_fast.evaluate import (ARCHS, DEFAULT_LR, OPTIMIZERS, EnsemblePolicy, ResidualPolicy, build_policy,
                               cross_evaluate, evaluate_policy, evaluate_synset, evaluate_teacher, make_optimizer,
                               random_selection, run_baselines, train_bc, train_bc_full)
from obd_fast.policy import PolicyModule
from obd_fast.teacher import FunctionTeacher

SPEC = PolicySpec(5, 2, (16, 16))


pytestmark = pytest.mark.usefixtures("one_thread")


def problem():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(16, 5, generator=g)
    return S, 0.8 * torch.tanh(S[:, :2] - S[:, 2:4])


def det_mse(policy, S, A):
    with torch.no_grad():
        return float(((policy(S) - A) ** 2).mean())


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_train_bc_reduces_the_loss_with_each_optimizer(optimizer):
    S, A = problem()
    before = build_policy(SPEC, 5, 2, generator=torch.Generator().manual_seed(0))  # train_bc's init for seed 0
    policy = train_bc(S, A, SPEC, steps=60, optimizer=optimizer, seed=0)
    assert len(policy.train_losses) == 60
    assert det_mse(policy, S, A) < 0.5 * det_mse(before, S, A)
    assert np.mean(policy.train_losses[-5:]) < np.mean(policy.train_losses[:5])
    assert not any(p.requires_grad for p in policy.parameters())


def test_optimizers_are_really_used():
    S, A = problem()
    p = make_optimizer("sgd-momentum", [nn.Parameter(torch.zeros(2))])
    assert isinstance(p, torch.optim.SGD) and p.defaults["momentum"] == 0.9
    assert p.defaults["lr"] == DEFAULT_LR["sgd-momentum"]
    assert isinstance(make_optimizer("adam", [nn.Parameter(torch.zeros(2))]), torch.optim.Adam)
    assert isinstance(make_optimizer("adamw", [nn.Parameter(torch.zeros(2))]), torch.optim.AdamW)
    thetas = {o: SPEC.params_from_module(train_bc(S, A, SPEC, steps=5, optimizer=o, seed=0)) for o in OPTIMIZERS}
    for a in OPTIMIZERS:
        for b in OPTIMIZERS:
            if a < b:
                assert not torch.allclose(thetas[a], thetas[b]), (a, b)
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_bc(S, A, SPEC, steps=1, optimizer="rmsprop")


def test_train_bc_is_seeded_and_matches_plain_sgd():
    S, A = problem()
    a = train_bc(S, A, SPEC, steps=3, seed=4)
    b = train_bc(S, A, SPEC, steps=3, seed=4)
    assert torch.equal(SPEC.params_from_module(a), SPEC.params_from_module(b))
    # by hand: the paper's inner loop (sampled action, MSE, SGD lr 0.1) with the same draws
    g = torch.Generator().manual_seed(4)
    theta = SPEC.init_params(generator=g).requires_grad_(True)
    for _ in range(3):
        noise = torch.randn(16, 2, generator=g)
        loss = ((SPEC.forward(theta, S, noise) - A) ** 2).mean()
        (grad,) = torch.autograd.grad(loss, theta)
        theta = (theta - 0.1 * grad).detach().requires_grad_(True)
    assert torch.allclose(SPEC.params_from_module(a), theta.detach(), atol=1e-6)


def test_minibatch_bc():
    S, A = problem()
    p = train_bc(S, A, SPEC, steps=30, optimizer="adam", lr=1e-2, batch_size=4, seed=0)
    assert det_mse(p, S, A) < det_mse(build_policy(SPEC, 5, 2, generator=torch.Generator().manual_seed(0)), S, A)


def test_ensemble_action_is_the_mean():
    g = torch.Generator().manual_seed(0)
    members = [build_policy(SPEC, 5, 2, generator=g) for _ in range(3)]
    obs = torch.randn(7, 5)
    ens = EnsemblePolicy(members)
    with torch.no_grad():
        expect = (members[0](obs) + members[1](obs) + members[2](obs)) / 3
    assert torch.allclose(ens(obs), expect, atol=1e-6)
    with pytest.raises(ValueError):
        EnsemblePolicy([])


@pytest.mark.parametrize("arch", ARCHS)
def test_cross_architectures(arch):
    policy = build_policy(arch, 11, 3, generator=torch.Generator().manual_seed(0), width=24)
    linears = [m for m in policy.modules() if isinstance(m, nn.Linear)]
    if arch == "resmlp":
        assert isinstance(policy, ResidualPolicy) and len(policy.blocks) == 2 and len(linears) == 6
        assert all(lin.out_features == 24 for lin in linears[:-1])
        assert policy.blocks[0][0].in_features == 24 and isinstance(policy.blocks[0][1], nn.ReLU)
    else:
        k = int(arch[3:])
        assert isinstance(policy, PolicyModule) and policy.spec.hidden == (24,) * k and len(linears) == k + 1
        assert policy.spec.head == "gaussian"
    assert linears[0].in_features == 11 and linears[-1].out_features == 6  # mean and log_std
    obs = torch.randn(4, 11)
    with torch.no_grad():
        det, sampled = policy(obs), policy(obs, torch.randn(4, 3))
    assert det.shape == sampled.shape == (4, 3) and det.abs().max() < 1 and not torch.equal(det, sampled)
    S, A = torch.randn(8, 11), torch.rand(8, 3) * 2 - 1
    trained = train_bc(S, A, arch, steps=2, seed=0, width=24)
    assert type(trained) is type(policy)


def test_named_architectures_are_256_wide():
    assert build_policy("mlp2", 11, 3).spec.hidden == (256, 256)
    assert build_policy("resmlp", 11, 3).inp.out_features == 256


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_policy("cnn", 11, 3)


# --------------------------------------------------------------------------- rollouts in Hopper-v5
HOPPER_SPEC = PolicySpec(11, 3, (16, 16))


def hopper_synset(n=16):
    g = torch.Generator().manual_seed(0)
    norm = StateNormalizer(mean=np.zeros(11), std=np.ones(11))
    return SyntheticSet(torch.randn(n, 11, generator=g), 0.5 * torch.rand(n, 3, generator=g), HOPPER_SPEC, norm,
                        objective="dbc", env_id="Hopper-v5", config={"inner_steps": 5, "inner_lr": 0.1})


def test_evaluate_synset_rolls_out_in_hopper():
    res = evaluate_synset(hopper_synset(), episodes=2, policies=2, ensemble=2, seed=0)
    assert res["env_id"] == "Hopper-v5" and res["steps"] == 5 and res["lr"] == 0.1 and res["ensemble"] == 2
    assert len(res["per_policy"]) == 2 and all(len(s) == 2 for s in res["scores"])
    assert np.isfinite(res["mean"]) and np.isclose(res["mean"], np.mean(res["per_policy"]))
    again = evaluate_synset(hopper_synset(), episodes=2, policies=2, ensemble=2, seed=0)
    assert again["scores"] == res["scores"]  # seeded BC and env seeds


def test_evaluate_policy_normalizes_returns():
    from obd_fast.rollout import rollout_returns

    def policy(obs):
        return torch.zeros(len(obs), 3)

    scores = evaluate_policy(policy, "Hopper-v5", episodes=2, seed=3)
    raw = rollout_returns(policy, "Hopper-v5", episodes=2, seed=3)
    assert np.allclose(scores, normalized_score("Hopper-v5", raw))


def test_cross_evaluate_and_errors():
    syn = hopper_synset()
    res = cross_evaluate(syn, archs=["mlp2", None], optimizers=["sgd", "adam"], episodes=1, steps=2)
    assert set(res) == {"mlp2/sgd", "mlp2/adam", "mlp(16,16)/sgd", "mlp(16,16)/adam"}
    assert res["mlp2/adam"]["lr"] == DEFAULT_LR["adam"]
    syn.env_id = None
    with pytest.raises(ValueError, match="env_id"):
        evaluate_synset(syn, episodes=1)


def hopper_data(n=300):
    r = np.random.default_rng(0)
    obs = r.normal(size=(n, 11))
    ends = np.zeros(n, bool)
    ends[99::100] = True
    return OfflineData(obs, np.clip(r.normal(size=(n, 3)) * 0.3, -1, 1), np.ones(n), obs, np.zeros(n, bool), ends,
                       np.arange(n) // 100, env_id="Hopper-v5")


def test_baselines():
    data = hopper_data()
    syn = random_selection(data, n=10, seed=2)
    real = data.normalizer.normalize(data.observations)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(2))[:10].numpy()
    assert np.allclose(syn.observations.numpy(), real[idx], atol=1e-5) and np.allclose(syn.actions, data.actions[idx])
    full = train_bc_full(data, spec=PolicySpec(11, 3, (16,)), steps=10)
    assert len(full.train_losses) == 10
    teacher = FunctionTeacher(nn.Sequential(nn.Linear(11, 3), nn.Tanh()), None, 11, 3)
    t = evaluate_teacher(teacher, "Hopper-v5", episodes=1)
    assert len(t["scores"][0]) == 1
    res = run_baselines(data, teacher, which=("random", "bc", "teacher"), episodes=1, n=10,
                        spec=PolicySpec(11, 3, (16,)), steps=5)
    assert set(res) == {"random", "bc", "teacher"} and res["bc"]["steps"] == 5
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baselines(data, teacher, which=("expert",))
    with pytest.raises(ValueError, match="needs the dataset"):
        run_baselines(None, teacher, env_id="Hopper-v5", which=("bc",))
