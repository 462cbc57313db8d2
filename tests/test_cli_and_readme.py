"""The README's library example runs as written, and the CLI (as a subprocess) handles errors in one line."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]




def test_readme_python_example_runs(one_thread):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["S"].grad is not None and scope["S"].grad.shape == (256, 11)
    assert scope["dS"].shape == (256, 11) and float(scope["H"]) > 0


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "obd_fast.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_demo_without_its_inputs_is_one_line(tmp_path):
    proc = run_cli("demo", "--quick", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "demo"))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing.npz" in lines[0] and "Traceback" not in proc.stderr


def test_help_lists_the_commands_with_examples():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("demo", "make-dataset", "train-teacher", "distill", "evaluate", "bench", "info", "examples:"):
        assert command in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["demo", "--outer-steps", "0"], "--outer-steps"),
    ([], "required"),
])  # (more cases run in-process in test_cli.py)
def test_bad_arguments_exit_2_with_one_line(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_info():
    proc = run_cli("info")
    assert proc.returncode == 0 and "obd-fast" in proc.stdout
