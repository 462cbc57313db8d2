"""SyntheticSet files: a plain round trip, and one clear SynsetError per kind of bad file."""
import math

import numpy as np
import pytest
import torch

from obd_fast import PolicySpec
from obd_fast.data import StateNormalizer
from obd_fast.synset import SynsetError, SynsetNotFoundError, SyntheticSet


def make_synset(n=6, obs_dim=4, act_dim=2):
    g = torch.Generator().manual_seed(0)
    spec = PolicySpec(obs_dim, act_dim, (8, 8))
    norm = StateNormalizer(mean=np.arange(obs_dim, dtype=float), std=np.full(obs_dim, 2.0))
    return SyntheticSet(torch.randn(n, obs_dim, generator=g), torch.rand(n, act_dim, generator=g) * 2 - 1, spec, norm,
                        objective="av-pbc", step=12, seed=3, env_id="Hopper-v5", data_source="bundled:hopper-medium",
                        teacher_path="teacher.pt", config={"n_syn": n, "hidden": [8, 8], "beta": 0.02},
                        history=[{"step": 10, "eval_loss": 0.5, "score_mean": 12.5, "score_std": 1.0}])


def test_round_trip_keeps_everything(tmp_path):
    syn = make_synset()
    path = syn.save(tmp_path / "s.pt")
    back = SyntheticSet.load(path)
    assert torch.equal(back.observations, syn.observations) and torch.equal(back.actions, syn.actions)
    assert back.spec == syn.spec
    np.testing.assert_array_equal(back.normalizer.mean, syn.normalizer.mean)
    np.testing.assert_array_equal(back.normalizer.std, syn.normalizer.std)
    for key in ("objective", "step", "seed", "env_id", "data_source", "teacher_path", "config", "history"):
        assert getattr(back, key) == getattr(syn, key), key
    # a plain dict of tensors and JSON-able data: readable without unpickling any code
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict) and raw["format"] == "obd-fast-synset"
    assert torch.allclose(back.raw_observations(), syn.observations * 2 + torch.arange(4.0))


def test_save_refuses_non_finite_and_writes_nothing(tmp_path):
    syn = make_synset()
    syn.actions[2, 1] = float("nan")
    with pytest.raises(SynsetError, match="non-finite"):
        syn.save(tmp_path / "s.pt")
    assert not (tmp_path / "s.pt").exists() and list(tmp_path.iterdir()) == []


def test_save_over_an_existing_file(tmp_path):
    a, b = make_synset(), make_synset()
    b.step = 99
    a.save(tmp_path / "s.pt")
    b.save(tmp_path / "s.pt")
    assert SyntheticSet.load(tmp_path / "s.pt").step == 99
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # no temporary files left


def test_missing_file(tmp_path):
    with pytest.raises(SynsetNotFoundError, match="does not exist") as info:
        SyntheticSet.load(tmp_path / "nope.pt")
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("cut", [0, 10, 0.5])
def test_truncated_or_garbage_file(tmp_path, cut):
    path = make_synset().save(tmp_path / "s.pt")
    data = path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    path.write_bytes(data[:n])
    with pytest.raises(SynsetError, match="empty|corrupt"):
        SyntheticSet.load(path)


def test_not_a_synset(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(SynsetError, match="expected a synthetic-set dict"):
        SyntheticSet.load(tmp_path / "list.pt")
    torch.save({"observations": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(SynsetError, match="not an obd-fast synthetic set"):
        SyntheticSet.load(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(SynsetError, match="corrupt"):
        SyntheticSet.load(tmp_path / "text.pt")


def _edited(tmp_path, edit):
    payload = make_synset().to_payload()
    edit(payload)
    torch.save(payload, tmp_path / "e.pt")
    return tmp_path / "e.pt"


@pytest.mark.parametrize("edit,message", [
    (lambda p: p.pop("actions"), r"missing field\(s\) \['actions'\]"),
    (lambda p: p.pop("spec"), "missing field"),
    (lambda p: p["observations"].__setitem__((0, 0), math.inf), "observations has non-finite values in 1 row"),
    (lambda p: p["actions"].__setitem__((1, 1), math.nan), "actions has non-finite"),
    (lambda p: p.__setitem__("observations", torch.zeros(6, 5)), r"observations has shape \(6, 5\)"),
    (lambda p: p.__setitem__("actions", torch.zeros(5, 2)), "6 observations but 5 actions"),
    (lambda p: p.__setitem__("actions", torch.zeros(6, 2, dtype=torch.long)), "floating-point"),
    (lambda p: p.__setitem__("spec", {"obs_dim": 4}), "bad policy spec"),
    (lambda p: p.__setitem__("normalizer", {"mean": [0.0] * 3, "std": [1.0] * 3}), "normalizer has 3"),
    (lambda p: p.__setitem__("version", 99), "format version 99"),
    (lambda p: p["meta"].__setitem__("objective", "xyz"), "unknown objective"),
])
def test_bad_contents_are_clear_errors(tmp_path, edit, message):
    with pytest.raises(SynsetError, match=message):
        SyntheticSet.load(_edited(tmp_path, edit))
