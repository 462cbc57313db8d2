"""The fused path's memory guard (obd_fast.memory): checkpoint instead of running out of memory."""
import math
import sys
import time
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import obd_fast
from obd_fast import fused, memory
from helpers import make_case

pytestmark = pytest.mark.skipif(not obd_fast.fused_available(), reason="needs the compiled extension")

STEPS, N, B = 40, 24, 16


@pytest.fixture
def case():
    return make_case(dict(obs_dim=5, act_dim=2, hidden=(16, 16)), N, B, STEPS, torch.float64, seed=3)


@pytest.fixture(autouse=True)
def no_env_budget(monkeypatch):
    monkeypatch.delenv(memory.ENV_VAR, raising=False)


def meta(c, **kw):
    return obd_fast.meta_gradient(c["theta0"], c["syn_obs"], c["syn_act"], c["spec"], c["obs"], c["target"],
                                  c["weight"], steps=STEPS, lr=0.1, inner_noise=c["inner_noise"],
                                  outer_noise=c["outer_noise"], backend="fused", **kw)


def unroll_grads(c, **kw):
    s, a = c["syn_obs"].clone().requires_grad_(), c["syn_act"].clone().requires_grad_()
    th = c["theta0"].clone().requires_grad_()
    out = obd_fast.unroll_bc(th, s, a, c["spec"], steps=STEPS, lr=0.1, momentum=0.5, noise=c["inner_noise"],
                             backend="fused", **kw)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype)).sum().backward()
    return out.detach(), th.grad, s.grad, a.grad


def guard_warnings(caught):
    return [w for w in caught if issubclass(w.category, memory.MemoryGuardWarning)]


def between(c, momentum=0.0, n_outer=0):
    """A budget that the full tape exceeds but the best checkpointing fits."""
    full = memory.fused_bytes(c["spec"], N, STEPS, None, momentum, torch.float64, n_outer)
    k, least = memory.smallest_footprint(c["spec"], N, STEPS, momentum, torch.float64, n_outer)
    assert least < full / 3
    return (least + full) // 2, k


def test_no_pressure_changes_nothing(case):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = meta(case)  # half the available RAM: far above this problem
        off = meta(case, memory_budget=float("inf"))
        large = meta(case, memory_budget="1G")
    assert not guard_warnings(caught)
    for got in (default, large):
        assert all(torch.equal(x, y) for x, y in zip(got, off))


@pytest.mark.parametrize("via", ["argument", "env"])
def test_tight_budget_switches_to_checkpointing_with_one_warning(case, monkeypatch, via):
    budget, k = between(case, n_outer=B)
    unguarded = meta(case, memory_budget=float("inf"))
    kw = {}
    if via == "env":
        monkeypatch.setenv(memory.ENV_VAR, str(budget))
    else:
        kw["memory_budget"] = budget
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guarded = meta(case, **kw)
    ws = guard_warnings(caught)
    assert len(ws) == 1
    text = str(ws[0].message)
    assert f"using checkpoint_every={k} instead" in text and "above the memory budget" in text
    assert (memory.ENV_VAR if via == "env" else "memory_budget=") in text
    assert "bitwise" in text and "meta_gradient" in text and f"steps={STEPS}, N={N}" in text
    assert ws[0].filename == __file__  # points at the caller's line
    # checkpointing recomputes the same products in the same order: the same bits
    assert all(torch.equal(x, y) for x, y in zip(guarded, unguarded))
    assert all(torch.equal(x, y) for x, y in zip(guarded, meta(case, checkpoint_every=k)))


def test_unroll_bc_guard_with_momentum_keeps_gradients_bitwise(case):
    budget, k = between(case, momentum=0.5)
    want = unroll_grads(case, memory_budget=float("inf"))
    with pytest.warns(memory.MemoryGuardWarning, match=rf"unroll_bc \(fused\).*checkpoint_every={k}"):
        got = unroll_grads(case, memory_budget=budget)
    assert all(torch.equal(x, y) for x, y in zip(got, want))


def test_env_budget_is_overridden_by_the_argument(case, monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "1K")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta(case, memory_budget=float("inf"))
    assert not guard_warnings(caught)
    with pytest.raises(memory.MemoryBudgetError, match=memory.ENV_VAR):
        meta(case)


def test_explicit_checkpoint_every_and_reference_are_left_alone(case):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = meta(case, checkpoint_every=7, memory_budget=1)
        b = obd_fast.meta_gradient(case["theta0"], case["syn_obs"], case["syn_act"], case["spec"], case["obs"],
                                   case["target"], case["weight"], steps=STEPS, lr=0.1,
                                   inner_noise=case["inner_noise"], outer_noise=case["outer_noise"],
                                   backend="reference", memory_budget=1)
    assert not guard_warnings(caught)
    assert all(torch.allclose(x, y, rtol=1e-9, atol=1e-12) for x, y in zip(a, b))


def test_impossible_budget_fails_before_running(case, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the fused op ran although the budget could not be met")

    monkeypatch.setattr(fused, "meta_gradient", must_not_run)
    monkeypatch.setattr(fused, "unroll_bc", must_not_run)
    k, least = memory.smallest_footprint(case["spec"], N, STEPS, 0.0, torch.float64, B)
    with pytest.raises(memory.MemoryBudgetError) as info:
        meta(case, memory_budget=least - 1)
    assert isinstance(info.value, MemoryError)
    text = str(info.value)
    assert "nothing was run" in text and f"checkpoint_every={k}" in text and "memory_budget=" in text
    with pytest.raises(MemoryError, match="unroll_bc"):
        obd_fast.unroll_bc(case["theta0"], case["syn_obs"], case["syn_act"], case["spec"], steps=STEPS, lr=0.1,
                           noise=case["inner_noise"], backend="fused", memory_budget=100)


def test_absurd_steps_fail_fast_instead_of_allocating():
    spec = obd_fast.PolicySpec(3, 2, (4,), head="tanh")
    theta0 = spec.init_params(dtype=torch.float64)
    s, a = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 2, dtype=torch.float64)
    start = time.perf_counter()
    with pytest.raises(memory.MemoryBudgetError, match="steps=4611686018427387904"):
        obd_fast.unroll_bc(theta0, s, a, spec, steps=2**62, lr=0.1, backend="fused", memory_budget="64G")
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "lots", "12Q", True, [1]])
def test_bad_budget_values_are_named(case, bad, monkeypatch):
    with pytest.raises(ValueError, match="memory_budget"):
        meta(case, memory_budget=bad)
    monkeypatch.setenv(memory.ENV_VAR, str(bad))
    with pytest.raises(ValueError, match=memory.ENV_VAR):
        meta(case)


def test_parse_budget_units():
    assert memory.parse_budget(1000) == 1000.0
    assert memory.parse_budget("512M") == 512 * 2**20
    assert memory.parse_budget(" 2 GiB ") == 2 * 2**30
    assert memory.parse_budget("1.5e9") == 1.5e9
    assert memory.parse_budget("4k") == 4096
    for unlimited in ("inf", "none", "OFF", float("inf")):
        assert memory.parse_budget(unlimited) is None


def test_default_budget_reads_available_memory(monkeypatch):
    avail = memory.available_bytes("cpu")
    if sys.platform.startswith("linux"):
        assert avail is not None and avail > 0
    if avail is not None:
        budget, source = memory.resolve_budget(None, "cpu")
        assert 0.3 * avail < budget < 0.7 * avail and "available RAM" in source
    # neither /proc/meminfo nor psutil: no limit (the guard stays out of the way)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert memory.available_bytes("cpu") is None
    assert memory.resolve_budget(None, "cpu")[0] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_budget_uses_free_device_memory():
    free, _total = torch.cuda.mem_get_info()
    avail = memory.available_bytes("cuda")
    assert avail >= free * 0.9
    budget, source = memory.resolve_budget(None, torch.device("cuda"))
    assert "free GPU memory" in source and budget <= avail


@pytest.mark.parametrize("checkpoint_every", [None, 1, 3, 7, STEPS])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_estimate_matches_the_tape_the_fused_unroll_keeps(case, checkpoint_every, momentum):
    """The saved tape is the estimate's stored part (the recomputed segment lives only in backward)."""
    th = case["theta0"].clone().requires_grad_()
    out = obd_fast.unroll_bc(th, case["syn_obs"], case["syn_act"], case["spec"], steps=STEPS, lr=0.1,
                             momentum=momentum, noise=case["inner_noise"], backend="fused",
                             checkpoint_every=checkpoint_every)
    saved = out.grad_fn.saved_tensors[3:]  # after syn_obs, syn_act, noise: the tape
    tape_bytes = sum(t.numel() * t.element_size() for t in saved)
    p = case["spec"].num_params * 8
    est = fused.stored_state_bytes(case["spec"], N, STEPS, checkpoint_every, momentum, torch.float64)
    if checkpoint_every is None:
        assert tape_bytes == est
    else:
        k = min(checkpoint_every, STEPS)
        record = N * (2 * sum(case["spec"].hidden) + 2 * case["spec"].out_dim) * 8
        assert tape_bytes == est - (k + 1) * p - k * record


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(obs=st.integers(1, 20), act=st.integers(1, 6), hidden=st.lists(st.integers(1, 300), min_size=1, max_size=3),
       n=st.integers(1, 512), steps=st.integers(1, 3000), momentum=st.sampled_from([0.0, 0.9]),
       n_outer=st.integers(0, 3000))
def test_smallest_footprint_is_the_minimum(obs, act, hidden, n, steps, momentum, n_outer):
    spec = obd_fast.PolicySpec(obs, act, tuple(hidden))
    k, best = memory.smallest_footprint(spec, n, steps, momentum, torch.float32, n_outer)
    brute = min(memory.fused_bytes(spec, n, steps, j, momentum, torch.float32, n_outer) for j in range(1, steps + 1))
    assert best == brute == memory.fused_bytes(spec, n, steps, k, momentum, torch.float32, n_outer)
    assert 1 <= k <= steps
    # sqrt(T)-style segments: within a factor of a few of the continuous optimum
    p = spec.num_params * (2 if momentum else 1)
    r = spec.num_params + n * (2 * sum(spec.hidden) + 2 * spec.out_dim)
    assert k <= max(4, 4 * math.sqrt(steps * p / r)) or k == steps
