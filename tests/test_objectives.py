"""Objectives as parts: a new one registered in a few lines drives the outer step, and the
state-density example (examples/state_density.py) weights rare states up, checked against a
float64 kernel density written out here, and resumes bit for bit."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import obd_fast
from obd_fast import DistillConfig, Distiller, distill
from obd_fast.objectives import DBC, OBJECTIVES, PAPER_OBJECTIVES, register_objective
from test_distill import fake_data, fake_teacher, tiny

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def load_example():
    spec = importlib.util.spec_from_file_location("state_density", ROOT / "examples" / "state_density.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@register_objective
class FirstStateWeighted(DBC):  # the whole of a new objective
    name = "test-first-state-weighted"

    def targets(self, obs, actions, teacher_noise=None):
        return actions, 1.0 + obs[:, 0].abs()


def test_paper_objectives_are_registered():
    assert all(name in OBJECTIVES for name in PAPER_OBJECTIVES)
    assert obd_fast.synset.OBJECTIVES is OBJECTIVES  # one registry for configs, files and the CLI


def test_a_registered_objective_drives_the_meta_gradient():
    d = Distiller(fake_data(), None, tiny(objective="test-first-state-weighted", outer_momentum=0.0, clip_norm=0.0))
    batch = d.draw()
    obs = d.real_obs[batch.index]
    weight = 1.0 + obs[:, 0].abs()
    expect = obd_fast.meta_gradient(batch.theta0, d.syn_obs, d.syn_act, d.spec, obs, d.real_act[batch.index], weight,
                                    steps=4, lr=0.1, inner_noise=batch.inner_noise, outer_noise=batch.outer_noise)
    s0 = d.syn_obs.clone()
    d.draw = lambda: batch
    loss = d.step()
    assert loss == float(expect[0])
    assert torch.equal(d.syn_obs, s0 - 0.1 * expect[1])  # plain SGD (no momentum, no clipping) on dH/dS


def test_unknown_objective_names_the_registered_ones():
    with pytest.raises(ValueError, match="test-first-state-weighted"):
        DistillConfig(objective="nope").validate()


def kde_weights_float64(states, reference, bandwidth):
    """The example's weights written out directly: reciprocal Gaussian-kernel density (without the
    state's own copy) times its geometric mean over the reference states, clipped to [0.1, 10]."""
    def log_density(x):
        out = []
        for s in x:
            d2 = ((reference - s) ** 2).sum(1)
            out.append(np.logaddexp.reduce(-d2[d2 > 0] / (2 * bandwidth ** 2)))
        return np.array(out)

    return np.clip(np.exp(log_density(reference).mean() - log_density(states)), 0.1, 10.0)


def test_density_weights_match_a_direct_computation_and_favour_rare_states():
    example = load_example()
    d = Distiller(fake_data(n=300), fake_teacher(), tiny(objective="density-av-pbc"))
    obj = d.objective
    assert isinstance(obj, example.StateDensityAvPBC) and len(obj.reference) == 300
    states = d.real_obs[::3]
    expect = kde_weights_float64(states.double().numpy(), obj.reference.numpy(), obj.bandwidth)
    got = obj.density_weights(states).double().numpy()
    assert ((got > 0.1) & (got < 10)).mean() > 0.8  # mostly unclipped: the comparison sees the density
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    # the objective's weights are Av-PBC's times these
    b = d.draw()
    obs, target, weight = d.targets(b.index, b.teacher_noise)
    torch.testing.assert_close(weight, 0.02 * d.teacher.q(obs, target) * obj.density_weights(obs))

    data = fake_data(n=300)
    data.observations[:270] = np.random.default_rng(1).normal(size=(270, 5)) * 0.05  # dense; 30 scattered rows
    data.normalizer = None
    data.__post_init__()
    w = Distiller(data, fake_teacher(), tiny(objective="density-av-pbc")).objective.density_weights(
        torch.as_tensor(data.normalizer.normalize(data.observations), dtype=torch.float32))
    assert w[270:].min() > 3 * w[:270].max()


def test_density_objective_resumes_bit_for_bit(tmp_path):
    load_example()
    data, teacher = fake_data(), fake_teacher()
    kw = dict(objective="density-av-pbc", config=tiny(), progress=False)
    full = distill(data, teacher, steps=5, out_dir=tmp_path / "full", **kw)
    distill(data, teacher, steps=2, out_dir=tmp_path / "cut", **kw)
    resumed = distill(data, teacher, steps=5, out_dir=tmp_path / "cut", resume=True, **kw)
    assert torch.equal(full.observations, resumed.observations) and torch.equal(full.actions, resumed.actions)
    assert resumed.objective == "density-av-pbc"
