"""The host tape pool of the fused CPU meta_gradient (csrc/tape_pool.h) and the CPU product
epilogue (bias + ReLU in one pass, csrc/cpu/elementwise_cpu.cpp): reused memory must never change
a result, concurrent calls must not share a tape, and the memory guard counts the pool as
available."""
import threading

import pytest
import torch

import obd_fast
from obd_fast import memory
from obd_fast.fused import stored_state_bytes
from helpers import case_meta_gradient, check_against_plain, make_case, odd_case

pytestmark = pytest.mark.skipif(not obd_fast.fused_available(), reason=f"no extension: {obd_fast.build_info()}")

SPEC = dict(obs_dim=7, act_dim=3, hidden=(33, 17), head="gaussian", max_action=1.0)


def meta(case, **kw):
    return case_meta_gradient(case, obd_fast.meta_gradient, backend="fused", lr=0.1, momentum=0.9, **kw)


def test_pool_keeps_the_tape_and_empty_cache_frees_it():
    obd_fast.empty_cache()
    assert obd_fast.cached_tape_bytes() == 0
    case = make_case(SPEC, 19, 23, 6, torch.float32, seed=0)
    meta(case)
    assert obd_fast.cached_tape_bytes() >= stored_state_bytes(case["spec"], 19, 6)
    obd_fast.empty_cache()
    assert obd_fast.cached_tape_bytes() == 0


@pytest.mark.parametrize("dtype, kw", [(torch.float32, {}), (torch.float64, {}), (torch.float32, dict(precision="bf16")),
                                       (torch.float32, dict(checkpoint_every=4))])
def test_reused_dirty_tape_gives_bitwise_the_same_result(dtype, kw):
    # A fresh tape and outer-loss record, then ones reused from a bigger run that left other
    # numbers in them: any entry read before this run wrote it would change the result.
    obd_fast.empty_cache()
    case = make_case(SPEC, 19, 23, 6, dtype, seed=1)
    fresh = meta(case, **kw)
    big = make_case(dict(SPEC, hidden=(64, 40)), 37, 41, 9, dtype, seed=2)
    meta(big, **kw)
    reused = meta(case, **kw)
    assert all(torch.equal(a, b) for a, b in zip(fresh, reused))
    if dtype == torch.float64:
        check_against_plain(case, "fused", 1e-9, lr=0.1, momentum=0.9)


def test_concurrent_calls_do_not_share_a_tape():
    cases = [make_case(SPEC, 19 + i, 23, 5, torch.float64, seed=10 + i) for i in range(4)]
    want = [meta(c) for c in cases]
    got = [None] * len(cases)
    errors = []

    def work(i):
        try:
            for _ in range(3):
                got[i] = meta(cases[i])
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, w in zip(got, want):
        assert all(torch.equal(a, b) for a, b in zip(g, w))


def test_memory_guard_counts_the_pool_as_available(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 10**9)
    obd_fast.empty_cache()
    assert memory.available_bytes("cpu") == 10**9
    meta(make_case(SPEC, 19, 23, 6, torch.float32, seed=3))
    pooled = obd_fast.cached_tape_bytes()
    assert pooled > 0 and memory.available_bytes("cpu") == 10**9 + pooled
    obd_fast.empty_cache()


@pytest.mark.parametrize("precision", ["native", "bf16"])
def test_relu_epilogue_passes_nan_like_torch(precision):
    # The fused bias+ReLU pass must not turn a NaN pre-activation into 0: the distill driver
    # detects a diverged inner loop by its non-finite result, and a theta that diverged in a few
    # entries would otherwise give finite numbers. The ops refuse a non-finite theta0, so the
    # inner step diverges in one entry: W_1[0, 0] = 3e38 with weight decay 2 steps to -inf, and
    # the outer loss then meets 0 * -inf in unit 0 of the second layer only (its input, unit 0
    # of the first layer, is dead: bias -1e3), a NaN pre-activation that must reach the loss.
    case = make_case(SPEC, 19, 23, 1, torch.float32, seed=4)
    spec, theta0 = case["spec"], case["theta0"].clone()
    b0_0, w1_00 = 33 * 7, 33 * 7 + 33  # offsets in the flat layout (docs/design.md)
    theta0[b0_0], theta0[w1_00] = -1e3, 3e38
    hyper = dict(lr=0.1, weight_decay=2.0)  # and the case's one step
    loss = lambda th: case_meta_gradient(dict(case, theta0=th), obd_fast.meta_gradient, backend="fused",
                                         precision=precision, **hyper)[0]
    assert torch.isnan(loss(theta0))
    theta1 = obd_fast.unroll_bc(theta0, case["syn_obs"], case["syn_act"], spec, steps=1, noise=case["inner_noise"],
                                backend="reference", **hyper)
    assert theta1[w1_00] == -float("inf") and int((~torch.isfinite(theta1)).sum()) == 1
    assert torch.isnan(spec.forward(theta1, case["obs"], case["outer_noise"])).all()  # torch's ReLU agrees
    assert torch.isfinite(loss(case["theta0"]))


def test_bf16_products_with_bias_match_float32_closely():
    # bf16 operands, float32 bias add and ReLU: near the float32 result, and not equal to it.
    case = odd_case("gaussian", 4, seed=5)
    c32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    f32 = meta(c32)
    bf = meta(c32, precision="bf16")
    for a, b in zip(bf, f32):
        assert torch.isfinite(a).all()
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-6
    assert not all(torch.equal(a, b) for a, b in zip(bf, f32))
