"""PolicySpec: flat layout, paper init, forward, and nn.Module / CORL checkpoint interop."""
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import indep_forward, layout
from obd_fast import PolicySpec

CORL_DIR = Path(__file__).resolve().parents[2] / "shared" / "corl-calql"
CORL_ACTOR_KEYS = {f"base_network.{i}.{k}" for i in (0, 2, 4, 6) for k in ("weight", "bias")} | {
    "log_std_multiplier.constant", "log_std_offset.constant"}

SPECS = [
    dict(obs_dim=2, act_dim=1, hidden=(3,)),
    dict(obs_dim=5, act_dim=2, hidden=(13, 9), max_action=1.3),
    dict(obs_dim=5, act_dim=2, hidden=(13, 9), head="tanh", max_action=2.0),
    dict(obs_dim=4, act_dim=3, hidden=(16, 8, 12, 5)),
    dict(obs_dim=11, act_dim=3, hidden=(256, 256, 256)),
]


# -- layout ------------------------------------------------------------------------------------

def test_layout_by_hand_gaussian():
    # obs 2 -> 3 -> 2*act(1): W1 (3,2) @0, b1 @6, W2 (2,3) @9, b2 @15, mult @17, offset @18.
    spec = PolicySpec(2, 1, (3,))
    assert spec.num_params == 19
    assert [(l.in_features, l.out_features, l.weight_offset, l.bias_offset) for l in spec.layers] == [
        (2, 3, 0, 6), (3, 2, 9, 15)]
    assert spec.head_offset == 17
    theta = torch.arange(19, dtype=torch.float64)
    (w1, b1), (w2, b2) = spec.unflatten(theta)[0]
    mult, off = spec.unflatten(theta)[1:]
    assert torch.equal(w1, torch.arange(6.0, dtype=torch.float64).view(3, 2))  # row-major (out, in)
    assert torch.equal(b1, torch.tensor([6.0, 7.0, 8.0], dtype=torch.float64))
    assert torch.equal(w2, torch.arange(9.0, 15.0, dtype=torch.float64).view(2, 3))
    assert torch.equal(b2, torch.tensor([15.0, 16.0], dtype=torch.float64))
    assert mult.item() == 17.0 and off.item() == 18.0


def test_layout_by_hand_tanh():
    # obs 2 -> 3 -> act 1: no log_std outputs, no head scalars.
    spec = PolicySpec(2, 1, (3,), head="tanh")
    assert spec.num_params == 6 + 3 + 3 + 1
    assert [(l.weight_offset, l.bias_offset) for l in spec.layers] == [(0, 6), (9, 12)]
    params, mult, off = spec.unflatten(torch.zeros(spec.num_params))
    assert params[-1][0].shape == (1, 3) and mult is None and off is None


@pytest.mark.parametrize("kw", SPECS)
def test_layout_matches_design(kw):
    spec = PolicySpec(**kw)
    layers, head_off, n = layout(spec)
    assert spec.num_params == n
    assert [(l.out_features, l.in_features, l.weight_offset, l.bias_offset) for l in spec.layers] == layers
    if head_off is not None:
        assert spec.head_offset == head_off


# -- init --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", SPECS)
def test_init_params_paper_init(kw):
    spec = PolicySpec(**kw)
    theta = spec.init_params(generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params, mult, off = spec.unflatten(theta)
    for w, b in params:
        # orthogonal with gain sqrt(2): the shorter side is orthonormal times sqrt(2)
        gram = w @ w.t() if w.shape[0] <= w.shape[1] else w.t() @ w
        assert torch.allclose(gram, 2 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-10)
        assert torch.count_nonzero(b) == 0
    if spec.head == "gaussian":
        assert mult.item() == 1.0 and off.item() == -1.0


def test_init_params_seed_and_generator():
    spec = PolicySpec(5, 2, (13, 9))
    torch.manual_seed(0)
    a = spec.init_params(generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # the global RNG must not matter when a generator is given
    b = spec.init_params(generator=torch.Generator().manual_seed(1))
    c = spec.init_params(generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # without a generator the global RNG is used
    torch.manual_seed(7)
    d = spec.init_params()
    torch.manual_seed(7)
    assert torch.equal(d, spec.init_params())


def test_init_params_dtype_device():
    spec = PolicySpec(5, 2, (13, 9))
    t64 = spec.init_params(generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t32 = spec.init_params(generator=torch.Generator().manual_seed(3), dtype=torch.float32, device="cpu")
    assert t64.dtype == torch.float64 and t32.dtype == torch.float32 and t32.device.type == "cpu"
    assert t32.shape == (spec.num_params,)
    assert torch.equal(t32, t64.float())  # one draw, cast: the same network in every dtype
    if torch.cuda.is_available():
        tc = spec.init_params(generator=torch.Generator().manual_seed(3), device="cuda")
        assert tc.device.type == "cuda" and torch.equal(tc.cpu(), t32)


# -- forward -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", SPECS[:4])
@pytest.mark.parametrize("with_noise", [False, True])
def test_forward_matches_independent(kw, with_noise):
    spec = PolicySpec(**kw)
    g = torch.Generator().manual_seed(0)
    theta = spec.init_params(generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        spec.num_params, generator=g, dtype=torch.float64)
    obs = torch.randn(9, spec.obs_dim, generator=g, dtype=torch.float64)
    noise = torch.randn(9, spec.act_dim, generator=g, dtype=torch.float64) if with_noise and spec.head == "gaussian" \
        else None
    got = spec.forward(theta, obs, noise)
    assert got.shape == (9, spec.act_dim)
    assert torch.allclose(got, indep_forward(spec, theta, obs, noise), rtol=0, atol=1e-13)
    assert got.abs().max() < spec.max_action


@pytest.mark.parametrize("offset", [5.0, -30.0])
def test_forward_log_std_clamp(offset):
    # An offset far outside [-20, 2] pushes log_std onto the clamp; both sides must agree on it.
    spec = PolicySpec(3, 2, (6,), max_action=0.7)
    g = torch.Generator().manual_seed(1)
    theta = spec.init_params(generator=g, dtype=torch.float64)
    theta[spec.head_offset + 1] = offset
    obs = torch.randn(5, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 2, generator=g, dtype=torch.float64)
    got = spec.forward(theta, obs, noise)
    assert torch.allclose(got, indep_forward(spec, theta, obs, noise), rtol=0, atol=1e-13)
    if offset < 0:  # std = exp(-20): essentially the deterministic action
        assert torch.allclose(got, spec.forward(theta, obs, None), atol=1e-8)


# -- nn.Module interop -------------------------------------------------------------------------

@pytest.mark.parametrize("kw", SPECS[1:4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_round_trip_and_forward(kw, dtype):
    spec = PolicySpec(**kw)
    g = torch.Generator().manual_seed(4)
    theta = (spec.init_params(generator=g, dtype=torch.float64)
             + 0.1 * torch.randn(spec.num_params, generator=g, dtype=torch.float64)).to(dtype)
    module = spec.to_module(theta)
    assert all(p.dtype == dtype for p in module.parameters())
    back = spec.params_from_module(module)
    assert back.dtype == dtype and torch.equal(back, theta)  # bitwise
    obs = torch.randn(6, spec.obs_dim, generator=g, dtype=torch.float64).to(dtype)
    noise = torch.randn(6, spec.act_dim, generator=g, dtype=torch.float64).to(dtype) \
        if spec.head == "gaussian" else None
    with torch.no_grad():
        assert torch.allclose(module(obs, noise), spec.forward(theta, obs, noise), rtol=0,
                              atol=1e-6 if dtype == torch.float32 else 1e-14)
        assert torch.allclose(module(obs), spec.forward(theta, obs), rtol=0,
                              atol=1e-6 if dtype == torch.float32 else 1e-14)


def test_module_state_dict_keys_are_corls():
    spec = PolicySpec(11, 3, (256, 256, 256))
    assert set(spec.to_module().state_dict()) == CORL_ACTOR_KEYS
    tanh_keys = set(PolicySpec(11, 3, (256, 256, 256), head="tanh").to_module().state_dict())
    assert tanh_keys == {k for k in CORL_ACTOR_KEYS if k.startswith("base_network")}


def test_module_default_init_values():
    spec = PolicySpec(4, 2, (8,))
    m = spec.to_module()
    assert m.log_std_multiplier.constant.item() == 1.0 and m.log_std_offset.constant.item() == -1.0


class _StubScalar(nn.Module):
    """Stands in for CORL's ``__main__.Scalar`` when unpickling a checkpoint."""

    def __init__(self, *args, **kwargs):
        super().__init__()


class _CorlUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "Scalar":
            return _StubScalar
        return super().find_class(module, name)


class _CorlPickle:
    """A ``pickle_module`` for torch.load whose unpickler resolves ``Scalar``."""

    Unpickler = _CorlUnpickler
    load = staticmethod(pickle.load)


def test_load_corl_calql_actor():
    path = CORL_DIR / "hopper-medium-v2.pt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    ckpt = torch.load(path, map_location="cpu", pickle_module=_CorlPickle, weights_only=False)
    actor = ckpt["actor"]
    spec = PolicySpec(11, 3, (256, 256, 256))
    module = spec.to_module()
    module.load_state_dict(actor, strict=True)
    theta = spec.params_from_module(module)
    expected = torch.cat([actor[f"base_network.{i}.{k}"].reshape(-1) for i in (0, 2, 4, 6) for k in ("weight", "bias")]
                         + [actor["log_std_multiplier.constant"].reshape(1), actor["log_std_offset.constant"].reshape(1)])
    assert torch.equal(theta, expected)
    # the deterministic action from the raw checkpoint tensors (mean = first act_dim outputs)
    obs = torch.randn(4, 11, generator=torch.Generator().manual_seed(0))
    x = obs
    for i in (0, 2, 4, 6):
        x = nn.functional.linear(x, actor[f"base_network.{i}.weight"], actor[f"base_network.{i}.bias"])
        if i < 6:
            x = torch.relu(x)
    assert torch.allclose(spec.forward(theta, obs), torch.tanh(x[:, :3]), atol=1e-6)


def test_spec_equality_hash_and_dict_round_trip():
    a = PolicySpec(5, 2, (13, 9), head="tanh", max_action=2.0)
    b = PolicySpec.from_dict(a.to_dict())
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != PolicySpec(5, 2, (13, 9), head="gaussian", max_action=2.0)


def test_one_head_for_the_policy_the_residual_policy_and_the_actor():
    """PolicyModule, evaluate.ResidualPolicy and rl.TanhGaussianActor share the head function:
    with the same last-layer outputs, log-std scalars and noise they give bitwise the same action,
    and the independent formula (helpers.indep_forward) agrees to rounding."""
    from obd_fast.evaluate import ResidualPolicy
    from obd_fast.rl.networks import TanhGaussianActor

    g = torch.Generator().manual_seed(0)
    obs, noise = torch.randn(9, 11, generator=g), torch.randn(9, 3, generator=g)
    spec = PolicySpec(11, 3, (16,), max_action=1.5)
    theta = spec.init_params(generator=g)
    theta[-2:] = torch.tensor([1.3, -0.4])
    policy = spec.to_module(theta)
    actor = TanhGaussianActor(11, 3, (16,), max_action=1.5)
    actor.load_state_dict(policy.state_dict())
    residual = ResidualPolicy(11, 3, width=16, blocks=0, max_action=1.5)
    with torch.no_grad():  # no blocks: relu(inp(s)) then out, the same function as the 1-hidden-layer MLP
        residual.inp.load_state_dict(policy.base_network[0].state_dict())
        residual.out.load_state_dict(policy.base_network[2].state_dict())
        residual.log_std_multiplier.constant.fill_(1.3)
        residual.log_std_offset.constant.fill_(-0.4)
    mean, log_std = actor.distribution_params(obs)
    from_actor = 1.5 * torch.tanh(mean + log_std.exp() * noise)
    for n in (noise, None):
        a = policy(obs, n)
        assert torch.equal(a, residual(obs, n)) and torch.equal(a, spec.forward(theta, obs, n))
        torch.testing.assert_close(a, indep_forward(spec, theta, obs, n))
    assert torch.equal(policy(obs, noise), from_actor)
