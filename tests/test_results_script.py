"""experiments/results.py: the resumable multi-seed runner and the RESULTS.md report, on tiny runs."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_script", REPO / "experiments" / "results.py")
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)

TINY = "--n-syn 8 --inner-steps 2 --hidden 16,16 --save-every 1"


def test_run_then_report(tmp_path):
    root = tmp_path / "runs"
    run = ["run", "--root", str(root), "--seeds", "0", "1", "--objectives", "dbc", "--steps", "3", "--parallel", "2",
           "--eval-every", "2", "--eval-episodes", "1", "--minutes", "10", "--distill-args", TINY]
    assert results.main(run) == 0
    for seed in (0, 1):
        assert results.reached_step(root / f"dbc-s{seed}") == 3
        assert (root / "logs" / f"dbc-s{seed}.log").read_text().count(" start, ") == 1
    # finished runs are not started again
    assert results.main(run) == 0
    assert (root / "logs" / "dbc-s0.log").read_text().count(" start, ") == 1

    out = tmp_path / "RESULTS.md"
    notes = tmp_path / "notes.md"
    notes.write_text("Discussion goes here.")
    report = ["report", "--root", str(root), "--seeds", "0", "1", "--policies", "1", "--episodes", "1",
              "--out", str(out), "--notes", str(notes)]
    assert results.main(report) == 0
    text = out.read_text()
    assert "| DBC | 2 | 3, 3 |" in text and "| random selection | 2 | - |" in text and " +- " in text
    assert "Discussion goes here." in text and (tmp_path / "results.png").stat().st_size > 0
    cached = json.loads((root / "dbc-s0" / "final_eval.json").read_text())
    assert list(cached) == ["step3-p1-e1"]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["dbc"]["seeds"] == [0, 1] and len(summary["dbc"]["per_seed"]) == 2


def test_report_without_runs_says_so(tmp_path, capsys):
    assert results.main(["report", "--root", str(tmp_path), "--out", str(tmp_path / "R.md")]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_ordering_text_compares_with_the_paper():
    s = {k: dict(mean=m) for k, m in (("random", 5.0), ("dbc", 10.0), ("pbc", 20.0), ("av-pbc", 30.0))}
    assert "**reproduced**" in results.ordering_text(s)
    s["dbc"]["mean"] = 25.0
    text = results.ordering_text(s)
    assert "**not reproduced**" in text and "PBC < DBC < Av-PBC" in text
    s["dbc"]["mean"] = 1.0
    assert "Above random selection: PBC, Av-PBC." in results.ordering_text(s)


def test_paired_text_compares_each_seed_with_its_own_start():
    s = dict(random=dict(mean=10.0, seeds=[0, 1, 2], per_seed=[5.0, 20.0, 5.0]),
             dbc=dict(mean=11.0, seeds=[0, 1, 2], per_seed=[7.0, 19.0, 7.0]),
             pbc=dict(mean=12.0, seeds=[0, 1], per_seed=[6.0, 18.0]))
    text = results.paired_text(s)
    assert "DBC +1.0 +- 1.4 (higher in 2 of 3 seeds)" in text
    assert "PBC -0.5 +- 1.5 (higher in 1 of 2 seeds)" in text and "Av-PBC" not in text
    assert text in results.ordering_text(s)
    assert results.paired_text(dict(random=s["random"], dbc=dict(mean=1.0, seeds=[0], per_seed=[1.0]))) == ""


def test_a_run_is_driven_by_one_scheduler_at_a_time(tmp_path):
    first = results.take_lock(tmp_path / "x.lock")
    assert first is not None
    assert results.take_lock(tmp_path / "x.lock") is None
    first.close()
    again = results.take_lock(tmp_path / "x.lock")
    assert again is not None
    again.close()
