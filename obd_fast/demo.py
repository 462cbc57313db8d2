"""``obd-fast demo``: the whole pipeline on the bundled hopper-medium data and its bundled teacher.

It distills three synthetic sets of 256 pairs (DBC, PBC, Av-PBC) with the paper's settings except
the number of outer steps (the paper runs 20k-50k; the demo at most a few hundred, within a
wall-clock budget shared by the objectives), then
trains fresh policies by BC on each set (100 SGD steps, lr 0.1), rolls them out in Gymnasium
Hopper-v5 and prints a table of D4RL normalized returns next to random selection (the sets'
common starting point: 256 random real pairs), BC on the whole dataset (what the 256 pairs stand
in for) and the teacher itself. It saves the synthetic
sets, a plot and ``results.json`` into the output directory.

``--quick`` runs the same pipeline on a tiny budget (3 outer steps, 2 episodes, one policy, 20
steps of whole-data BC): a smoke test, not a result.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from . import plots
from .atomic import atomic_write_text
from .checks import PRECISIONS
from .distill import DistillConfig, DistillSettings, distill
from .evaluate import FULL_BC
from .objectives import PAPER_OBJECTIVES
from .options import POS, option, positive_float, widths

BUNDLED_DATA = "bundled:hopper-medium"
BUNDLED_TEACHER = Path(__file__).resolve().parent / "teacher" / "bundled" / "hopper-medium" / "teacher.pt"
ENV_ID = "Hopper-v5"
LABELS = {"random": "random selection", "dbc": "DBC", "pbc": "PBC", "av-pbc": "Av-PBC",
          "bc": "BC on the whole dataset", "teacher": "teacher"}
# the paper's Table 1 averages over its nine D4RL datasets (N_syn = 256), for orientation only
PAPER_AVERAGE = {"random": 7.6, "dbc": 20.9, "pbc": 30.4, "av-pbc": 38.2, "bc": 45.7, "teacher": 70.1}


class DemoInputError(ValueError):
    """A file the demo needs is missing or unusable."""


@dataclass
class DemoConfig:
    out_dir: str = option("runs/demo", "output directory (with --quick: runs/demo-quick)", flag="--out")
    data: str = option(BUNDLED_DATA, "dataset (a Hopper-v5 one)")
    teacher: Optional[str] = option(None, "teacher checkpoint (None: the bundled one)")
    # outer_steps caps each distillation; max_minutes bounds the wall clock: each objective gets an
    # equal share of what is left and stops early (saving; the table shows the steps done) when it
    # runs out, so the demo's length is bounded on a slow or busy machine too
    outer_steps: int = option(400, "outer steps per objective (at most 3 with --quick)", type=POS)
    max_minutes: float = option(10.0, "wall-clock budget of the three distillations with their evaluations",
                                type=positive_float)
    precision: str = option("bf16", "fused matrix products (bf16: bfloat16 operands, float32 accumulation)",
                            choices=PRECISIONS)
    threads: Optional[int] = option(None, "torch threads; None: time torch's default and 1, keep the faster",
                                    cli=False)
    episodes: int = option(10, "rollouts per evaluated policy", type=POS)
    policies: int = option(5, "BC-trained policies evaluated per set (mean +- std over them)", type=POS)
    bc_steps: int = option(FULL_BC["steps"], "minibatch steps of BC on the whole dataset (the BC row)", type=POS)
    seed: int = option(0, type=int)
    # the distillation's sizes default to the paper's (DistillSettings)
    n_syn: int = option(DistillSettings.n_syn, "synthetic pairs", type=POS)
    inner_steps: int = option(DistillSettings.inner_steps, "inner BC steps per outer step", type=POS)
    hidden: tuple = option(DistillSettings.hidden, "hidden widths of the policy MLP", type=widths)
    real_batches: int = option(DistillSettings.real_batches, "real states per outer step, in batches of 256",
                               type=POS)
    save_every: int = option(100, "outer steps between saves", type=POS)
    device: str = option("cpu")
    objectives: tuple = option(PAPER_OBJECTIVES, cli=False)
    progress: bool = option(True, "no progress bars")
    quick: bool = option(False, "tiny budget (< 1 min): a smoke test of the pipeline")

    def resolved(self) -> "DemoConfig":
        """Apply ``quick``: a tiny budget that runs in well under a minute."""
        if not self.quick:
            return self
        return replace(self, outer_steps=min(self.outer_steps, 3), episodes=min(self.episodes, 2), policies=1,
                       bc_steps=min(self.bc_steps, 20),
                       max_minutes=min(self.max_minutes, 0.5), real_batches=min(self.real_batches, 2),
                       out_dir=self.out_dir if self.out_dir != DemoConfig.out_dir else DemoConfig.out_dir + "-quick")


def load_inputs(cfg: DemoConfig):
    """(data, teacher) from the configured sources, with one-line errors when they are missing."""
    from .data import load_dataset

    data = load_dataset(cfg.data, env_id=ENV_ID if cfg.data == BUNDLED_DATA else None)
    path = Path(cfg.teacher) if cfg.teacher else BUNDLED_TEACHER
    if not path.is_file():
        if not cfg.teacher:
            raise DemoInputError(f"the bundled teacher (obd_fast/teacher/bundled/hopper-medium/teacher.pt) is not "
                                 "there yet: train one with `obd-fast train-teacher --data bundled:hopper-medium "
                                 "--out DIR` and pass `--teacher DIR/teacher.pt`")
        raise DemoInputError(f"teacher checkpoint {cfg.teacher!r} does not exist")
    from .teacher import load_teacher

    teacher = load_teacher(path, obs_norm=data.normalizer, env=data.env_id or ENV_ID)
    return data, teacher


def run_demo(cfg: DemoConfig = DemoConfig(), out=print, data=None, teacher=None) -> dict:
    """Run the demo; ``data`` / ``teacher`` replace the bundled ones (tests, other datasets)."""
    from .evaluate import evaluate_bc_full, evaluate_synset, evaluate_teacher, random_selection
    from .policy import PolicySpec

    cfg = cfg.resolved()
    source = cfg.data if data is None else str(data.metadata.get("source") or "(given)")
    if data is None or teacher is None:
        loaded_data, loaded_teacher = load_inputs(cfg)
        data = data if data is not None else loaded_data
        teacher = teacher if teacher is not None else loaded_teacher
    env_id = data.env_id or ENV_ID
    data.env_id = env_id
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    threads_note = _choose_threads(cfg, data.obs_dim, data.act_dim)

    base = DistillConfig(steps=cfg.outer_steps, n_syn=cfg.n_syn, inner_steps=cfg.inner_steps, hidden=tuple(cfg.hidden),
                         real_batches=cfg.real_batches, seed=cfg.seed, precision=cfg.precision, device=cfg.device,
                         eval_every=0, eval_episodes=cfg.episodes, eval_policies=cfg.policies,
                         save_every=cfg.save_every)
    results, curves, runs = {}, {}, {}
    budget = cfg.max_minutes * 60.0
    for i, objective in enumerate(cfg.objectives):
        # split what is left of the budget over the remaining objectives
        left = budget - (time.perf_counter() - t_start)
        share = max(left / (len(cfg.objectives) - i), 1.0)
        t0 = time.perf_counter()
        syn = distill(data, teacher, objective=objective, out_dir=out_dir / objective, config=base,
                      resume=True, progress=cfg.progress, data_source=source,
                      teacher_path=cfg.teacher or str(BUNDLED_TEACHER),
                      max_seconds=share)
        seconds = time.perf_counter() - t0
        ev = syn.history[-1]
        results[objective] = dict(mean=ev.get("score_mean"), std=ev.get("score_std"), steps=syn.step, seconds=seconds)
        log = _read_log(out_dir / objective / "log.csv")
        curves[objective] = log
        secs = [s for s, k in zip(log["seconds"], log["skipped"]) if not k]
        runs[objective] = dict(outer_steps=syn.step, seconds_per_step=float(np.median(secs)) if secs else None)

    # random selection = the distillations' common starting point (the "real" init draws the same
    # rows from the same seed, normalized with the same statistics)
    norm = teacher.normalizer if teacher.normalizer is not None else data.normalizer
    spec = PolicySpec(data.obs_dim, data.act_dim, tuple(cfg.hidden), "gaussian", float(teacher.max_action))
    start = random_selection(data, cfg.n_syn, seed=cfg.seed, normalizer=norm, spec=spec)
    r = evaluate_synset(start, env_id, episodes=cfg.episodes, policies=cfg.policies, seed=cfg.seed)
    results["random"] = dict(mean=r["mean"], std=r["std"], steps=0, seconds=None)
    start.save(out_dir / "random_selection.pt")
    bc = evaluate_bc_full(data, env_id, episodes=cfg.episodes, policies=cfg.policies, seed=cfg.seed,
                          steps=cfg.bc_steps)
    results["bc"] = dict(mean=bc["mean"], std=bc["std"], steps=None, seconds=None)
    t = evaluate_teacher(teacher, env_id, episodes=cfg.episodes, normalizer=norm)
    results["teacher"] = dict(mean=t["mean"], std=t["std"], steps=None, seconds=None)
    total = time.perf_counter() - t_start

    order = ["random", *cfg.objectives, "bc", "teacher"]
    out("")
    step_times = [v["seconds_per_step"] for v in runs.values() if v["seconds_per_step"]]
    out(f"obd-fast demo{' (quick)' if cfg.quick else ''}: {env_id}, data {source}, N={cfg.n_syn}, T={cfg.inner_steps}, "
        f"policy {tuple(cfg.hidden)}, precision {cfg.precision}; "
        f"{cfg.episodes} episodes x {cfg.policies} BC policies per set; {total / 60:.1f} min in all"
        + (f"; {np.median(step_times):.2f} s per outer step" if step_times else "") + threads_note)
    out("| method | normalized return (mean +- std over episodes) | outer steps | paper Table 1 (avg of 9 datasets) |")
    out("|---|---|---|---|")
    for key in order:
        res = results[key]
        steps = "-" if res["steps"] is None else str(res["steps"])
        score = "n/a" if res["mean"] is None else f"{res['mean']:.1f} +- {res['std'] or 0.0:.1f}"
        out(f"| {LABELS[key]} | {score} | {steps} | {PAPER_AVERAGE[key]} |")
    out(f"(the paper distills for 20k-50k outer steps; this demo at most {cfg.outer_steps} per objective within "
        f"{cfg.max_minutes:g} minutes. Synthetic sets, learning curves, demo.png, results.json: {out_dir}/)")

    summary = dict(config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                   env_id=env_id, results=results, runs=runs, seconds=total)
    atomic_write_text(out_dir / "results.json", json.dumps(summary, indent=1))
    plots.demo_summary(results, curves, order, LABELS, out_dir / "demo.png")
    return summary


def _choose_threads(cfg: DemoConfig, obs_dim: int, act_dim: int) -> str:
    """Set torch's CPU threads: ``cfg.threads`` if given; else, when torch would use several,
    time a short outer step (the demo's sizes, at most 10 inner steps) with them and with one
    thread and keep the faster: on a machine whose other cores are busy, OpenMP threads that wait
    for a core can make several threads much slower than one."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        return f"; {cfg.threads} thread(s)"
    n = torch.get_num_threads()
    if n <= 1 or cfg.quick or torch.device(cfg.device).type != "cpu":
        return ""
    from .ops import meta_gradient
    from .policy import PolicySpec

    spec = PolicySpec(obs_dim, act_dim, tuple(cfg.hidden))
    g = torch.Generator().manual_seed(0)
    b = cfg.real_batches * 256
    args = (spec.init_params(generator=g), torch.randn(cfg.n_syn, obs_dim, generator=g),
            torch.rand(cfg.n_syn, act_dim, generator=g) * 2 - 1, spec, torch.randn(b, obs_dim, generator=g),
            torch.rand(b, act_dim, generator=g) * 2 - 1)
    steps = min(cfg.inner_steps, 10)
    kw = dict(steps=steps, lr=0.1, inner_noise=torch.randn(steps, cfg.n_syn, act_dim, generator=g),
              outer_noise=torch.randn(b, act_dim, generator=g), precision=cfg.precision)
    timings = {}
    for k in (1, n):
        torch.set_num_threads(k)
        if k == 1:
            meta_gradient(*args, **kw)  # warm-up
        t0 = time.perf_counter()
        meta_gradient(*args, **kw)
        timings[k] = time.perf_counter() - t0
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    return (f"; {best} thread(s) (a {steps}-inner-step probe took {timings[1]:.2f} s with 1 thread, "
            f"{timings[n]:.2f} s with {n})")


def _read_log(path: Path) -> dict:
    import csv

    cols = {"step": [], "loss": [], "skipped": [], "seconds": []}
    with open(path) as f:
        for row in csv.DictReader(f):
            cols["step"].append(int(row["step"]))
            cols["loss"].append(float(row["loss"]))
            cols["skipped"].append(int(row["skipped"]))
            cols["seconds"].append(float(row["seconds"]))
    return cols
