"""The CLI: distill/evaluate end to end on tiny inputs, the demo's quick mode with stand-ins, and one-line
errors with exit code 2 for bad arguments, missing or corrupt files, unknown datasets and objectives."""
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from obd_fast import SyntheticSet, cli
from obd_fast.data.table import OfflineData
from obd_fast.teacher import FunctionTeacher

SMALL = ["--hidden", "16,16", "--n-syn", "8", "--inner-steps", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("obd-fast: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in err


def hopper_arrays(n=300, seed=0):
    r = np.random.default_rng(seed)
    obs = r.normal(size=(n, 11))
    ends = np.zeros(n, bool)
    ends[99::100] = True
    return dict(observations=obs, actions=np.clip(r.normal(size=(n, 3)) * 0.3, -1, 1), rewards=np.ones(n),
                terminals=np.zeros(n, bool), timeouts=ends)


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "hopper-fake.npz"
    np.savez(path, env_id=np.array("Hopper-v5"), **hopper_arrays())
    return path


def test_distill_then_evaluate(tmp_path, npz, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "distill", "--data", str(npz), "--objective", "dbc", "--steps", "3", "--out",
                            str(out), "--eval-episodes", "0", "--save-every", "2", "--no-progress", *SMALL)
    assert code == 0, err
    assert "synset.pt (8 pairs, step 3" in stdout
    syn = SyntheticSet.load(out / "synset.pt")
    assert syn.objective == "dbc" and syn.step == 3 and syn.env_id == "Hopper-v5" and syn.data_source == str(npz)
    assert (out / "log.csv").is_file() and (out / "state.pt").is_file()

    # the same run again without --resume: refused; with --resume and more steps: continued
    code, _, err = run(capsys, "distill", "--data", str(npz), "--objective", "dbc", "--steps", "3", "--out", str(out),
                       "--eval-episodes", "0", "--no-progress", *SMALL)
    assert_one_line_error(code, err, "--resume")
    code, stdout, err = run(capsys, "distill", "--data", str(npz), "--objective", "dbc", "--steps", "4", "--out",
                            str(out), "--eval-episodes", "0", "--resume", "--no-progress", *SMALL)
    assert code == 0 and "step 4" in stdout, err

    code, stdout, err = run(capsys, "evaluate", "--synset", str(out / "synset.pt"), "--episodes", "1",
                            "--policies", "2", "--arch", "mlp2", "--optimizer", "sgd,adam", "--bc-steps", "2",
                            "--baselines", "random", "--json", str(tmp_path / "res.json"))
    assert code == 0, err
    assert "| synthetic set (mlp2/sgd) |" in stdout and "| synthetic set (mlp2/adam) |" in stdout
    assert "random selection (8 real pairs)" in stdout and (tmp_path / "res.json").is_file()


@pytest.mark.parametrize("argv,fragments", [
    (["distill", "--objective", "dbc", "--out", "x"], ["--data", "required"]),
    (["distill", "--data", "d.npz", "--objective", "bc", "--out", "x"], ["--objective", "invalid choice"]),
    (["distill", "--data", "d.npz", "--out", "x", "--steps", "0"], ["--steps", ">= 1"]),
    (["distill", "--data", "d.npz", "--out", "x", "--hidden", "16,a"], ["--hidden"]),
    (["evaluate"], ["--synset"]),
    (["evaluate", "--synset", "s.pt", "--episodes", "-1"], ["--episodes"]),
    (["demo", "--outer-steps", "0"], ["--outer-steps"]),
    (["demo", "--precision", "fp8"], ["invalid choice"]),
    (["train-teacher", "--data", "d", "--out", "o", "--algo", "bcq"], ["--algo"]),
    (["no-such-command"], ["invalid choice"]),
    ([], ["required"]),
])
def test_bad_arguments(capsys, argv, fragments):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_missing_and_unknown_inputs(tmp_path, npz, capsys):
    code, _, err = run(capsys, "distill", "--data", str(tmp_path / "nope.npz"), "--objective", "dbc", "--out",
                       str(tmp_path / "o"))
    assert_one_line_error(code, err, "nope.npz")
    code, _, err = run(capsys, "distill", "--data", "bundled:no-such-set", "--objective", "dbc", "--out",
                       str(tmp_path / "o"))
    assert_one_line_error(code, err, "no-such-set")
    code, _, err = run(capsys, "distill", "--data", str(npz), "--objective", "pbc", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "needs --teacher")
    code, _, err = run(capsys, "distill", "--data", str(npz), "--objective", "av-pbc", "--teacher",
                       str(tmp_path / "t.pt"), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "t.pt", "does not exist")
    code, _, err = run(capsys, "evaluate", "--synset", str(tmp_path / "missing.pt"))
    assert_one_line_error(code, err, "missing.pt", "does not exist")
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run(capsys, "evaluate", "--synset", str(tmp_path / "bad.pt"))
    assert_one_line_error(code, err, "bad.pt", "corrupt")
    code, _, err = run(capsys, "evaluate", "--synset", str(tmp_path / "missing.pt"), "--arch", "cnn")
    assert_one_line_error(code, err, "unknown architecture cnn")
    code, _, err = run(capsys, "train-teacher", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "t"))
    assert_one_line_error(code, err, "none.npz")
    code, _, err = run(capsys, "make-dataset", "--env", "CartPole-v1", "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err, "CartPole-v1")
    assert not (tmp_path / "m").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(ValueError):
        cli.main(["--debug", "evaluate", "--synset", str(tmp_path / "missing.pt")])


def test_bench_prints_the_ratio(capsys):
    code, out, err = run(capsys, "bench", "--n-syn", "8", "--inner-steps", "3", "--batch", "16", "--hidden", "16,16",
                         "--repeats", "1")
    if not __import__("obd_fast").fused_available():
        assert_one_line_error(code, err, "extension")
        return
    assert code == 0, err
    assert "ratio reference/fused" in out and "relative difference" in out


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0 and "obd-fast" in out and "bundled datasets" in out


# --------------------------------------------------------------------------- demo
class Actor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(11, 3)

    def forward(self, obs, noise=None):
        pre = self.lin(obs)
        return torch.tanh(pre if noise is None else pre + 0.3 * noise)


class Critic(nn.Module):
    def forward(self, obs, act):
        return 5.0 + obs[:, 0] - (act ** 2).sum(1)


def stand_ins():
    data = OfflineData(**{k: v for k, v in hopper_arrays(600).items()},
                       next_observations=hopper_arrays(600)["observations"],
                       episode_ids=np.arange(600) // 100, env_id="Hopper-v5", metadata={"source": "stand-in"})
    return data, FunctionTeacher(Actor(), Critic(), 11, 3, stochastic=True)


def test_demo_quick_end_to_end(tmp_path, capsys, monkeypatch):
    import obd_fast.demo as demo

    @dataclass
    class SmallDemo(demo.DemoConfig):  # the paper-size network takes ~30 s here; the pipeline is the same
        hidden: tuple = (16, 16)
        n_syn: int = 16
        inner_steps: int = 5

    monkeypatch.setattr(demo, "DemoConfig", SmallDemo)
    monkeypatch.setattr(demo, "load_inputs", lambda cfg: stand_ins())
    code, out, err = run(capsys, "demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress")
    assert code == 0, err
    for label in ("| random selection |", "| DBC |", "| PBC |", "| Av-PBC |", "| BC on the whole dataset |",
                  "| teacher |"):
        assert label in out
    assert "(quick)" in out
    for name in ("results.json", "demo.png", "random_selection.pt", "dbc/synset.pt", "pbc/synset.pt",
                 "av-pbc/synset.pt"):
        assert (tmp_path / "demo" / name).is_file(), name
    syn = SyntheticSet.load(tmp_path / "demo" / "av-pbc" / "synset.pt")
    assert syn.step == 3 and syn.objective == "av-pbc" and syn.history[-1]["score_mean"] is not None
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert list(saved["results"]) == ["dbc", "pbc", "av-pbc", "random", "bc", "teacher"]
    assert saved["results"]["bc"]["mean"] is not None and saved["config"]["bc_steps"] == 20
    start = SyntheticSet.load(tmp_path / "demo" / "random_selection.pt")
    assert start.spec == syn.spec and len(start) == 16


def test_demo_without_bundled_files_is_one_line(tmp_path, npz, capsys, monkeypatch):
    import obd_fast.demo as demo

    code, _, err = run(capsys, "demo", "--quick", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "d"))
    assert_one_line_error(code, err, "none.npz")
    monkeypatch.setattr(demo, "BUNDLED_TEACHER", tmp_path / "bundled" / "teacher.pt")
    code, _, err = run(capsys, "demo", "--quick", "--data", str(npz), "--out", str(tmp_path / "d"))
    assert_one_line_error(code, err, "bundled teacher", "train-teacher")
    code, _, err = run(capsys, "demo", "--quick", "--data", str(npz), "--teacher", str(tmp_path / "t.pt"))
    assert_one_line_error(code, err, "t.pt", "does not exist")


def test_demo_thread_choice_times_both(monkeypatch):
    import obd_fast.demo as demo

    torch.set_num_threads(2)
    cfg = demo.DemoConfig(hidden=(16, 16), n_syn=8, inner_steps=3, real_batches=1)
    note = demo._choose_threads(cfg, 11, 3)
    assert "with 1 thread" in note and "with 2" in note and torch.get_num_threads() in (1, 2)
    assert demo._choose_threads(demo.DemoConfig(threads=1), 11, 3) == "; 1 thread(s)" and torch.get_num_threads() == 1
    assert demo._choose_threads(demo.DemoConfig(quick=True), 11, 3) == ""
