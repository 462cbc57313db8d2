"""Input validation: every bad argument is a ValueError that names it; backend resolution."""
import warnings

import pytest
import torch

import obd_fast
from obd_fast import _extension
from helpers import make_case

STEPS = 3


@pytest.fixture
def case():
    return make_case(dict(obs_dim=4, act_dim=2, hidden=(5,)), 6, 7, STEPS, torch.float32, seed=0)


@pytest.fixture
def tanh_case():
    return make_case(dict(obs_dim=4, act_dim=2, hidden=(5,), head="tanh"), 6, 7, STEPS, torch.float32, seed=0)


def unroll(c, **over):
    kw = dict(theta0=c["theta0"], syn_obs=c["syn_obs"], syn_act=c["syn_act"], spec=c["spec"], steps=STEPS, lr=0.1,
              noise=c["inner_noise"], backend="reference")
    kw.update(over)
    return obd_fast.unroll_bc(kw.pop("theta0"), kw.pop("syn_obs"), kw.pop("syn_act"), kw.pop("spec"), **kw)


def loss(c, **over):
    kw = dict(theta=c["theta0"], spec=c["spec"], obs=c["obs"], target=c["target"], weight=c["weight"],
              noise=c["outer_noise"], backend="reference")
    kw.update(over)
    return obd_fast.weighted_bc_loss(kw.pop("theta"), kw.pop("spec"), kw.pop("obs"), kw.pop("target"),
                                     kw.pop("weight"), kw.pop("noise"), **kw)


def meta(c, **over):
    kw = dict(theta0=c["theta0"], syn_obs=c["syn_obs"], syn_act=c["syn_act"], spec=c["spec"], obs=c["obs"],
              target=c["target"], weight=c["weight"], steps=STEPS, lr=0.1, inner_noise=c["inner_noise"],
              outer_noise=c["outer_noise"], backend="reference")
    kw.update(over)
    args = [kw.pop(k) for k in ("theta0", "syn_obs", "syn_act", "spec", "obs", "target", "weight")]
    return obd_fast.meta_gradient(*args, **kw)


def test_valid_calls_pass(case, tanh_case):
    # the fixtures themselves are valid, so every failure below is due to the one changed argument
    for c in (case, tanh_case):
        unroll(c)
        loss(c)
        meta(c)
        meta(c, weight=None)


# -- shapes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [unroll, meta])
def test_bad_inner_shapes(case, op):
    with pytest.raises(ValueError, match="theta0 must have shape"):
        op(case, theta0=case["theta0"][:-1])
    with pytest.raises(ValueError, match="theta0 must have shape"):
        op(case, theta0=case["theta0"][None])
    with pytest.raises(ValueError, match="syn_obs must have shape"):
        op(case, syn_obs=case["syn_obs"][:, :-1])
    with pytest.raises(ValueError, match="syn_act must have shape"):
        op(case, syn_act=case["syn_act"][:-1])
    with pytest.raises(ValueError, match="syn_act must have shape"):
        op(case, syn_act=case["syn_act"][:, :1])


@pytest.mark.parametrize("op", [loss, meta])
def test_bad_outer_shapes(case, op):
    with pytest.raises(ValueError, match="obs must have shape"):
        op(case, obs=case["obs"][:, :-1])
    with pytest.raises(ValueError, match="target must have shape"):
        op(case, target=case["target"][:-1])  # B mismatch with obs
    with pytest.raises(ValueError, match="weight must have shape"):
        op(case, weight=case["weight"][:, None])
    with pytest.raises(ValueError, match="weight must have shape"):
        op(case, weight=case["weight"][:-1])


def test_empty_batches(case):
    with pytest.raises(ValueError, match="syn_obs is empty"):
        unroll(case, syn_obs=case["syn_obs"][:0], syn_act=case["syn_act"][:0], noise=case["inner_noise"][:, :0])
    with pytest.raises(ValueError, match="obs is empty"):
        loss(case, obs=case["obs"][:0], target=case["target"][:0], weight=case["weight"][:0],
             noise=case["outer_noise"][:0])


def test_loss_theta_shape(case):
    with pytest.raises(ValueError, match="theta must have shape"):
        loss(case, theta=case["theta0"][1:])


def test_bad_spec(case):
    with pytest.raises(ValueError, match="spec must be"):
        unroll(case, spec=dict(obs_dim=4))


# -- dtypes, devices, values -------------------------------------------------------------------

@pytest.mark.parametrize("op", [unroll, meta])
def test_bad_dtypes(case, op):
    with pytest.raises(ValueError, match="theta0 must be float32 or float64"):
        op(case, theta0=case["theta0"].to(torch.int64))
    with pytest.raises(ValueError, match="syn_obs must be float32 or float64"):
        op(case, syn_obs=case["syn_obs"].half())
    with pytest.raises(ValueError, match="syn_act has dtype"):  # float64 among float32
        op(case, syn_act=case["syn_act"].double())
    with pytest.raises(ValueError, match="syn_obs must be a torch.Tensor"):
        op(case, syn_obs=case["syn_obs"].tolist())


def test_bad_dtypes_loss(case):
    with pytest.raises(ValueError, match="weight has dtype"):
        loss(case, weight=case["weight"].double())
    with pytest.raises(ValueError, match="target must be float32 or float64"):
        loss(case, target=case["target"].half())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch(case):
    with pytest.raises(ValueError, match="syn_obs is on"):
        unroll(case, syn_obs=case["syn_obs"].cuda())


def test_non_finite(case):
    bad_obs = case["syn_obs"].clone()
    bad_obs[1, 2] = float("nan")
    bad_w = case["weight"].clone()
    bad_w[0] = float("inf")
    with pytest.raises(ValueError, match="syn_obs contains 1 non-finite"):
        unroll(case, syn_obs=bad_obs)
    with pytest.raises(ValueError, match="syn_obs contains"):
        meta(case, syn_obs=bad_obs)
    with pytest.raises(ValueError, match="weight contains 1 non-finite"):
        loss(case, weight=bad_w)
    with pytest.raises(ValueError, match="weight contains"):
        meta(case, weight=bad_w)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite(dtype):
    """The one-pass check against torch.isfinite(t).all(): NaN, +Inf, -Inf alone or together at
    random places of odd-sized tensors, the extreme finite values, and empty tensors."""
    from obd_fast.checks import all_finite
    g = torch.Generator().manual_seed(0)
    big = torch.finfo(dtype).max
    for trial in range(60):
        shape = tuple(int(s) for s in torch.randint(1, 40, (int(torch.randint(1, 4, (1,), generator=g)),),
                                                     generator=g))
        t = torch.randn(shape, generator=g, dtype=dtype) * 10.0 ** float(torch.randint(-3, 4, (1,), generator=g))
        flat = t.view(-1)
        for value in (float("nan"), float("inf"), -float("inf"), big, -big):
            if torch.rand(1, generator=g) < 0.3:
                flat[int(torch.randint(0, flat.numel(), (1,), generator=g))] = value
        assert all_finite(t) == bool(torch.isfinite(t).all()), (shape, t)
    assert all_finite(torch.empty(0, 3, dtype=dtype))
    assert not all_finite(torch.tensor([float("nan")], dtype=dtype))
    assert all_finite(torch.tensor([big, -big], dtype=dtype))

# -- hyperparameters ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", [unroll, meta])
@pytest.mark.parametrize("arg,value", [
    ("steps", 0), ("steps", -2), ("steps", 2.0), ("steps", True), ("steps", "3"),
    ("lr", 0.0), ("lr", -0.1), ("lr", float("nan")), ("lr", float("inf")), ("lr", "fast"),
    ("momentum", -0.1), ("momentum", 1.0), ("momentum", 1.5),
    ("weight_decay", -1e-4), ("weight_decay", float("inf")),
    ("checkpoint_every", 0), ("checkpoint_every", -1), ("checkpoint_every", 2.5),
])
def test_bad_hyperparameters(case, op, arg, value):
    with pytest.raises(ValueError, match=arg):
        op(case, **{arg: value})


# -- noise -------------------------------------------------------------------------------------

def test_bad_inner_noise(case):
    n = case["inner_noise"]
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 6, 2\)"):
        unroll(case, noise=n[:-1])  # one step short
    with pytest.raises(ValueError, match="noise must have shape"):
        unroll(case, noise=n[:, :, :1])
    with pytest.raises(ValueError, match="inner_noise must have shape"):
        meta(case, inner_noise=n[:, :-1])
    with pytest.raises(ValueError, match=r"noise must hold one .* per inner step \(3\), got 2"):
        unroll(case, noise=list(n[:2]))
    with pytest.raises(ValueError, match="inner_noise must hold one"):
        meta(case, inner_noise=list(n) + [n[0]])
    with pytest.raises(ValueError, match=r"noise\[1\] must have shape"):
        unroll(case, noise=[n[0], n[1][:-1], n[2]])
    unroll(case, noise=list(n))  # a correct list is accepted...
    assert torch.equal(unroll(case, noise=list(n)), unroll(case))  # ...and means the same as the tensor


def test_bad_outer_noise(case):
    with pytest.raises(ValueError, match="noise must have shape"):
        loss(case, noise=case["outer_noise"][:-1])
    with pytest.raises(ValueError, match="outer_noise must have shape"):
        meta(case, outer_noise=case["outer_noise"][:, :1])
    with pytest.raises(ValueError, match="outer_noise must have shape"):
        meta(case, outer_noise=case["inner_noise"])


def test_noise_for_tanh_head(case, tanh_case):
    with pytest.raises(ValueError, match="noise must be None for the 'tanh' head"):
        unroll(tanh_case, noise=case["inner_noise"])
    with pytest.raises(ValueError, match="noise must be None"):
        loss(tanh_case, noise=case["outer_noise"])
    with pytest.raises(ValueError, match="inner_noise must be None"):
        meta(tanh_case, inner_noise=case["inner_noise"])
    with pytest.raises(ValueError, match="outer_noise must be None"):
        meta(tanh_case, outer_noise=case["outer_noise"])
    with pytest.raises(ValueError, match="noise must be None"):
        obd_fast.policy_forward(tanh_case["theta0"], tanh_case["obs"], tanh_case["spec"], case["outer_noise"])


# -- backend and precision ---------------------------------------------------------------------

@pytest.mark.parametrize("op", [unroll, loss, meta])
def test_backend_and_precision_names(case, op):
    with pytest.raises(ValueError, match="backend must be one of"):
        op(case, backend="gpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        op(case, precision="fp8")
    with pytest.raises(ValueError, match="precision='bf16' needs backend='fused'"):
        op(case, precision="bf16", backend="reference")
    with pytest.raises(ValueError, match="precision='bf16' needs float32"):
        op({k: v.double() if isinstance(v, torch.Tensor) else v for k, v in case.items()},
           precision="bf16", backend="fused" if obd_fast.fused_available() else "reference")


def test_policy_forward_validation(case):
    with pytest.raises(ValueError, match="obs must have shape"):
        obd_fast.policy_forward(case["theta0"], case["obs"][:, :-1], case["spec"])
    with pytest.raises(ValueError, match="backend must be one of"):
        obd_fast.policy_forward(case["theta0"], case["obs"], case["spec"], backend="cuda")


def test_auto_backend_works(case):
    got = meta(case, backend="auto")
    want = meta(case, backend="fused" if obd_fast.fused_available() else "reference")
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.fixture
def no_extension(monkeypatch):
    monkeypatch.setattr(_extension, "_load_error", "ImportError: pretend the build is missing")
    monkeypatch.setattr(_extension, "_warned", False)


def test_auto_falls_back_with_one_warning(case, no_extension):
    assert not obd_fast.fused_available()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = meta(case, backend="auto")
        b = unroll(case, backend="auto")
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in caught]
    assert "falling back to backend='reference'" in str(runtime[0].message)
    assert "pretend the build is missing" in str(runtime[0].message)
    assert all(torch.equal(x, y) for x, y in zip(a, meta(case, backend="reference")))
    assert torch.equal(b, unroll(case, backend="reference"))


def test_fused_without_extension_raises(case, no_extension):
    for op in (unroll, loss, meta):
        with pytest.raises(RuntimeError, match="backend='fused' is unavailable.*pretend the build is missing"):
            op(case, backend="fused")
    assert "unavailable" in obd_fast.build_info()


def test_numpy_integer_steps_are_accepted():
    """Steps often come from arrays or configs as numpy integers."""
    import numpy as np

    spec = obd_fast.PolicySpec(3, 2, (5,), head="tanh")
    theta0 = spec.init_params(dtype=torch.float64)
    s, a = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 2, dtype=torch.float64)
    want = obd_fast.unroll_bc(theta0, s, a, spec, steps=3, lr=0.1, backend="reference")
    got = obd_fast.unroll_bc(theta0, s, a, spec, steps=np.int64(3), lr=0.1, checkpoint_every=np.int32(2))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)


def test_tf32_needs_cuda_tensors():
    spec = obd_fast.PolicySpec(3, 2, (5,), head="tanh")
    theta0 = spec.init_params()
    s, a = torch.randn(4, 3), torch.rand(4, 2)
    with pytest.raises(ValueError, match="tf32.*CUDA"):
        obd_fast.unroll_bc(theta0, s, a, spec, steps=2, lr=0.1, precision="tf32", backend="fused")
