"""experiments/results.py: the resumable multi-task runner, its milestone, shards, export and the
RESULTS.md report, on tiny runs of the bundled hopper data."""
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


def _run(root, *extra):
    return ["run", "--root", str(root), "--tasks", "hopper", "--seeds", "0", "1", "--parallel", "2",
            "--eval-every", "2", "--eval-episodes", "1", "--minutes", "10", "--distill-args", TINY, *extra]


def _starts(root, job):
    return (root / "logs" / f"{job}.log").read_text().count(" start -> ")


@pytest.fixture
def tiny_milestone(monkeypatch, tmp_path):
    monkeypatch.setattr(results, "MILESTONE", 2)
    monkeypatch.setattr(results, "KEPT_STEPS", (2,))
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")


def test_run_stops_at_the_milestone_keeps_that_set_and_continues(tmp_path, tiny_milestone):
    root = tmp_path / "runs"
    assert results.main(_run(root, "--objectives", "dbc", "--steps", "3")) == 0
    for seed in (0, 1):
        path = root / "hopper" / f"dbc-s{seed}"
        assert results.reached_step(path) == 3
        kept = results.load_synset(path / "synset-step2.pt")
        assert kept.step == 2 and results.load_synset(path / "synset.pt").step == 3
        assert _starts(root, f"hopper-dbc-{seed}") == 2  # to the milestone, then on
    # finished runs are not started again
    assert results.main(_run(root, "--objectives", "dbc", "--steps", "3")) == 0
    assert _starts(root, "hopper-dbc-0") == 2


def test_shards_split_the_sweep_without_overlap():
    class A:
        seeds, tasks, objectives = [0, 1, 2], list(results.TASKS), list(results.OBJECTIVES)
    every = []
    for i in range(4):
        A.shard = (i, 4)
        every += results.sweep_jobs(A)
    A.shard = (0, 1)
    assert sorted(every) == sorted(results.sweep_jobs(A)) and len(every) == 27
    with pytest.raises(Exception, match="I/N"):
        results.parse_shard("2-4")
    with pytest.raises(Exception, match="1 <= I <= N"):
        results.parse_shard("5/4")


def test_export_then_a_fresh_root_continues_from_the_exported_state(tmp_path, tiny_milestone):
    root = tmp_path / "runs"
    assert results.main(_run(root, "--objectives", "dbc", "--seeds", "0", "--steps", "3")) == 0
    assert results.main(["export", "--root", str(root), "--tasks", "hopper", "--seeds", "0"]) == 0
    synsets = tmp_path / "results" / "synsets" / "hopper-medium"
    assert sorted(p.name for p in synsets.iterdir()) == ["dbc-seed0-step3.pt", "dbc-seed0.pt"]
    assert results.load_synset(synsets / "dbc-seed0.pt").step == 2
    resume = tmp_path / "results" / "resume" / "hopper-medium" / "dbc-seed0"
    assert (resume / "state.pt").exists()
    # another machine: no run directory, only the exported state
    fresh = tmp_path / "fresh"
    assert results.main(_run(fresh, "--objectives", "dbc", "--seeds", "0", "--steps", "4")) == 0
    assert results.reached_step(fresh / "hopper" / "dbc-s0") == 4
    assert _starts(fresh, "hopper-dbc-0") == 1  # went on from step 3, not from 0


def test_report_tables_per_task_on_fresh_env_seeds(tmp_path, tiny_milestone, monkeypatch):
    root = tmp_path / "runs"
    assert results.main(_run(root, "--objectives", "dbc", "--steps", "2")) == 0
    out, notes = tmp_path / "RESULTS.md", tmp_path / "notes.md"
    notes.write_text("Discussion goes here.")
    report = ["report", "--root", str(root), "--tasks", "hopper", "--seeds", "0", "1", "--policies", "1",
              "--episodes", "1", "--subsets", "3", "--ensemble", "2", "--bc-steps", "5", "--out", str(out),
              "--notes", str(notes)]
    assert results.main(report) == 0
    text = out.read_text()
    assert "## hopper-medium" in text and "| DBC | 2 |" in text and "| random selection | 0 |" in text
    assert "3 subsets" in text and "BC (whole dataset)" in text and "teacher (TD3+BC)" in text
    assert "Ensemble evaluation" in text and "Discussion goes here." in text
    assert f"env seeds {results.FINAL_ENV_SEED}-{results.FINAL_ENV_SEED}" in text
    assert (tmp_path / "results" / "hopper-medium.png").stat().st_size > 0
    cached = json.loads((root / "hopper" / "evals.json").read_text())
    assert {"random-s0-p1-e1-env100000", "random-s2-p1-e1-env100000", "dbc-s1-step2-p1-e1-env100000"} <= set(cached)
    # a second report reads the cache: nothing is evaluated again
    import obd_fast.evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("evaluated again")
    for name in ("evaluate_synset", "evaluate_bc_full", "evaluate_teacher"):
        monkeypatch.setattr(obd_fast.evaluate, name, refuse)
    assert results.main(report) == 0 and out.read_text() == text


def test_per_seed_differences_compare_each_seed_with_its_own_start():
    runs = {"random": [dict(seed=0, score=5.0), dict(seed=1, score=20.0), dict(seed=2, score=5.0)],
            "dbc": [dict(seed=0, score=7.0), dict(seed=1, score=19.0), dict(seed=2, score=7.0)]}
    assert results.per_seed_differences(runs, "dbc").tolist() == [2.0, -1.0, 2.0]


def test_report_without_runs_says_so(tmp_path, capsys):
    assert results.main(["report", "--root", str(tmp_path), "--out", str(tmp_path / "R.md")]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_a_run_is_driven_by_one_scheduler_at_a_time(tmp_path):
    first = results.take_lock(tmp_path / "x.lock")
    assert first is not None
    assert results.take_lock(tmp_path / "x.lock") is None
    first.close()
    again = results.take_lock(tmp_path / "x.lock")
    assert again is not None
    again.close()
