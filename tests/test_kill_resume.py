"""SIGKILL at random moments of a distillation and of a teacher training run (subprocesses):
every saved file is always a complete, loadable version, and resuming after the kills ends with
exactly the result of an uninterrupted run with the same seed."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# One worker for both jobs: deterministic fake data, one thread, resume whenever a run exists.
WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from obd_fast.data.table import OfflineData

    job, out = sys.argv[1], Path(sys.argv[2])
    OBS, ACT, n = 11, 3, 300
    r = np.random.default_rng(0)
    obs = r.normal(size=(n + 1, OBS))
    ends = np.zeros(n, bool); ends[49::50] = True
    data = OfflineData(obs[:-1], np.tanh(obs[:-1, :ACT]).astype(np.float32), r.normal(size=n), obs[1:],
                       np.zeros(n, bool), ends, np.arange(n) // 50, env_id="Hopper-v5")
    resume = out.exists()
    if job == "distill":
        from obd_fast import DistillConfig, distill
        cfg = DistillConfig(n_syn=16, inner_steps=8, hidden=(32, 32), real_batches=2, real_batch_size=32,
                            eval_every=0, final_eval=False, save_every=1, plot=False, eval_batch=64)
        distill(data, None, objective="dbc", steps=1000, out_dir=out, config=cfg, seed=3, resume=resume,
                progress=False)
    else:
        from obd_fast.teacher import train_teacher
        train_teacher(data, algo="td3bc", out_dir=out, steps=800, seed=3, resume=resume, eval_every=0,
                      batch_size=32, progress=False, checkpoint_every=5, log_every=5,
                      config=dict(actor_hidden=(32, 32), critic_hidden=(32, 32)))
""")


def run_worker(script, job, out, kill_after=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(script), job, str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        return True
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    return True


def check_complete(job, out):
    """Every file the run has saved loads as a whole."""
    if job == "distill":
        from obd_fast import SyntheticSet

        if (out / "state.pt").exists():
            torch.load(out / "state.pt", weights_only=True)
        if (out / "synset.pt").exists():
            SyntheticSet.load(out / "synset.pt")
    else:
        from obd_fast.teacher import load_teacher

        if (out / "checkpoint.pt").exists():
            torch.load(out / "checkpoint.pt", weights_only=False)
        if (out / "teacher.pt").exists():
            load_teacher(out / "teacher.pt")


def final_tensors(job, out):
    if job == "distill":
        from obd_fast import SyntheticSet

        s = SyntheticSet.load(out / "synset.pt")
        return {"obs": s.observations, "act": s.actions}
    state = torch.load(out / "teacher.pt", weights_only=False)
    return {f"{k}.{p}": v for k in ("actor", "critic_1", "critic_2") if k in state for p, v in state[k].items()}


@pytest.mark.parametrize("job", ["distill", "teacher"])
def test_sigkill_then_resume_gives_the_uninterrupted_result(job, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_worker(script, job, tmp_path / "clean")
    rng = random.Random(int(time.time()))
    cut, kills = tmp_path / "cut", 0
    # random moments from start-up (imports, first save) to the middle of training
    for delay in sorted(rng.uniform(1.5, 7.0) for _ in range(4)):
        finished = run_worker(script, job, cut, kill_after=delay)
        kills += not finished
        check_complete(job, cut)
        if finished:
            break
    run_worker(script, job, cut)
    assert kills >= 1, "no kill landed before the run finished: the worker is too fast for this test"
    a, b = final_tensors(job, tmp_path / "clean"), final_tensors(job, cut)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
