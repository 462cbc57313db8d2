"""Property tests (hypothesis) of the core ops' input handling, for both backends.

Every input either raises a ``ValueError`` whose message names the offending argument, or gives
the right answer: the fused result equals the reference result (float64), a non-contiguous input
gives the same result as its contiguous copy. Random small problems: shapes (0-size and
mismatched included), dtypes, layouts, NaN/Inf, noise shapes, hyper-parameters,
``requires_grad`` combinations.
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import obd_fast
from helpers import make_case

BACKENDS = ["reference"] + (["fused"] if obd_fast.fused_available() else [])
EXAMPLES = 40  # per property (per parametrization for the families below)
PROPS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
FEW = settings(PROPS, max_examples=15)  # per parametrization of a family

OPS = ("unroll_bc", "weighted_bc_loss", "meta_gradient", "policy_forward")
# where each op takes each tensor argument from in a case (see case_args)
TENSOR_ARGS = {
    "unroll_bc": ("theta0", "syn_obs", "syn_act", "noise"),
    "weighted_bc_loss": ("theta", "obs", "target", "weight", "noise"),
    "meta_gradient": ("theta0", "syn_obs", "syn_act", "obs", "target", "weight", "inner_noise", "outer_noise"),
    "policy_forward": ("theta", "obs", "noise"),
}
# a row count is set by its leader: resizing the leader's rows makes its followers mismatch
LEADERS = {"syn_obs": ("syn_act", "noise", "inner_noise"), "obs": ("target", "weight", "noise", "outer_noise")}


# -- cases -------------------------------------------------------------------------------------

@st.composite
def cases(draw, dtypes=(torch.float32, torch.float64)):
    head = draw(st.sampled_from(["gaussian", "tanh"]))
    spec_kw = dict(obs_dim=draw(st.integers(1, 4)), act_dim=draw(st.integers(1, 3)),
                   hidden=tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))), head=head,
                   max_action=draw(st.sampled_from([1.0, 2.5])))
    n, b, steps = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(dtypes))
    with_noise = head == "gaussian" and draw(st.booleans() | st.just(True))
    return make_case(spec_kw, n, b, steps, dtype, seed=draw(st.integers(0, 2**16)), noise=with_noise)


def case_args(op, c):
    """Keyword arguments of ``op`` for case ``c``."""
    if op == "unroll_bc":
        return dict(theta0=c["theta0"], syn_obs=c["syn_obs"], syn_act=c["syn_act"], spec=c["spec"],
                    steps=c["steps"], lr=0.1, noise=c["inner_noise"])
    if op == "weighted_bc_loss":
        return dict(theta=c["theta0"], spec=c["spec"], obs=c["obs"], target=c["target"], weight=c["weight"],
                    noise=c["outer_noise"])
    if op == "meta_gradient":
        return dict(theta0=c["theta0"], syn_obs=c["syn_obs"], syn_act=c["syn_act"], spec=c["spec"], obs=c["obs"],
                    target=c["target"], weight=c["weight"], steps=c["steps"], lr=0.1, inner_noise=c["inner_noise"],
                    outer_noise=c["outer_noise"])
    return dict(theta=c["theta0"], obs=c["obs"], spec=c["spec"], noise=c["outer_noise"])


def run(op, kw, backend):
    out = getattr(obd_fast, op)(**kw, backend=backend)
    return out if isinstance(out, tuple) else (out,)


def names(message, *args):
    """Does the message name one of ``args`` as a word (``obs`` is not ``syn_obs``)?"""
    return any(re.search(rf"(?<![\w]){re.escape(a)}(?![\w])", message) for a in args)


def assert_close(got, want, rtol=1e-9, atol=1e-12):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g.detach(), w.detach(), rtol=rtol, atol=atol)


# -- bad tensors -------------------------------------------------------------------------------

BAD_DTYPES = [torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool, torch.complex64, "other_float"]
MUTATIONS = ["drop_dim", "add_dim", "resize", "empty", "dtype", "non_finite", "not_a_tensor", "sparse", "meta"]


def mutate(x, kind, draw):
    """A bad version of tensor ``x`` and the names the error may give (None: only x's own name)."""
    if kind == "drop_dim":
        return x[..., 0]
    if kind == "add_dim":
        return x.unsqueeze(draw(st.integers(0, x.dim())))
    if kind == "resize":
        dim = draw(st.integers(0, x.dim() - 1))
        shape = list(x.shape)
        shape[dim] += draw(st.sampled_from([-1, 1, 2]))  # may reach 0
        return torch.randn(shape, dtype=torch.float64).to(x.dtype)
    if kind == "empty":
        dim = draw(st.integers(0, x.dim() - 1))
        return x.narrow(dim, 0, 0)
    if kind == "dtype":
        dt = draw(st.sampled_from(BAD_DTYPES))
        if dt == "other_float":
            dt = torch.float64 if x.dtype == torch.float32 else torch.float32
        return x.to(dt)
    if kind == "non_finite":
        bad = x.clone()
        bad.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"),
                                                                                  -float("inf")]))
        return bad
    if kind == "not_a_tensor":
        return draw(st.sampled_from([x.tolist(), x.numpy(), 1.0, "tensor"]))
    if kind == "sparse":
        return x.to_sparse()
    return x.to("meta")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", MUTATIONS)
@FEW
@given(data=st.data(), c=cases())
def test_bad_tensor_raises_value_error_naming_it(backend, kind, data, c):
    op = data.draw(st.sampled_from(OPS))
    kw = case_args(op, c)
    present = [a for a in TENSOR_ARGS[op] if kw[a] is not None]
    arg = data.draw(st.sampled_from(present))
    kw[arg] = mutate(kw[arg], kind, data.draw)
    allowed = {arg}
    if kind == "resize" or kind == "drop_dim" or kind == "empty":  # a leader's row count moves its followers
        allowed |= set(LEADERS.get(arg, ()))
    if kind == "dtype" and arg.startswith("theta"):  # the others then disagree with theta
        allowed |= set(TENSOR_ARGS[op])
    with pytest.raises(ValueError) as info:
        run(op, kw, backend)
    assert names(str(info.value), *allowed), (op, arg, kind, str(info.value))


@pytest.mark.parametrize("backend", BACKENDS)
@PROPS
@given(data=st.data(), c=cases())
def test_bad_noise_raises_value_error_naming_it(backend, data, c):
    op = data.draw(st.sampled_from(("unroll_bc", "meta_gradient", "weighted_bc_loss")))
    kw = case_args(op, c)
    spec, steps, n = c["spec"], c["steps"], c["syn_obs"].shape[0]
    noise_arg = {"unroll_bc": "noise", "meta_gradient": "inner_noise", "weighted_bc_loss": "noise"}[op]
    outer = op == "weighted_bc_loss"
    good = torch.randn((c["obs"].shape[0], spec.act_dim) if outer else (steps, n, spec.act_dim),
                       dtype=torch.float64).to(c["theta0"].dtype)
    kinds = ["wrong_shape"] if outer else ["wrong_shape", "list_too_short", "list_too_long", "list_bad_item",
                                           "list_of_numbers"]
    kind = data.draw(st.sampled_from(kinds))
    if spec.head == "tanh":  # any noise at all is wrong for the tanh head
        bad = good if kind == "wrong_shape" else list(good)
    elif kind == "wrong_shape":
        shape = list(good.shape)
        dim = data.draw(st.integers(0, len(shape) - 1))
        shape[dim] += data.draw(st.sampled_from([-1, 1]))
        bad = torch.zeros(shape, dtype=good.dtype)
    elif kind == "list_too_short":
        bad = list(good)[:-1]
    elif kind == "list_too_long":
        bad = list(good) + [good[0]]
    elif kind == "list_bad_item":
        t = data.draw(st.integers(0, steps - 1))
        bad = list(good)
        bad[t] = data.draw(st.sampled_from([bad[t][:-1], bad[t].half(), bad[t][:, :1].expand(n, spec.act_dim + 1)]))
    else:
        bad = [float(x) for x in range(steps)]
    kw[noise_arg] = bad
    with pytest.raises(ValueError) as info:
        run(op, kw, backend)
    assert names(str(info.value), noise_arg) or re.search(rf"{noise_arg}\[\d+\]", str(info.value)), str(info.value)


# -- valid inputs in odd forms -----------------------------------------------------------------

def odd_layout(x, kind):
    """The same values as ``x`` in a non-contiguous (or otherwise unusual) tensor."""
    if kind == "transposed" and x.dim() >= 2:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "strided":
        big = torch.zeros((2 * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype)
        big[::2] = x
        return big[::2]
    if kind == "column_of_wider":
        wide = torch.zeros(tuple(x.shape[:-1]) + (x.shape[-1] + 3,), dtype=x.dtype) if x.dim() else x
        wide[..., 1:1 + x.shape[-1]] = x
        return wide[..., 1:1 + x.shape[-1]]
    return x


@PROPS
@given(data=st.data(), c=cases())
def test_non_contiguous_inputs_give_the_same_result(data, c):
    op = data.draw(st.sampled_from(OPS))
    kw = case_args(op, c)
    want = {b: run(op, kw, b) for b in BACKENDS}
    odd = dict(kw)
    for a in TENSOR_ARGS[op]:
        if odd[a] is not None and data.draw(st.booleans()):
            odd[a] = odd_layout(odd[a], data.draw(st.sampled_from(["transposed", "strided", "column_of_wider"])))
    if op != "weighted_bc_loss" and op != "policy_forward" and odd.get("noise", odd.get("inner_noise")) is not None \
            and data.draw(st.booleans()):
        key = "noise" if op == "unroll_bc" else "inner_noise"
        odd[key] = list(odd[key])  # one tensor per step: the same thing
    for b in BACKENDS:
        got = run(op, odd, b)
        if b == "fused":  # the compiled ops copy to contiguous memory first: bitwise the same
            assert all(torch.equal(g, w) for g, w in zip(got, want[b]))
        else:
            f32 = c["theta0"].dtype == torch.float32
            assert_close(got, want[b], rtol=1e-5 if f32 else 1e-12, atol=1e-6 if f32 else 1e-14)
    if c["theta0"].dtype == torch.float64 and len(BACKENDS) == 2:
        assert_close(want["fused"], want["reference"])


# -- hyper-parameters --------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
# name: (strategy of valid values, invalid values)
HYPER = {
    "steps": (st.integers(1, 4) | st.sampled_from([np.int64(2), np.int32(3)]),
              [0, -1, 2.0, 2.5, True, "3", None, NAN, 2**63, np.float64(2.0)]),
    "lr": (st.floats(1e-3, 0.5) | st.sampled_from([1, np.float32(0.1), torch.tensor(0.05)]),
           [0.0, -0.1, NAN, INF, -INF, "0.1", True, None, 1j, torch.tensor([0.1, 0.2]), [0.1]]),
    "momentum": (st.floats(0.0, 0.9) | st.sampled_from([0, np.float64(0.5)]),
                 [-0.1, 1.0, 1.5, NAN, INF, "0.5", False, None]),
    "weight_decay": (st.floats(0.0, 0.1), [-1e-4, INF, NAN, "0", True]),
    "checkpoint_every": (st.none() | st.integers(1, 6) | st.just(np.int32(2)), [0, -1, 2.5, True, "2", 2.0]),
    "backend": (st.sampled_from(BACKENDS + ["auto"]), ["gpu", None, "FUSED", "cuda", ""]),
    "precision": (st.sampled_from(["native", "bf16", "tf32"]), ["fp8", None, "BF16", 16, ""]),
    "memory_budget": (st.none() | st.sampled_from([INF, 10**12, "1G", "inf"]), [0, -1, NAN, "lots", True, "12Q"]),
}
INVALID = [(name, value) for name, (_, bad) in HYPER.items() for value in bad]


def draw_hyper(data, c, op, p_invalid=0.0, forced=None):
    """Keyword arguments (case + hyper-parameters), the backend, and the names of invalid ones."""
    drawn, invalid = {}, set()
    for name, (valid, bad) in HYPER.items():
        if forced is not None and name == forced[0]:
            drawn[name] = forced[1]
            invalid.add(name)
        elif p_invalid and data.draw(st.floats(0, 1)) < p_invalid:
            drawn[name] = data.draw(st.sampled_from(bad))
            invalid.add(name)
        else:
            drawn[name] = data.draw(valid) if not (forced and name == "precision") else "native"
    kw = case_args(op, c)
    kw.update(drawn)
    noise_key = "noise" if op == "unroll_bc" else "inner_noise"
    if "steps" not in invalid and kw[noise_key] is not None and int(kw["steps"]) != c["steps"]:
        kw[noise_key] = torch.randn(int(kw["steps"]), *c["inner_noise"].shape[1:],
                                    dtype=torch.float64).to(c["theta0"].dtype)  # noise follows steps
    backend = kw.pop("backend")
    if "backend" not in invalid:  # precision's validity depends on the backend and the dtype
        resolved = ("fused" if "fused" in BACKENDS else "reference") if backend == "auto" else backend
        if "precision" not in invalid and not (kw["precision"] == "native" or (
                kw["precision"] == "bf16" and resolved == "fused" and c["theta0"].dtype == torch.float32)):
            invalid.add("precision")
    return kw, backend, invalid


@pytest.mark.parametrize("name,value", INVALID, ids=[f"{n}={v!r}"[:40] for n, v in INVALID])
@settings(PROPS, max_examples=2)
@given(data=st.data(), c=cases())
def test_each_invalid_hyperparameter_is_named(name, value, data, c):
    op = data.draw(st.sampled_from(("unroll_bc", "meta_gradient")))
    kw, backend, invalid = draw_hyper(data, c, op, forced=(name, value))
    assert invalid == {name}
    with pytest.raises(ValueError) as info:
        run(op, kw, backend)
    assert names(str(info.value), name), str(info.value)


@PROPS
@given(data=st.data(), c=cases())
def test_mixed_hyperparameters(data, c):
    """Any mix of valid and invalid values: a ValueError naming an invalid one, else a finite result."""
    op = data.draw(st.sampled_from(("unroll_bc", "meta_gradient")))
    kw, backend, invalid = draw_hyper(data, c, op, p_invalid=0.15)
    if invalid:
        with pytest.raises(ValueError) as info:
            run(op, kw, backend)
        assert names(str(info.value), *invalid), (invalid, str(info.value))
    else:
        assert all(torch.isfinite(g).all() for g in run(op, kw, backend))


@PROPS
@given(data=st.data(), c=cases(dtypes=(torch.float64,)))
def test_valid_hyperparameters_fused_equals_reference(data, c):
    op = data.draw(st.sampled_from(("unroll_bc", "meta_gradient")))
    kw, backend, invalid = draw_hyper(data, c, op)
    if invalid:  # only bf16/tf32 precision with float64 tensors: covered above
        kw["precision"] = "native"
    got = {b: run(op, kw, b) for b in BACKENDS}
    assert all(torch.isfinite(g).all() for g in got[BACKENDS[0]])
    if len(BACKENDS) == 2:
        assert_close(got["fused"], got["reference"])


# -- requires_grad -----------------------------------------------------------------------------

@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs the compiled extension")
@PROPS
@given(data=st.data(), c=cases(dtypes=(torch.float64,)))
def test_requires_grad_combinations_agree(data, c):
    """Any subset of inputs requiring grad: the same output and the same .grad (or None) per input
    on both backends; the noise is a constant (no gradient) on both."""
    op = data.draw(st.sampled_from(("unroll_bc", "weighted_bc_loss")))
    base = case_args(op, c)
    flags = {a: data.draw(st.booleans()) for a in TENSOR_ARGS[op] if base[a] is not None}
    ckpt = data.draw(st.none() | st.integers(1, 3)) if op == "unroll_bc" else None
    results = {}
    for b in BACKENDS:
        kw = dict(base)
        leaves = {a: base[a].detach().clone().requires_grad_(f) for a, f in flags.items()}
        kw.update(leaves)
        if ckpt is not None and b == "fused":
            kw["checkpoint_every"] = ckpt
        (out,) = run(op, kw, b)
        wants_grad = any(f for a, f in flags.items() if "noise" not in a)
        assert out.requires_grad == wants_grad, (b, flags)
        if wants_grad:
            v = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
            (out * v).sum().backward()
        results[b] = (out.detach(), {a: t.grad for a, t in leaves.items()})
    (out_f, grads_f), (out_r, grads_r) = results["fused"], results["reference"]
    assert_close((out_f,), (out_r,))
    for a in flags:
        assert (grads_f[a] is None) == (grads_r[a] is None), (a, flags)
        if grads_f[a] is not None:
            assert_close((grads_f[a],), (grads_r[a],))
        if "noise" in a or not flags[a]:
            assert grads_f[a] is None


# -- one contract, two statements of it: the compiled ops (csrc/validate.cpp) and obd_fast.checks

def messages(op, kw):
    """The ValueError message of each backend for the same call."""
    out = []
    for b in BACKENDS:
        with pytest.raises(ValueError) as info:
            run(op, kw, b)
        out.append(str(info.value))
    return out


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs the compiled extension")
@pytest.mark.parametrize("kind", MUTATIONS)
@FEW
@given(data=st.data(), c=cases())
def test_both_backends_refuse_a_bad_tensor_in_the_same_words(kind, data, c):
    op = data.draw(st.sampled_from(OPS))
    kw = case_args(op, c)
    arg = data.draw(st.sampled_from([a for a in TENSOR_ARGS[op] if kw[a] is not None]))
    kw[arg] = mutate(kw[arg], kind, data.draw)
    fused_message, reference_message = messages(op, kw)
    assert fused_message == reference_message


INVALID_VALUES = [(name, value) for name, value in INVALID if name != "backend"]  # (backend: the one each runs)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs the compiled extension")
@pytest.mark.parametrize("name,value", INVALID_VALUES, ids=[f"{n}={v!r}"[:40] for n, v in INVALID_VALUES])
@settings(PROPS, max_examples=2)
@given(data=st.data(), c=cases())
def test_both_backends_refuse_a_bad_hyperparameter_in_the_same_words(name, value, data, c):
    op = data.draw(st.sampled_from(("unroll_bc", "meta_gradient")))
    kw, _, _ = draw_hyper(data, c, op, forced=(name, value))
    fused_message, reference_message = messages(op, kw)
    assert fused_message == reference_message


# -- the compiled ops' own wrappers, in a subprocess (a wrong shape there used to read past the
#    end of the buffer; a crash must not take the test session down) ----------------------------

@pytest.mark.skipif(not obd_fast.fused_available(), reason="needs the compiled extension")
def test_fused_wrappers_refuse_bad_noise_and_weight_in_a_subprocess():
    script = textwrap.dedent("""
        import torch, obd_fast
        from obd_fast import fused
        spec = obd_fast.PolicySpec(3, 2, (4,))
        th = spec.init_params(dtype=torch.float64)
        S, A = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 2, dtype=torch.float64)
        cfg = fused.InnerConfig(3, 0.1)
        f64 = dict(dtype=torch.float64)
        cases = {
            "noise_rows": lambda: fused.unroll_bc(th, S, A, spec, torch.randn(1, 1, 2, **f64), cfg),
            "noise_huge_gap": lambda: fused.unroll_bc(th, S, A, spec, torch.randn(3, 1, 2, **f64), cfg),
            "noise_dtype": lambda: fused.unroll_bc(th, S, A, spec, torch.randn(3, 5, 2), cfg),
            "weight_short": lambda: fused.weighted_bc_loss(th, spec, S, A, torch.ones(1, **f64), None, "native"),
            "outer_noise_short": lambda: fused.weighted_bc_loss(th, spec, S, A, None, torch.ones(1, 2, **f64),
                                                                "native"),
            "meta_weight": lambda: fused.meta_gradient(th, S, A, spec, S, A, torch.ones(2, **f64), None, None, cfg),
            "meta_outer_noise": lambda: fused.meta_gradient(th, S, A, spec, S, A, None, None,
                                                            torch.ones(5, 1, **f64), cfg),
            "forward_noise": lambda: fused.policy_forward(th, S, spec, torch.ones(2, 2, **f64)),
        }
        for name, call in cases.items():
            try:
                call()
                print(name, "returned")
            except ValueError as exc:
                print(name, "ValueError", exc)
    """)
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 8 and all(" ValueError " in line for line in lines), proc.stdout
