"""The compiled ops as PyTorch custom ops (csrc/ops.cpp, obd_fast/fused.py): readable schemas,
kernels registered per device, torch.library.opcheck of every op (both heads, float32 / float64,
odd shapes, momentum and weight decay), FakeTensorMode and the meta device, torch.compile, the
kernel choices as keyword arguments with environment defaults read once, and meta_gradient's
dH/d theta0 against the reference backend and the float64 unroll."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import obd_fast
from obd_fast import fused
from helpers import (GRID, case_meta_gradient, indep_forward, make_case, odd_case, plain_unroll, rel_err, to_dtype,
                     weighted_mse)

pytestmark = [pytest.mark.skipif(not obd_fast.fused_available(), reason=f"no extension: {obd_fast.build_info()}"),
              pytest.mark.usefixtures("one_thread")]

OPS = ("unroll_forward", "unroll_backward", "weighted_loss", "meta_gradient", "policy_forward")
ODD = dict(obs_dim=5, act_dim=2, hidden=(13, 9), max_action=1.3)


def op(name):
    return getattr(torch.ops.obd_fast, name).default


# -- schemas and registrations -------------------------------------------------------------------

def test_schemas_name_every_argument_and_take_str_choices():
    for name in OPS:
        schema = op(name)._schema
        args = {a.name: str(a.type) for a in schema.arguments}
        for field in ("obs_dim", "act_dim", "hidden", "head", "max_action"):
            assert field in args, (name, field)
        assert args["head"] == "str"
        assert all(r.name for r in schema.returns), (name, "unnamed outputs")
        if name != "policy_forward":
            assert args["precision"] == "str"
        if name in ("unroll_forward", "unroll_backward", "meta_gradient"):
            assert (args["step_kernel"], args["bf16_records"], args["grid_blocks"], args["grid_profile"],
                    args["checkpoint_every"]) == ("str", "str", "int", "bool", "Optional[int]")
    assert [r.name for r in op("meta_gradient")._schema.returns] == ["loss", "grad_syn_obs", "grad_syn_act",
                                                                     "grad_theta0"]


def test_kernels_are_registered_per_device():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    cuda = "cuda" in obd_fast.build_info()
    for name in OPS:
        q = f"obd_fast::{name}"
        assert has(q, "CPU") and has(q, "Meta") and has(q, "Autograd"), name
        assert has(q, "CUDA") == cuda, name
        assert not has(q, "CompositeExplicitAutograd") and not has(q, "CompositeImplicitAutograd"), name


# -- opcheck -------------------------------------------------------------------------------------

CONFIGS = [dict(momentum=0.0, weight_decay=0.0, checkpoint_every=None),
           dict(momentum=0.9, weight_decay=1e-3, checkpoint_every=2)]


def inputs(head, dtype, steps=3, seed=0, requires_grad=False, shape=ODD, n=7, b=11):
    c = make_case(dict(shape, head=head), n, b, steps, dtype, seed)
    for k in ("theta0", "syn_obs", "syn_act", "obs", "target", "weight"):
        c[k] = c[k].requires_grad_(requires_grad)
    return c


def inner_kwargs(c, **over):
    kw = dict(CONFIGS[0], lr=0.1, precision="native")
    kw.update(over)
    cfg = fused.InnerConfig(c["steps"], kw.pop("lr"), kw.pop("momentum"), kw.pop("weight_decay"),
                            kw.pop("checkpoint_every"), kw.pop("precision"), fused.KernelOptions(**kw))
    return cfg.op_kwargs(c["spec"])


@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "momentum_wd_ckpt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("head", ["gaussian", "tanh"])
def test_opcheck_unroll_forward_and_backward(head, dtype, config):
    c = inputs(head, dtype, requires_grad=True)
    kw = inner_kwargs(c, **config)
    torch.library.opcheck(op("unroll_forward"), (c["theta0"], c["syn_obs"], c["syn_act"], c["inner_noise"]), kw)
    tape = op("unroll_forward")(c["theta0"].detach(), c["syn_obs"].detach(), c["syn_act"].detach(),
                                c["inner_noise"], **kw)[1:]
    grad = torch.randn(c["spec"].num_params, dtype=dtype)
    torch.library.opcheck(op("unroll_backward"), (grad, *tape, c["syn_obs"].detach(), c["syn_act"].detach(),
                                                  c["inner_noise"]), kw)


@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "momentum_wd_ckpt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("head", ["gaussian", "tanh"])
def test_opcheck_meta_gradient(head, dtype, config):
    c = inputs(head, dtype)
    torch.library.opcheck(op("meta_gradient"), (c["theta0"], c["syn_obs"], c["syn_act"], c["inner_noise"], c["obs"],
                                                c["target"], c["weight"], c["outer_noise"]), inner_kwargs(c, **config))


@pytest.mark.parametrize("kernel", [dict(precision="bf16"), dict(precision="bf16", bf16_records="float"),
                                    dict(step_kernel="grid", momentum=0.9, checkpoint_every=2)],
                         ids=["bf16_compact", "bf16_float_records", "grid_program"])
def test_opcheck_other_kernels(kernel):
    # Compact bf16 records are another tape size: the fake implementation must agree.
    c = inputs("gaussian", torch.float32, requires_grad=True, shape=dict(ODD, hidden=(33, 17)), n=9)
    kw = inner_kwargs(c, **kernel)
    torch.library.opcheck(op("unroll_forward"), (c["theta0"], c["syn_obs"], c["syn_act"], c["inner_noise"]), kw)
    detached = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in c.items()}
    torch.library.opcheck(op("meta_gradient"), tuple(detached[k] for k in (
        "theta0", "syn_obs", "syn_act", "inner_noise", "obs", "target", "weight", "outer_noise")), kw)


@pytest.mark.parametrize("wanted", [(False, False, False), (True, False, True), (True, True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("head", ["gaussian", "tanh"])
def test_opcheck_weighted_loss_and_policy_forward(head, dtype, wanted):
    c = inputs(head, dtype)
    c["theta0"].requires_grad_(True)
    for t, w in zip((c["obs"], c["target"], c["weight"]), wanted):
        t.requires_grad_(w)
    flags = dict(zip(("grad_obs", "grad_target", "grad_weight"), wanted))
    torch.library.opcheck(op("weighted_loss"), (c["theta0"], c["obs"], c["target"], c["weight"], c["outer_noise"]),
                          dict(fused.policy_kwargs(c["spec"]), precision="native", **flags))
    torch.library.opcheck(op("policy_forward"), (c["theta0"].detach(), c["obs"].detach(), c["outer_noise"]),
                          fused.policy_kwargs(c["spec"]))


def test_outputs_alias_neither_inputs_nor_each_other():
    c = inputs("gaussian", torch.float64)
    out = op("unroll_forward")(c["theta0"], c["syn_obs"], c["syn_act"], c["inner_noise"], **inner_kwargs(c))
    ins = [c[k] for k in ("theta0", "syn_obs", "syn_act", "inner_noise")]
    ptrs = [t.untyped_storage().data_ptr() for t in (*out, *ins) if t.numel() > 0]
    assert len(ptrs) == len(set(ptrs))
    assert torch.equal(out[0], out[1][-1])  # theta_T is a copy of the tape's last theta


def test_backward_of_the_backward_raises():
    # unroll_backward and the fused loss's gradients are not differentiable again: a second
    # derivative raises instead of dropping terms.
    c = inputs("gaussian", torch.float64, requires_grad=True)
    theta_T = obd_fast.unroll_bc(c["theta0"], c["syn_obs"], c["syn_act"], c["spec"], steps=3, lr=0.1,
                                 noise=c["inner_noise"], backend="fused")
    (g,) = torch.autograd.grad(theta_T.square().sum(), c["syn_obs"], create_graph=True)
    with pytest.raises(RuntimeError, match="unroll_backward"):
        g.sum().backward()
    loss = obd_fast.weighted_bc_loss(c["theta0"], c["spec"], c["obs"], c["target"], backend="fused")
    (g,) = torch.autograd.grad(loss, c["theta0"], create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|differentiate twice"):
        g.sum().backward()


def test_weighted_loss_asked_for_too_few_gradients_says_so():
    c = inputs("tanh", torch.float64)
    c["obs"].requires_grad_(True)
    out = op("weighted_loss")(c["theta0"], c["obs"], c["target"], None, None, **fused.policy_kwargs(c["spec"]))
    with pytest.raises(RuntimeError, match="grad_obs=False"):
        out[0].backward()


# -- tracing: FakeTensorMode, the meta device, torch.compile ---------------------------------------

def problem(spec, n, b, steps, **opts):
    """Inputs of a meta-gradient problem, as torch.empty (no values needed)."""
    e = lambda *shape: torch.empty(*shape, **opts)  # noqa: E731
    return dict(theta0=e(spec.num_params), syn_obs=e(n, spec.obs_dim), syn_act=e(n, spec.act_dim),
                obs=e(b, spec.obs_dim), target=e(b, spec.act_dim), weight=e(b),
                inner_noise=e(steps, n, spec.act_dim), outer_noise=e(b, spec.act_dim))


def check_shapes(spec, x, steps, **kw):
    """unroll_bc (and its backward) and meta_gradient on a problem far too big to run: only shapes."""
    theta0 = x["theta0"].requires_grad_(True)
    theta_T = obd_fast.unroll_bc(theta0, x["syn_obs"], x["syn_act"], spec, steps=steps, lr=0.1, momentum=0.9,
                                 noise=x["inner_noise"], backend="fused", **kw)
    assert theta_T.shape == (spec.num_params,) and theta_T.requires_grad
    theta_T.sum().backward()
    assert theta0.grad.shape == theta0.shape
    out = obd_fast.meta_gradient(x["theta0"].detach(), x["syn_obs"], x["syn_act"], spec, x["obs"], x["target"],
                                 x["weight"], steps=steps, lr=0.1, inner_noise=x["inner_noise"],
                                 outer_noise=x["outer_noise"], backend="fused", return_theta0_grad=True, **kw)
    assert [tuple(t.shape) for t in out] == [(), tuple(x["syn_obs"].shape), tuple(x["syn_act"].shape),
                                             (spec.num_params,)]
    return out


# The paper's network, N = 20k rows, 10k inner steps: a real tape would take ~10 TB.
BIG = dict(n=20000, b=50000, steps=10000)


def test_fake_tensor_mode_gives_shapes_without_running_kernels():
    spec = obd_fast.PolicySpec(11, 3)
    with FakeTensorMode():
        x = problem(spec, BIG["n"], BIG["b"], BIG["steps"])
        out = check_shapes(spec, x, BIG["steps"], memory_budget=float("inf"))
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in out)


def test_meta_tensors_give_shapes_without_running_kernels():
    spec = obd_fast.PolicySpec(11, 3, head="tanh")
    x = problem(spec, BIG["n"], BIG["b"], BIG["steps"], device="meta", dtype=torch.float64)
    x["inner_noise"] = x["outer_noise"] = None
    for ck in (None, 100):
        out = check_shapes(spec, x, BIG["steps"], checkpoint_every=ck)
        assert all(t.device.type == "meta" and t.dtype == torch.float64 for t in out)


def test_meta_and_cpu_tensors_together_are_refused():
    spec = obd_fast.PolicySpec(11, 3)
    x = problem(spec, 4, 5, 2)
    with pytest.raises(ValueError, match="syn_act is on meta but theta0 is on cpu"):
        obd_fast.unroll_bc(x["theta0"], x["syn_obs"], x["syn_act"].to("meta"), spec, steps=2, lr=0.1,
                           noise=x["inner_noise"], backend="fused")


def compiled_vs_eager(backend):
    """Loss and gradients of unroll_bc followed by a loss written in PyTorch, eager and compiled."""
    case = make_case(dict(ODD, head="gaussian"), 7, 11, 4, torch.float64, seed=0)
    spec = case["spec"]

    def f(theta0, syn_obs, syn_act, noise, obs, target, weight, outer_noise):
        theta_T = obd_fast.unroll_bc(theta0, syn_obs, syn_act, spec, steps=4, lr=0.1, momentum=0.9,
                                     weight_decay=1e-3, noise=noise, checkpoint_every=3)
        return weighted_mse(indep_forward(spec, theta_T, obs, outer_noise), target, weight)

    def run(fn):
        leaves = [case[k].clone().requires_grad_() for k in ("theta0", "syn_obs", "syn_act")]
        loss = fn(*leaves, case["inner_noise"], case["obs"], case["target"], case["weight"], case["outer_noise"])
        loss.backward()
        return [loss.detach()] + [t.grad for t in leaves]

    torch._dynamo.reset()
    return run(f), run(torch.compile(f, fullgraph=True, backend=backend))


def test_torch_compile_fullgraph_matches_eager():
    # aot_eager: dynamo and AOT autograd trace the ops through their fake implementations and
    # registered autograd; the same kernels then run, so the numbers are the same bits.
    eager, compiled = compiled_vs_eager("aot_eager")
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)
    case = odd_case("gaussian", 4, seed=1)
    names = ("theta0", "syn_obs", "syn_act", "spec", "obs", "target", "weight", "inner_noise", "outer_noise")
    meta = lambda *a: obd_fast.meta_gradient(*a[:7], steps=4, lr=0.1, momentum=0.9, inner_noise=a[7],  # noqa: E731
                                             outer_noise=a[8], return_theta0_grad=True)
    args = [case[k] for k in names]
    for e, c in zip(meta(*args), torch.compile(meta, fullgraph=True, backend="aot_eager")(*args)):
        assert torch.equal(e, c)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    # Inductor also generates the PyTorch loss's code: the same to rounding.
    eager, compiled = compiled_vs_eager("inductor")
    for e, c in zip(eager, compiled):
        assert rel_err(c, e) <= 1e-13


# -- kernel choices: keyword arguments, environment defaults read once ---------------------------

def test_kernel_choices_default_to_the_environment_read_at_import():
    script = textwrap.dedent("""
        import os, sys, torch
        sys.path.insert(0, "tests")
        import obd_fast
        from helpers import odd_case, case_meta_gradient
        case = odd_case("tanh", 4, seed=3)
        run = lambda **kw: case_meta_gradient(case, obd_fast.meta_gradient, backend="fused", lr=0.1, **kw)
        default, grid, library = run(), run(step_kernel="grid"), run(step_kernel="library")
        same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))
        os.environ["OBD_FAST_STEP_KERNEL"] = "library"  # read once: too late now
        print(same(default, grid), same(default, library), same(run(), grid))
    """)
    out = _python(script, OBD_FAST_STEP_KERNEL="grid")
    assert out.stdout.split() == ["True", "False", "True"], out.stderr[-2000:]


def test_malformed_environment_default_is_refused_when_used():
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, "tests")
        import obd_fast
        from helpers import odd_case, case_meta_gradient
        case = odd_case("tanh", 2, seed=0)
        case_meta_gradient(case, obd_fast.meta_gradient, backend="fused", lr=0.1, step_kernel="library",
                           grid_blocks=0, grid_profile=False)  # every choice given: no default used
        try:
            case_meta_gradient(case, obd_fast.meta_gradient, backend="fused", lr=0.1)
        except ValueError as exc:
            print(exc)
    """)
    out = _python(script, OBD_FAST_GRID_BLOCKS="many")
    assert "OBD_FAST_GRID_BLOCKS must be an integer >= 0" in out.stdout, out.stderr[-2000:]


def _python(script: str, **env):
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]), **env)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root,
                          env=env)


# -- meta_gradient's dH/d theta0 -----------------------------------------------------------------

def plain_theta0_grad(case, **hyper):
    """dH/d theta0 by the float64 create_graph unroll (helpers.plain_unroll) and autograd."""
    f64 = lambda t: None if t is None else t.detach().to(torch.float64)  # noqa: E731
    spec, theta0 = case["spec"], f64(case["theta0"]).requires_grad_(True)
    theta_T = plain_unroll(spec, theta0, f64(case["syn_obs"]), f64(case["syn_act"]), steps=case["steps"],
                           inner_noise=f64(case["inner_noise"]), **hyper)
    loss = weighted_mse(indep_forward(spec, theta_T, f64(case["obs"]), f64(case["outer_noise"])), f64(case["target"]),
                        f64(case["weight"]))
    return torch.autograd.grad(loss, theta0)[0]


@pytest.mark.parametrize("head,momentum,wd,steps", GRID[::2])
def test_meta_gradient_theta0_grad_matches_reference_and_plain_unroll(head, momentum, wd, steps):
    case = odd_case(head, steps, seed=steps + 20)
    hyper = dict(lr=0.1, momentum=momentum, weight_decay=wd)
    want = plain_theta0_grad(case, **hyper)
    three = case_meta_gradient(case, obd_fast.meta_gradient, backend="fused", **hyper)
    outs = {b: case_meta_gradient(case, obd_fast.meta_gradient, backend=b, return_theta0_grad=True, **hyper)
            for b in ("fused", "reference")}
    assert len(three) == 3 and all(torch.equal(a, b) for a, b in zip(three, outs["fused"]))
    for b, out in outs.items():
        assert len(out) == 4 and out[3].shape == case["theta0"].shape
        assert rel_err(out[3], want) <= 1e-9, b
    ckpt = case_meta_gradient(case, obd_fast.meta_gradient, backend="fused", return_theta0_grad=True,
                              checkpoint_every=2, **hyper)
    assert torch.equal(ckpt[3], outs["fused"][3])  # checkpointing changes no bit of it either


def test_meta_gradient_theta0_grad_is_unroll_bc_backward():
    # The same number as backpropagating the fused loss through the fused unroll, and in float32
    # within float32 rounding of float64.
    case = odd_case("gaussian", 5, seed=7)
    c, hyper = case, dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    theta0 = c["theta0"].clone().requires_grad_(True)
    theta_T = obd_fast.unroll_bc(theta0, c["syn_obs"], c["syn_act"], c["spec"], steps=5, noise=c["inner_noise"],
                                 backend="fused", **hyper)
    obd_fast.weighted_bc_loss(theta_T, c["spec"], c["obs"], c["target"], c["weight"], c["outer_noise"],
                              backend="fused").backward()
    got = case_meta_gradient(case, obd_fast.meta_gradient, backend="fused", return_theta0_grad=True, **hyper)[3]
    assert rel_err(got, theta0.grad) <= 1e-12
    got32 = case_meta_gradient(to_dtype(case, torch.float32), obd_fast.meta_gradient, backend="fused",
                               return_theta0_grad=True, **hyper)[3]
    assert got32.dtype == torch.float32 and rel_err(got32, theta0.grad) <= 1e-4
