"""Every file-taking CLI argument x every kind of bad file: exit code 2 and one line naming the file."""
import numpy as np
import pytest
import torch

from test_cli import assert_one_line_error, hopper_arrays, run  # noqa: F401 (fixtures/helpers of the CLI tests)


def make_bad(kind, tmp_path, good_npz):
    path = tmp_path / f"bad-{kind}"
    if kind == "missing":
        return path.with_suffix(".pt")
    if kind == "empty":
        path = path.with_suffix(".pt")
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path = path.with_suffix(".pt")
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        path = path.with_suffix(".pt")
        torch.save({"x": torch.randn(1000)}, path)
        path.write_bytes(path.read_bytes()[:1500])
    elif kind == "directory":
        path = path.with_suffix(".pt")
        path.mkdir()
    elif kind == "wrong-content":  # a valid torch file holding something else
        path = path.with_suffix(".pt")
        torch.save({"something": torch.zeros(3)}, path)
    return path


KINDS = ["missing", "empty", "random-bytes", "truncated", "directory", "wrong-content"]


@pytest.fixture
def good_npz(tmp_path):
    path = tmp_path / "hopper-fake.npz"
    np.savez(path, env_id=np.array("Hopper-v5"), **hopper_arrays())
    return path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["distill --teacher", "evaluate --synset", "distill --data", "train-teacher --data"])
def test_bad_file(where, kind, tmp_path, good_npz, capsys):
    bad = make_bad(kind, tmp_path, good_npz)
    if where.endswith("--data"):
        # a data source must be .npz/.hdf5/a Minari dataset: give the bad file that suffix
        target = bad.with_suffix(".npz") if kind != "directory" else bad
        if kind not in ("missing", "directory"):
            bad.rename(target)
        bad = target
    out = str(tmp_path / "out")
    argv = {
        "distill --teacher": ["distill", "--data", str(good_npz), "--objective", "pbc", "--teacher", str(bad),
                              "--out", out, "--steps", "1"],
        "evaluate --synset": ["evaluate", "--synset", str(bad)],
        "distill --data": ["distill", "--data", str(bad), "--objective", "dbc", "--out", out, "--steps", "1"],
        "train-teacher --data": ["train-teacher", "--data", str(bad), "--algo", "td3bc", "--out", out, "--steps", "1"],
    }[where]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, bad.name)
