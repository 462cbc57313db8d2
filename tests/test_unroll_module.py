"""PolicySpec.from_module and obd_fast.unroll_module: a user's own policy module, unrolled exactly.

The modules are stand-ins with the official OBD networks' parameter structure (a CORL-style
tanh-Gaussian actor, DetContPolicy) and a nested nn.Sequential; every gradient (synthetic set,
the module's initial parameters, theta_T) is checked in float64 against the independent unroll of
tests/helpers.py, which reads theta from the modules by hand, not through obd_fast's layout.
"""
import numpy as np
import pytest
import torch
from torch import nn

import obd_fast
from benchmarks.obd_standin import StandInDetContPolicy, StandInGaussianPolicy
from helpers import indep_forward, plain_unroll, rel_err
from obd_fast import PolicySpec

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-9
OBS, ACT, HIDDEN, N, B, STEPS = 5, 2, (13, 9), 7, 11, 4
BACKENDS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(
    not obd_fast.fused_available(), reason=f"no extension: {obd_fast.build_info()}"))]
KINDS = ("gaussian", "deterministic", "sequential")


def make_module(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "gaussian":
        module = StandInGaussianPolicy(OBS, ACT, 1.3, HIDDEN)
    elif kind == "deterministic":
        module = StandInDetContPolicy(OBS, ACT, HIDDEN)
    else:  # nested containers, the tanh as a module
        module = nn.Sequential(nn.Linear(OBS, 13), nn.ReLU(), nn.Sequential(nn.Linear(13, 9), nn.ReLU()),
                               nn.Linear(9, ACT), nn.Tanh())
    module = module.double()
    with torch.no_grad():  # nonzero biases, scalars off their init
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def expected_spec(kind: str) -> PolicySpec:
    if kind == "gaussian":
        return PolicySpec(OBS, ACT, HIDDEN, head="gaussian", max_action=1.3)
    return PolicySpec(OBS, ACT, HIDDEN, head="tanh")


def theta_by_hand(kind: str, module: nn.Module):
    """The module's parameters in the flat layout's order, picked by attribute (not by obd_fast)."""
    if kind == "gaussian":
        linears = [module.base_network[i] for i in (0, 2, 4)]
        extra = [module.log_std_multiplier.constant, module.log_std_offset.constant]
    elif kind == "deterministic":
        linears, extra = [module.base.seq_fcs[0], module.base.seq_fcs[2], module.last], []
    else:
        linears, extra = [module[0], module[2][0], module[3]], []
    return [p for lin in linears for p in (lin.weight, lin.bias)] + extra


def call(unrolled_or_module, obs, kind):
    out = unrolled_or_module(obs)
    return out[0] if kind == "gaussian" else out


# -- from_module -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_from_module_reads_the_spec_and_the_layout(kind):
    from obd_fast.module_spec import module_layout

    module = make_module(kind)
    spec = PolicySpec.from_module(module)
    assert spec == expected_spec(kind)
    layout = module_layout(module)
    theta = layout.flatten(module)
    assert torch.equal(theta, torch.cat([p.detach().reshape(-1) for p in theta_by_hand(kind, module)]))
    obs = torch.randn(6, OBS, dtype=torch.float64)
    module_out = module(obs, deterministic=True)[0] if kind == "gaussian" else module(obs)
    assert torch.allclose(indep_forward(spec, theta, obs), module_out, rtol=0, atol=1e-12)


def test_from_module_dimensions_of_the_official_networks():
    # the official code's sizes: DetContPolicy 400x300 with tanh, TanhGaussianPolicy 256x3
    assert PolicySpec.from_module(StandInDetContPolicy(11, 3)) == PolicySpec(11, 3, (400, 300), head="tanh")
    assert PolicySpec.from_module(StandInGaussianPolicy(17, 6, 1.0)) == PolicySpec(17, 6, (256, 256, 256))


def test_from_module_round_trips_policy_modules_and_reads_max_action():
    for head in ("gaussian", "tanh"):
        spec = PolicySpec(4, 3, (6, 5), head=head, max_action=2.5)
        assert PolicySpec.from_module(spec.to_module(spec.init_params())) == spec
    # CORL TD3+BC style: max_action * net(x), max_action an attribute
    class Actor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Tanh())
            self.max_action = 2.0

        def forward(self, x):
            return self.max_action * self.net(x)

    assert PolicySpec.from_module(Actor()) == PolicySpec(4, 2, (8,), head="tanh", max_action=2.0)
    with pytest.raises(ValueError, match="max_action=3.0"):  # an argument that disagrees with forward
        PolicySpec.from_module(Actor(), max_action=3.0)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        return self.body(x)  # no tanh: a linear output obd_fast has no head for


def _shared():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    return nn.Sequential(a, nn.ReLU(), b, nn.Tanh())


def _extra_parameter():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh())
    m.register_parameter("temperature", nn.Parameter(torch.ones(())))
    return m


def _no_tanh_gaussian():
    m = StandInGaussianPolicy(3, 2, 1.0, (4,))
    m.no_tanh = True
    return m


@pytest.mark.parametrize("make,message", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 2), nn.Tanh()), r"layer '1' \(ELU\)"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 2)), r"layer '2' \(Dropout\)"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)), r"'1' \(BatchNorm1d\)"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Tanh()), "no ReLU between"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2), nn.Tanh()), "takes 5 inputs"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False), nn.Tanh()), "no bias"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU()), "ends in a ReLU"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), r"'2' \(Linear\) follows the output tanh"),
    (lambda: nn.Sequential(nn.ReLU(), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), r"'0' \(ReLU\) is not where"),
    (lambda: nn.Sequential(nn.Linear(3, 2), nn.Tanh()), "1 Linear layer"),
    (Scaled, r"not max_action \* tanh"),
    (_shared, "shared with another layer"),
    (_extra_parameter, r"\['temperature'\] have no place"),
    (_no_tanh_gaussian, "no_tanh"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh()).half(), "float16"),
    (lambda: nn.Sequential(), "no parameters"),
])
def test_from_module_names_what_it_cannot_map(make, message):
    with pytest.raises(ValueError, match=message):
        PolicySpec.from_module(make())


def test_from_module_refuses_non_modules():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        PolicySpec.from_module({"base_network.0.weight": torch.zeros(2, 2)})


# -- unroll_module -----------------------------------------------------------------------------

def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    return dict(syn_obs=torch.randn(N, OBS, **f64), syn_act=0.9 * (2 * torch.rand(N, ACT, **f64) - 1),
                obs=torch.randn(B, OBS, **f64), target=0.9 * (2 * torch.rand(B, ACT, **f64) - 1),
                outer_noise=torch.randn(B, ACT, **f64))


def independent_gradients(kind, module, d, noise, lr, momentum, wd):
    """d(Huber loss at theta_T)/(syn_obs, syn_act, theta_0 pieces, theta_T pieces) by the plain unroll."""
    spec = expected_spec(kind)
    pieces = theta_by_hand(kind, module)
    th0 = torch.cat([p.detach().reshape(-1) for p in pieces]).requires_grad_(True)
    s = d["syn_obs"].clone().requires_grad_(True)
    a = d["syn_act"].clone().requires_grad_(True)
    theta_T = plain_unroll(spec, th0, s, a, steps=STEPS, lr=lr, momentum=momentum, weight_decay=wd, inner_noise=noise)
    outer_noise = d["outer_noise"] if kind == "gaussian" else None
    loss = nn.HuberLoss(delta=0.1)(indep_forward(spec, theta_T, d["obs"], outer_noise), d["target"])
    d_s, d_a, d_th0, d_thT = torch.autograd.grad(loss, (s, a, th0, theta_T))
    split = lambda flat: dict(zip(map(id, pieces), flat.split([p.numel() for p in pieces])))
    return loss, d_s, d_a, split(d_th0), split(d_thT)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 1e-3)])
def test_unroll_module_matches_the_independent_unroll(backend, kind, momentum, wd):
    module = make_module(kind, seed=1)
    d = inputs(seed=2)
    s = d["syn_obs"].clone().requires_grad_(True)
    a = d["syn_act"].clone().requires_grad_(True)
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    unrolled = obd_fast.unroll_module(module, s, a, STEPS, opt, generator=torch.Generator().manual_seed(3),
                                      backend=backend)
    if kind == "gaussian":
        # drawn once from the generator, (steps, N, act_dim); the module's own attribute feeds the
        # outer sample to its forward
        assert torch.equal(unrolled.noise, torch.randn(STEPS, N, ACT, generator=torch.Generator().manual_seed(3),
                                                       dtype=torch.float64))
        module.noise = d["outer_noise"]
    else:
        assert unrolled.noise is None
    loss = nn.HuberLoss(delta=0.1)(call(unrolled, d["obs"], kind), d["target"])
    params = list(module.parameters())
    trained = list(unrolled.parameters())
    got = torch.autograd.grad(loss, [s, a] + params + trained)

    want_loss, e_s, e_a, e_th0, e_thT = independent_gradients(kind, module, d, unrolled.noise, 0.1, momentum, wd)
    assert rel_err(loss, want_loss) <= TOL
    assert rel_err(got[0], e_s) <= TOL and rel_err(got[1], e_a) <= TOL
    for p, g0, gT in zip(params, got[2:2 + len(params)], got[2 + len(params):]):
        assert g0.shape == p.shape and rel_err(g0, e_th0[id(p)].view(p.shape)) <= TOL  # d theta_0
        assert rel_err(gT, e_thT[id(p)].view(p.shape)) <= TOL  # d theta_T


@pytest.mark.skipif(not obd_fast.fused_available(), reason=f"no extension: {obd_fast.build_info()}")
@pytest.mark.parametrize("kind", ("gaussian", "deterministic"))
def test_unroll_module_fused_equals_reference(kind):
    d = inputs(seed=4)
    out = {}
    for backend in ("fused", "reference"):
        module = make_module(kind, seed=5)
        s = d["syn_obs"].clone().requires_grad_(True)
        a = d["syn_act"].clone().requires_grad_(True)
        unrolled = obd_fast.unroll_module(module, s, a, 6, lr=0.05, momentum=0.5,
                                          generator=torch.Generator().manual_seed(6), backend=backend)
        out[backend] = (unrolled.theta,) + torch.autograd.grad(unrolled.theta.square().sum(),
                                                                [s, a] + list(module.parameters()))
    for f, r in zip(out["fused"], out["reference"]):
        assert rel_err(f, r) <= 1e-10


def test_unroll_module_default_generator_and_explicit_noise():
    module = make_module("gaussian")
    d = inputs(seed=7)
    torch.manual_seed(8)
    drawn = obd_fast.unroll_module(module, d["syn_obs"], d["syn_act"], STEPS, lr=0.1, backend="reference").noise
    torch.manual_seed(8)
    assert torch.equal(drawn, torch.randn(STEPS, N, ACT, dtype=torch.float64))
    given = obd_fast.unroll_module(module, d["syn_obs"], d["syn_act"], STEPS, lr=0.1, noise=2 * drawn,
                                   backend="reference")
    assert torch.equal(given.noise, 2 * drawn)
    assert not torch.equal(given.theta, obd_fast.unroll_bc(
        torch.cat([p.detach().reshape(-1) for p in theta_by_hand("gaussian", module)]), d["syn_obs"],
        d["syn_act"], expected_spec("gaussian"), steps=STEPS, lr=0.1, noise=drawn, backend="reference"))


def test_unrolled_module_leaves_the_module_as_it_was():
    # DetContPolicy registers its last layer twice: the call must not turn its parameters into
    # plain tensors (torch's weight tying in functional_call does) nor change their values
    module = make_module("deterministic")
    before = [(p, p.detach().clone()) for p in module.parameters()]
    d = inputs(seed=9)
    unrolled = obd_fast.unroll_module(module, d["syn_obs"], d["syn_act"], STEPS, lr=0.1, backend="reference")
    unrolled(d["obs"]).sum().backward()
    assert [p for p, _ in before] == list(module.parameters())
    assert all(isinstance(p, nn.Parameter) and torch.equal(p, v) for p, v in before)
    assert module.last.weight is module.seq_append_fcs[0].weight
    assert [n for n, _ in unrolled.named_parameters()] == [n for n, _ in module.named_parameters()]
    assert not torch.equal(unrolled(d["obs"]), module(d["obs"]))  # it is the trained policy


def test_unroll_module_matches_a_float32_module_in_float32():
    module = make_module("deterministic").float()
    d = {k: v.float() for k, v in inputs(seed=10).items()}
    unrolled = obd_fast.unroll_module(module, d["syn_obs"], d["syn_act"], STEPS, lr=0.1)
    assert unrolled.theta.dtype == torch.float32 and unrolled(d["obs"]).dtype == torch.float32


@pytest.mark.parametrize("make_opt,message", [
    (lambda ps: torch.optim.Adam(ps, lr=0.1), "torch.optim.SGD"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), "nesterov=True"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1), "dampening=0.1"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True), "maximize=True"),
    (lambda ps: torch.optim.SGD([{"params": ps[:2], "lr": 0.2}, {"params": ps[2:]}], lr=0.1), "groups differ"),
    (lambda ps: torch.optim.SGD(ps[:-1], lr=0.1), r"does not update parameter\(s\) \['last.bias'\]"),
])
def test_unroll_module_reads_only_plain_sgd(make_opt, message):
    module = make_module("deterministic")
    d = inputs(seed=11)
    with pytest.raises(ValueError, match=message):
        obd_fast.unroll_module(module, d["syn_obs"], d["syn_act"], 2, make_opt(list(module.parameters())))


def test_unroll_module_sgd_groups_and_fresh_state():
    module = make_module("deterministic")
    d = inputs(seed=12)
    ps = list(module.parameters())
    same = torch.optim.SGD([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.1, momentum=0.9)
    a = obd_fast.unroll_module(module, d["syn_obs"], d["syn_act"], 3, same, backend="reference").theta
    b = obd_fast.unroll_module(module, d["syn_obs"], d["syn_act"], 3, lr=0.1, momentum=0.9,
                               backend="reference").theta
    assert torch.equal(a, b)
    module(d["obs"]).sum().backward()
    same.step()  # now it holds momentum buffers
    with pytest.raises(ValueError, match="momentum buffers"):
        obd_fast.unroll_module(module, d["syn_obs"], d["syn_act"], 3, same)


@pytest.mark.parametrize("kwargs,message", [
    (dict(), "give the inner learning rate"),
    (dict(opt=True, lr=0.1), "not both"),
    (dict(lr=0.1, generator=3), "generator must be a torch.Generator"),
    (dict(lr=0.1, syn_obs=torch.zeros(N, OBS)), "syn_obs has dtype torch.float32 but the module has torch.float64"),
    (dict(lr=0.1, syn_obs=torch.zeros(N, OBS + 1, dtype=torch.float64)), r"syn_obs must have shape \(\*, 5\)"),
    (dict(lr=0.1, steps=0), "steps must be an int >= 1"),
])
def test_unroll_module_bad_arguments(kwargs, message):
    module = make_module("gaussian")
    d = inputs(seed=13)
    opt = torch.optim.SGD(module.parameters(), lr=0.1) if kwargs.pop("opt", False) else None
    args = dict(syn_obs=d["syn_obs"], syn_act=d["syn_act"], steps=2)
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(ValueError, match=message):
        obd_fast.unroll_module(module, args["syn_obs"], args["syn_act"], args["steps"], opt, **kwargs)


# -- ragged outer batches ----------------------------------------------------------------------

@pytest.mark.parametrize("sizes,num_batches", [([11, 11, 6], None), ([5, 9], 4), ([8, 8], None)])
def test_batch_mean_weights_give_the_mean_of_per_batch_means(sizes, num_batches):
    spec = PolicySpec(3, 2, (6,), head="tanh")
    g = torch.Generator().manual_seed(14)
    theta = spec.init_params(generator=g, dtype=torch.float64)
    batches = [(torch.randn(n, 3, generator=g, dtype=torch.float64),
                torch.rand(n, 2, generator=g, dtype=torch.float64)) for n in sizes]
    q = [torch.rand(n, generator=g, dtype=torch.float64) for n in sizes]
    k = num_batches or len(sizes)
    obs, target = torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches])
    w = obd_fast.batch_mean_weights(sizes, num_batches, dtype=torch.float64)
    per_batch = [((indep_forward(spec, theta, o) - t) ** 2).mean() for o, t in batches]
    got = obd_fast.weighted_bc_loss(theta, spec, obs, target, w, backend="reference")
    assert abs(got.item() - sum(per_batch).item() / k) <= 1e-14
    # times per-row weights of one's own: the mean of per-batch weighted means
    per_batch_q = [(((indep_forward(spec, theta, o) - t) ** 2) * qi[:, None]).mean() for (o, t), qi in zip(batches, q)]
    got_q = obd_fast.weighted_bc_loss(theta, spec, obs, target, w * torch.cat(q), backend="reference")
    assert abs(got_q.item() - sum(per_batch_q).item() / k) <= 1e-14
    if len(set(sizes)) == 1 and num_batches is None:
        assert torch.equal(w, torch.ones_like(w))


@pytest.mark.parametrize("sizes,num_batches,message", [
    ([], None, "empty"), ([3, 0], None, r"batch_sizes\[1\]"), ([3, 2.5], None, r"batch_sizes\[1\]"),
    ([3], 0, "num_batches"), ([True], None, r"batch_sizes\[0\]"),
])
def test_batch_mean_weights_bad_sizes(sizes, num_batches, message):
    with pytest.raises(ValueError, match=message):
        obd_fast.batch_mean_weights(sizes, num_batches)


def test_batch_mean_weights_take_numpy_sizes():
    w = obd_fast.batch_mean_weights(np.array([2, 4]))
    assert torch.allclose(w, torch.tensor([1.5, 1.5, 0.75, 0.75, 0.75, 0.75]))


def test_readme_unroll_module_example_runs():
    # the README's RememberThePast-style example, with the stand-ins for the user's classes
    import re
    from pathlib import Path

    import torch.nn.functional as F

    from benchmarks.obd_standin import StandInSynset

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "unroll_module(" in block]
    g = torch.Generator().manual_seed(15)
    synset = StandInSynset(torch.randn(8, OBS, generator=g), torch.rand(8, ACT, generator=g))
    batches = [{"obs": torch.randn(n, OBS, generator=g), "acts": torch.rand(n, ACT, generator=g)} for n in (6, 4)]
    scope = dict(torch=torch, F=F, obd_fast=obd_fast, TanhGaussianPolicy=StandInGaussianPolicy, obs_dim=OBS,
                 act_dim=ACT, max_action=1.0, synset=synset, batches=batches)
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["d_obs"].shape == (8, OBS) and scope["d_act"].shape == (8, ACT)
    assert [g.shape for g in scope["dL_dw"]] == [p.shape for p in scope["policy"].parameters()]
    assert scope["d_obs"].abs().sum() > 0
