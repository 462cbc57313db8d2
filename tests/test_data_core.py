"""Normalizer, normalized scores, and a light `import obd_fast`."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from obd_fast.data import D4RL_REF_SCORES, DatasetError, StateNormalizer, normalized_score


def test_normalizer_stats_numpy_torch_and_roundtrip():
    rng = np.random.default_rng(0)
    obs = rng.normal(3.0, 2.0, size=(500, 4))
    obs[:, 3] = 7.0  # a constant feature: std is eps, not 0
    norm = StateNormalizer.from_observations(obs)
    np.testing.assert_allclose(norm.mean, obs.mean(0))
    np.testing.assert_allclose(norm.std, obs.std(0) + 1e-3)
    z = norm.normalize(obs)
    np.testing.assert_allclose(z[:, :3].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(norm.denormalize(z), obs)
    t = torch.as_tensor(obs, dtype=torch.float32)
    zt = norm.normalize(t)
    assert zt.dtype == torch.float32 and torch.is_tensor(zt)
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-5, atol=1e-4)
    again = StateNormalizer.from_dict(norm.to_dict())
    np.testing.assert_array_equal(again.mean, norm.mean)
    np.testing.assert_array_equal(again.std, norm.std)
    import json
    json.dumps(norm.to_dict())  # serializable as plain JSON


@pytest.mark.parametrize("env", ["hopper", "Hopper-v5", "hopper-medium-v2", "mujoco/hopper/medium-v0"])
def test_normalized_score_hopper_names(env):
    assert normalized_score(env, -20.272305) == pytest.approx(0.0)
    assert normalized_score(env, 3234.3) == pytest.approx(100.0)


def test_normalized_score_values():
    lo, hi = D4RL_REF_SCORES["halfcheetah"]
    assert normalized_score("HalfCheetah-v5", (lo + hi) / 2) == pytest.approx(50.0)
    np.testing.assert_allclose(normalized_score("walker2d-expert-v2", [1.629008, 4592.3]), [0, 100])
    assert normalized_score("anything", 5.0, ref_min=0.0, ref_max=10.0) == pytest.approx(50.0)
    with pytest.raises(DatasetError, match="no reference scores for 'ant'"):
        normalized_score("ant", 1.0)


def test_import_obd_fast_stays_light():
    code = "import sys, obd_fast, obd_fast.data; print('minari' in sys.modules, 'gymnasium' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
