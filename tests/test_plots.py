"""Every figure comes from obd_fast/plots.py on matplotlib's object API: PNGs are written (atomically)
and neither pyplot nor matplotlib's global backend is touched (run in a fresh interpreter)."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import matplotlib
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    from obd_fast import plots
    out = Path(sys.argv[1])
    log = {"step": [1, 2, 3], "loss": [1.0, float("nan"), 0.5]}
    plots.distill_curve(log, [{"step": 2, "eval_loss": 0.3, "score_mean": 10.0, "score_std": 1.0}], out / "d.png", "t")
    plots.teacher_curve(out / "t.png", [{"step": 1, "critic_loss": 2.0, "actor_loss": 1.0}],
                        [{"step": 1, "normalized_score": 3.0}], "actor_loss", "t")
    plots.recipe_curve(out / "r.png", [(10, 5.0, 1.0), (20, 6.0, 2.0)], 33.3, {"env_steps": 20, "score": 2.0}, "t")
    plots.demo_summary({"a": {"mean": 1.0, "std": 0.1}, "b": {"mean": None, "std": None}},
                       {"a": {"step": [1, 2], "loss": [2.0, 1.0]}}, ["a", "b"], {"a": "A", "b": "B"}, out / "s.png")
    assert "matplotlib.pyplot" not in sys.modules
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    print("ok")
""")


def test_plots_write_pngs_without_pyplot(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    for name in ("d.png", "t.png", "r.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "r.png", "s.png", "t.png"]  # no temp files left
