"""obd_fast.compat.obd.inner_loop: the official SynSetBPTT.inner_loop, fused and exact.

Checked on a stand-in of the official code (benchmarks/obd_standin.py: the same attributes, the
networks' parameter structure, the official BPTT in plain autograd with its noise replayed) in
float64, for both policy types and every match objective, with ragged test batches.
"""
import numpy as np
import pytest
import torch

import obd_fast
from benchmarks.obd_standin import StandInSynSetBPTT, paper_problem
from helpers import cosine, rel_err
from obd_fast.compat import obd as compat

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-9
BACKENDS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(
    not obd_fast.fused_available(), reason=f"no extension: {obd_fast.build_info()}"))]
OBJECTIVES = [("offline_data", False), ("offline_policy", False), ("offline_policy", True)]


def odd_problem(policy_type, objective="offline_policy", q_weight=True, momentum=0.9, batch=(11, 11, 6, 9),
                test_batch_num=3, dtype=torch.float64, **kw):
    hidden = (13, 9, 7) if policy_type == "gaussian" else (13, 9)
    return paper_problem(policy_type, objective, q_weight, obs_dim=5, act_dim=2, n_syn=7, batch=list(batch),
                         test_batch_num=test_batch_num, inner_steps=5, lr=0.1, momentum=momentum, hidden=hidden,
                         dtype=dtype, max_action=1.3 if policy_type == "gaussian" else 1.0, **kw)


def both(obd, loader, inner_loop, seed=3):
    """(compat result, official-style result with its noise replayed) from one fresh backbone.

    Both draw the backbone's noise from a generator seeded alike, in obd_fast's order; torch's
    default generator, reseeded alike, gives the teacher the same samples in both."""
    torch.manual_seed(100)
    backbone = obd.create_policy()
    initial = [p.detach().clone() for p in backbone.parameters()]
    torch.manual_seed(7)
    got = inner_loop(obd, backbone, obd.create_optimizer(backbone), loader)
    for p, p0 in zip(backbone.parameters(), initial):
        assert torch.equal(p, p0)  # the compat loop only reads the backbone
    obd.replay_generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(7)
    want = obd.official_style_inner_loop(backbone, obd.create_optimizer(backbone), loader)
    return got, want, backbone


def assert_same(got, want, backbone, obd, tol=TOL):
    loss, (d_obs, d_act), d_w = got
    w_loss, (w_obs, w_act), w_w = want
    assert loss.dim() == 0 and loss.dtype == w_loss.dtype
    assert d_obs.shape == obd.synset.observations.weight.shape and d_act.shape == obd.synset.actions.weight.shape
    params = list(backbone.parameters())
    assert isinstance(d_w, tuple) and len(d_w) == len(params) and len(w_w) == len(params)
    assert all(g.shape == p.shape and g.dtype == p.dtype for g, p in zip(d_w, params))
    errors = [rel_err(loss, w_loss), rel_err(d_obs, w_obs), rel_err(d_act, w_act)] + [
        rel_err(g, w) for g, w in zip(d_w, w_w)]
    assert max(errors) <= tol, f"loss, d_obs, d_act, dL_dw relative errors {errors}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy_type", ("gaussian", "deterministic"))
@pytest.mark.parametrize("objective,q_weight", OBJECTIVES)
@pytest.mark.parametrize("momentum", (0.0, 0.9))
def test_compat_inner_loop_equals_the_official_bptt(backend, policy_type, objective, q_weight, momentum):
    obd, loader = odd_problem(policy_type, objective, q_weight, momentum)
    loop = compat.make_inner_loop(backend=backend, generator=torch.Generator().manual_seed(3))
    assert_same(*both(obd, loader, loop), obd)


@pytest.mark.parametrize("batch,test_batch_num", [((6, 11), 4), ((7, 7, 7), 3), ((5,), 1)])
def test_compat_inner_loop_batch_counts(batch, test_batch_num):
    # fewer batches than test_batch_num: the official sum is still divided by test_batch_num
    obd, loader = odd_problem("gaussian", batch=batch, test_batch_num=test_batch_num)
    loop = compat.make_inner_loop(backend="reference", generator=torch.Generator().manual_seed(3))
    assert_same(*both(obd, loader, loop), obd)


def test_the_one_line_switch_with_torch_default_generator():
    # SynSetBPTT.inner_loop = obd_fast.compat.obd.inner_loop, then the official forward(); the noise
    # comes from torch's default generator in the official order (inner steps, then per batch the
    # teacher's sample and the backbone's), so the official BPTT replaying from it matches
    class Switched(StandInSynSetBPTT):
        pass

    Switched.inner_loop = obd_fast.compat.obd.inner_loop
    obd, loader = odd_problem("gaussian")
    switched = Switched(obd.synset, 5, 2, 1.3, obd.config, (13, 9, 7), torch.float64)
    torch.manual_seed(7)
    got = switched.forward(loader)  # a fresh backbone, then inner_loop
    switched.replay_generator = torch.default_generator
    torch.manual_seed(7)
    backbone = switched.create_policy()
    want = switched.official_style_inner_loop(backbone, switched.create_optimizer(backbone), loader)
    assert_same(got, want, backbone, switched)


def test_compat_inner_loop_float32_bf16_and_numpy_batches():
    if not obd_fast.fused_available():
        pytest.skip("precision='bf16' needs the fused backend")
    obd, loader = odd_problem("gaussian", dtype=torch.float32)
    loader = [{k: v.double().numpy() for k, v in b.items()} for b in loader]  # converted to the backbone's dtype
    out = {}
    for precision in ("native", "bf16"):
        torch.manual_seed(100)
        backbone = obd.create_policy()
        torch.manual_seed(7)
        loop = compat.make_inner_loop(precision=precision, generator=torch.Generator().manual_seed(3))
        out[precision] = loop(obd, backbone, obd.create_optimizer(backbone), loader)
    loss, (d_obs, d_act), d_w = out["bf16"]
    assert loss.dtype == d_obs.dtype == d_act.dtype == torch.float32 and all(g.dtype == torch.float32 for g in d_w)
    # bf16 products: close to the float32 result (cosine >= 0.995 over seeds 0-7 of this case), not equal
    native_loss, (native_obs, native_act), native_w = out["native"]
    flat = lambda grads: torch.cat([g.reshape(-1) for g in grads])
    assert rel_err(loss, native_loss) < 1e-2 and not torch.equal(d_obs, native_obs)
    assert min(cosine(d_obs, native_obs), cosine(d_act, native_act), cosine(flat(d_w), flat(native_w))) > 0.99


def test_compat_inner_loop_leaves_synset_gradients_cleared():
    obd, loader = odd_problem("deterministic", "offline_data", False)
    obd.synset.observations.weight.grad = torch.ones_like(obd.synset.observations.weight)
    backbone = obd.create_policy()
    compat.inner_loop(obd, backbone, obd.create_optimizer(backbone), loader)
    assert obd.synset.observations.weight.grad is None


def _config_edit(path, value):
    def edit(obd):
        node = obd.config
        *parents, last = path.split(".")
        for part in parents:
            node = getattr(node, part)
        if value is DELETE:
            delattr(node, last)
        else:
            setattr(node, last, value)
    return edit


DELETE = object()


@pytest.mark.parametrize("edit,message", [
    (_config_edit("bptt.inner_steps", 0), r"config.bptt.inner_steps must be an int >= 1, got 0"),
    (_config_edit("bptt.test_batch_num", 2.0), r"config.bptt.test_batch_num must be an int"),
    (_config_edit("bptt_optim.lr", DELETE), r"config.bptt_optim.lr is missing"),
    (_config_edit("bptt_optim.momentum", 0.5), r"backbone_opt has lr=0.1, momentum=0.9 but config.bptt_optim"),
    (_config_edit("match_objective", "offline_q"), r"config.match_objective must be one of"),
    (_config_edit("beta_weight", DELETE), r"config.beta_weight is missing"),
    (lambda obd: setattr(obd, "policy_type", "stochastic"), r"policy_type must be one of"),
    (lambda obd: setattr(obd, "policy_type", "deterministic"), r"policy_type is 'deterministic' but the backbone"),
    (lambda obd: obd.synset.float(), r"synset.observations.weight is torch.float32 .* the backbone is torch.float64"),
])
def test_compat_inner_loop_names_bad_configuration(edit, message):
    obd, loader = odd_problem("gaussian")
    backbone = obd.create_policy()
    opt = obd.create_optimizer(backbone)
    edit(obd)
    with pytest.raises(ValueError, match=message):
        compat.inner_loop(obd, backbone, opt, loader)


@pytest.mark.parametrize("loader,message", [
    ([], "test_dataloader gave no batches"),
    ([{"obs": np.zeros((3, 5))}], r"no 'acts' entry"),
    ([{"acts": np.zeros((3, 2))}], r"no 'obs' entry"),
    ([{"obs": np.zeros(5), "acts": np.zeros(2)}], r"batch\['obs'\] must be a \(batch, dim\) array"),
])
def test_compat_inner_loop_names_bad_batches(loader, message):
    obd, _ = odd_problem("deterministic", "offline_data", False)
    backbone = obd.create_policy()
    with pytest.raises(ValueError, match=message):
        compat.inner_loop(obd, backbone, obd.create_optimizer(backbone), loader)


def test_compat_inner_loop_refuses_other_optimizers_and_options():
    obd, loader = odd_problem("deterministic", "offline_data", False)
    backbone = obd.create_policy()
    with pytest.raises(ValueError, match="torch.optim.SGD"):
        compat.inner_loop(obd, backbone, torch.optim.Adam(backbone.parameters(), lr=0.1), loader)
    with pytest.raises(ValueError, match="precision must be one of"):
        compat.make_inner_loop(precision="fp8")
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        compat.make_inner_loop(generator=0)
    with pytest.raises(ValueError, match="needs float32"):  # bf16 products on a float64 backbone
        compat.make_inner_loop(precision="bf16")(obd, backbone, obd.create_optimizer(backbone), loader)
