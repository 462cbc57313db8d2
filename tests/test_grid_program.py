"""The grid program (csrc/grid/program.h), the CUDA backend's whole-step kernels, run on the CPU
by its serial executor (step_kernel="grid"): the same code the GPU runs, item by item, so every
index, epilogue and phase boundary of it is checked here against the independent float64 unroll,
at odd sizes, with both heads, momentum, weight decay and checkpoints."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import obd_fast
from obd_fast import fused
from helpers import (GRID, case_meta_gradient, check_against_plain, gradcheck_unroll, make_case, odd_case, rel_err,
                     to_dtype)

pytestmark = [pytest.mark.skipif(not obd_fast.fused_available(), reason=f"no extension: {obd_fast.build_info()}"),
              pytest.mark.usefixtures("one_thread")]

TOL = 1e-9


@pytest.fixture
def grid_kernel(monkeypatch):
    """Inner steps through the grid program: the process-wide default of step_kernel for the test
    (what OBD_FAST_STEP_KERNEL=grid at import gives), so that the shared helpers' calls run it."""
    monkeypatch.setitem(fused._ENV, "step_kernel", "grid")


def meta(case, **kw):
    return case_meta_gradient(case, obd_fast.meta_gradient, backend="fused", **kw)


@pytest.mark.parametrize("head,momentum,wd,steps", GRID)
def test_grid_program_matches_plain_unroll(grid_kernel, head, momentum, wd, steps):
    check_against_plain(odd_case(head, steps, seed=steps), "fused", TOL, lr=0.1, momentum=momentum, weight_decay=wd)


# Depths 1 to 4, widths that fill no tile evenly, fewer rows than a warp tile and more.
SHAPES = [
    dict(obs_dim=3, act_dim=1, hidden=(5,)),
    dict(obs_dim=7, act_dim=2, hidden=(33,)),
    dict(obs_dim=11, act_dim=3, hidden=(17, 129)),
    dict(obs_dim=2, act_dim=5, hidden=(9, 1, 40)),
    dict(obs_dim=6, act_dim=3, hidden=(65, 31, 7, 12)),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s["hidden"])))
@pytest.mark.parametrize("head", ["gaussian", "tanh"])
def test_grid_program_odd_shapes(grid_kernel, shape, head):
    n = 37 if len(shape["hidden"]) % 2 else 130
    case = make_case(dict(shape, head=head, max_action=1.7), n, 23, 4, torch.float64, seed=len(shape["hidden"]))
    check_against_plain(case, "fused", TOL, lr=0.1, momentum=0.9, weight_decay=1e-3)


@pytest.mark.parametrize("ck", [1, 3, 4, 10])
def test_grid_program_checkpointed_is_bitwise_full(grid_kernel, ck):
    # Every step runs the same items in the same order whether a segment is the forward phase or
    # a recomputation, so checkpointing must not change a bit; uneven last segments included.
    case = odd_case("gaussian", 10, seed=4)
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    full = meta(case, checkpoint_every=None, **hyper)
    ckpt = check_against_plain(case, "fused", TOL, checkpoint_every=ck, **hyper)
    for f, c in zip(full, ckpt):
        assert torch.equal(f, c)


def test_grid_program_deterministic_head_and_unit_weights(grid_kernel):
    case = odd_case("gaussian", 5, seed=1, noise=False)
    case["weight"] = None
    check_against_plain(case, "fused", TOL, lr=0.1, momentum=0.9, weight_decay=1e-4)


def test_grid_program_float32_against_float64(grid_kernel):
    case = make_case(dict(obs_dim=11, act_dim=3, hidden=(64, 64)), 64, 256, 20, torch.float64, seed=0)
    want = meta(case, lr=0.1)
    got = meta(to_dtype(case, torch.float32), lr=0.1)
    errs = [rel_err(g, w) for g, w in zip(got, want)]
    assert all(g.dtype == torch.float32 for g in got)
    assert max(errs) <= 1e-4, errs


def test_grid_program_agrees_with_the_aten_path():
    # Same math, other summation order: float64 results agree to rounding.
    case = odd_case("tanh", 10, seed=7)
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    lib = meta(case, checkpoint_every=3, step_kernel="library", **hyper)
    grd = meta(case, checkpoint_every=3, step_kernel="grid", **hyper)
    for a, b in zip(grd, lib):
        assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("head", ["gaussian", "tanh"])
def test_grid_program_unroll_bc_gradcheck(grid_kernel, head):
    gradcheck_unroll("fused", head)
    gradcheck_unroll("fused", head, checkpoint_every=1)


def test_grid_program_bf16_falls_back_to_the_aten_path():
    # bf16 products are the ATen path's; asking for the grid program must not change them.
    case = to_dtype(odd_case("gaussian", 3, seed=3), torch.float32)
    lib = meta(case, lr=0.1, precision="bf16", step_kernel="library")
    grd = meta(case, lr=0.1, precision="bf16", step_kernel="grid")
    for a, b in zip(grd, lib):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,value,message", [
    ("step_kernel", "fast", r"step_kernel must be one of \('auto', 'grid', 'library'\), got 'fast'"),
    ("step_kernel", 1, r"step_kernel must be one of \('auto', 'grid', 'library'\), got 1"),
    ("grid_blocks", -1, r"grid_blocks must be an int >= 0 \(0: one per multiprocessor\), got -1"),
    ("grid_blocks", 1.5, r"grid_blocks must be an int >= 0"),
    ("grid_profile", "yes", r"grid_profile must be True or False, got 'yes'")])
def test_unknown_grid_settings_are_rejected(name, value, message):
    with pytest.raises(ValueError, match=message):
        meta(odd_case("tanh", 1, seed=0), lr=0.1, **{name: value})


# -- random shapes (hypothesis): the grid program agrees with the ATen path ---------------------


@st.composite
def grid_cases(draw):
    head = draw(st.sampled_from(["gaussian", "tanh"]))
    hidden = tuple(draw(st.lists(st.integers(1, 70), min_size=1, max_size=3)))
    spec = dict(obs_dim=draw(st.integers(1, 9)), act_dim=draw(st.integers(1, 4)), hidden=hidden, head=head,
                max_action=draw(st.sampled_from([1.0, 2.5])))
    steps = draw(st.integers(1, 4))
    case = make_case(spec, draw(st.integers(1, 70)), draw(st.integers(1, 9)), steps, torch.float64,
                     seed=draw(st.integers(0, 10_000)), noise=draw(st.booleans()))
    hyper = dict(lr=draw(st.sampled_from([0.05, 0.3])), momentum=draw(st.sampled_from([0.0, 0.5])),
                 weight_decay=draw(st.sampled_from([0.0, 1e-2])),
                 checkpoint_every=draw(st.sampled_from([None, 1, 2, 3])))
    return case, hyper


@settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(grid_cases())
def test_grid_program_random_shapes_match_the_aten_path(args):
    # Widths and row counts from 1 (a single row, a one-unit layer, one action) to past two tiles.
    case, hyper = args
    lib = meta(case, step_kernel="library", **hyper)
    grd = meta(case, step_kernel="grid", **hyper)
    for g, w in zip(grd, lib):
        assert g.shape == w.shape and rel_err(g, w) <= 1e-10, (rel_err(g, w), hyper)
