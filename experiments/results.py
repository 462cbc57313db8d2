"""The experiment behind RESULTS.md: DBC, PBC and Av-PBC on the bundled medium datasets of three
MuJoCo tasks (hopper, walker2d, halfcheetah), several seeds each, with the paper's baselines.

    # distill (resumable: run the same command again to continue; stops cleanly at --minutes)
    python experiments/results.py run --steps 2000 --seeds 0 1 2 --parallel 2 --minutes 600
    # hopper Av-PBC at the paper's schedule (continues the 2k runs of seeds 0 and 1)
    python experiments/results.py run --tasks hopper --objectives av-pbc --seeds 0 1 --steps 20000
    # a sweep spread over machines or array jobs (nothing shared but the file system):
    python experiments/results.py run --shard 2/4 ...        # this worker takes every 4th job from the 2nd
    # copy the final synthetic sets (and what the long runs need to resume) into results/
    python experiments/results.py export
    # evaluate everything on fresh env seeds, write RESULTS.md and one plot per task
    python experiments/results.py report

``run`` starts one ``obd-fast distill`` process per (task, objective, seed), ``--parallel`` at a
time with one torch thread each, lowest seeds first so a short budget still gives one of each.
A run that is to go past one of :data:`KEPT_STEPS` first stops there and keeps that synthetic
set (``synset-step2000.pt``, ...), so the 2k-step table and the long runs share their first 2000
steps, and a long run also gives the set at 4000 steps (the equal-wall-time partner of a
meta-batch of 2 at 2000 steps).
Each run holds a lock while a process drives it, so several schedulers (``--shard``) never drive
the same run. A run directory missing here but exported under ``results/resume/`` starts from
the exported state, so a long run continues on a fresh clone of another machine.

``report`` evaluates each final set with ``--policies`` BC policies x ``--episodes`` rollouts on
env seeds starting at :data:`FINAL_ENV_SEED` (the runs' periodic evaluations use seeds 0-9, so no
final number comes from a seed seen during a run), caches every evaluation in ``ROOT/TASK/evals.json``,
and writes the tables (mean +- std over seeds), the per-seed differences against each seed's own
starting set, the ensemble and cross-architecture / cross-optimizer evaluations, and the plots.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from obd_fast.atomic import atomic_write, atomic_write_text  # noqa: E402
from obd_fast.evaluate import FULL_BC  # noqa: E402
from obd_fast.objectives import PAPER_OBJECTIVES as OBJECTIVES  # noqa: E402

TASKS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}
METHODS = ("random", *OBJECTIVES)  # the distillation table's rows, in the paper's order
LABELS = {"random": "random selection", "dbc": "DBC", "pbc": "PBC", "av-pbc": "Av-PBC",
          "bc": "BC (whole dataset)", "teacher": "teacher (TD3+BC)"}
# the paper's Table 1 averages over its nine D4RL datasets (N_syn = 256), for orientation only
PAPER_AVERAGE = {"random": 7.6, "dbc": 20.9, "pbc": 30.4, "av-pbc": 38.2, "bc": 45.7, "teacher": 70.1}
MILESTONE = 2000           # outer steps of the main table
KEPT_STEPS = (MILESTONE, 4000)  # longer runs keep their synthetic set at these steps
FINAL_ENV_SEED = 100_000   # final evaluations roll out on env seeds FINAL_ENV_SEED, +1, ...
RESULTS_DIR = REPO / "results"


def data_source(task: str) -> str:
    return f"bundled:{task}-medium"


def teacher_file(task: str) -> Path:
    return REPO / "obd_fast" / "teacher" / "bundled" / f"{task}-medium" / "teacher.pt"


def run_dir(root, task: str, objective: str, seed: int) -> Path:
    return Path(root) / task / f"{objective}-s{seed}"


def exported_name(objective: str, seed: int, step: int) -> str:
    """results/synsets/TASK-medium/NAME: the milestone run as OBJECTIVE-seedK.pt, longer ones with their step."""
    return f"{objective}-seed{seed}.pt" if step == MILESTONE else f"{objective}-seed{seed}-step{step}.pt"


def load_synset(path: Path):
    from obd_fast.synset import SyntheticSet

    return SyntheticSet.load(path)


def reached_step(path: Path) -> int:
    """Outer steps a run has saved (0 when it has not started)."""
    from obd_fast.distill import load_state

    state = path / "state.pt"
    return int(load_state(state)["step"]) if state.exists() else 0


def take_lock(path: Path):
    """An open file holding an exclusive lock on ``path`` (None when another process holds it), so
    that two schedulers never drive the same run; the lock ends with the file or the process."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def parse_shard(text: str):
    """'I/N' (1-based) -> (I - 1, N)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like I/N (e.g. 2/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 1 <= I <= N")
    return i - 1, n


# ------------------------------------------------------------------------------------ run
def next_target(done: int, steps: int) -> int:
    """Where the next process of a run stops: the next kept step, then the run's own target."""
    return min([k for k in KEPT_STEPS if done < k < steps], default=steps)


def keep_milestone(path: Path) -> None:
    """Keep the synthetic set a run saved at a kept step (before it continues past it)."""
    step = reached_step(path)
    kept = path / f"synset-step{step}.pt"
    if step in KEPT_STEPS and not kept.exists():
        shutil.copyfile(path / "synset.pt", kept)


def synset_files(path: Path) -> dict:
    """{step: file} of a run's kept synthetic sets and its latest one."""
    step = reached_step(path)
    files = {k: path / f"synset-step{k}.pt" for k in KEPT_STEPS if k < step}
    files[step] = path / "synset.pt"
    return {k: f for k, f in files.items() if f.exists()}


def seed_from_export(path: Path, task: str, objective: str, seed: int) -> None:
    """Start a run that does not exist here from the state exported under results/resume/."""
    exported = RESULTS_DIR / "resume" / f"{task}-medium" / f"{objective}-seed{seed}"
    if (path / "state.pt").exists() or not (exported / "state.pt").exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    for f in exported.iterdir():
        shutil.copyfile(f, path / f.name)
    print(f"{path}: starts from the exported state (step {reached_step(path)})", flush=True)


def distill_command(args, task: str, objective: str, seed: int, target: int, minutes: float) -> list:
    out = run_dir(args.root, task, objective, seed)
    # DBC needs no teacher; without one the run normalizes states with the data's statistics, the
    # same numbers a teacher trained on this data carries
    teacher = [] if objective == "dbc" else ["--teacher", str(teacher_file(task))]
    cmd = [sys.executable, "-m", "obd_fast.cli", "--threads", str(args.threads), "distill", "--data", data_source(task),
           *teacher, "--objective", objective, "--steps", str(target), "--seed", str(seed), "--out", str(out),
           "--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes),
           "--precision", args.precision, "--max-minutes", f"{minutes:.2f}", "--no-progress"]
    if (out / "state.pt").exists():
        cmd.append("--resume")
    return cmd + shlex.split(args.distill_args)


def sweep_jobs(args) -> list:
    """Every (task, objective, seed) of the sweep, in a fixed order (lowest seeds first), then this shard's."""
    jobs = [(t, o, s) for s in args.seeds for t in args.tasks for o in args.objectives]
    index, count = args.shard
    return jobs[index::count]


def cmd_run(args) -> int:
    root = Path(args.root)
    jobs = sweep_jobs(args)
    for job in jobs:
        seed_from_export(run_dir(root, *job), *job)
    pending = [j for j in jobs if reached_step(run_dir(root, *j)) < args.steps]
    deadline = time.time() + args.minutes * 60
    running = []
    print(f"{len(pending)} run(s) to go, {args.parallel} at a time, until "
          f"{time.strftime('%H:%M', time.localtime(deadline))}", flush=True)
    while pending or running:
        still = []
        for p, job, lock in running:
            if p.poll() is None:
                still.append((p, job, lock))
                continue
            lock.close()  # releases the lock
            path = run_dir(root, *job)
            keep_milestone(path)
            done = reached_step(path)
            print(f"{'/'.join(map(str, job))}: exited with {p.returncode} at step {done}", flush=True)
            if p.returncode == 0 and done < args.steps:
                pending.insert(0, job)  # stopped at the milestone (or its time budget): continue while time is left
        running = still
        left = (deadline - time.time()) / 60
        while pending and len(running) < args.parallel and left > 2:
            job = pending.pop(0)
            path = run_dir(root, *job)
            lock = take_lock(root / "logs" / f"{'-'.join(map(str, job))}.lock")
            if lock is None:
                print(f"{'/'.join(map(str, job))}: another process is running it; skipped", flush=True)
                continue
            target = next_target(reached_step(path), args.steps)
            with open(root / "logs" / f"{'-'.join(map(str, job))}.log", "a") as log:  # the child keeps its own handle
                log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M')} start -> step {target}, {left:.1f} min left\n")
                log.flush()
                p = subprocess.Popen(distill_command(args, *job, target, left - 1), cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT)
            running.append((p, job, lock))
            print(f"started {'/'.join(map(str, job))} -> step {target} (pid {p.pid})", flush=True)
        if not running:
            break
        time.sleep(5)
    for job in jobs:
        print(f"{'/'.join(map(str, job))}: {reached_step(run_dir(root, *job))}/{args.steps} steps")
    return 0


# ------------------------------------------------------------------------------------ export
def cmd_export(args) -> int:
    """Copy every run's milestone and final synthetic sets into results/synsets/, and the state of
    runs that go past the milestone into results/resume/ (what a fresh clone needs to continue)."""
    root, n = Path(args.root), 0
    for task in args.tasks:
        for objective in OBJECTIVES:
            for seed in args.seeds:
                path = run_dir(root, task, objective, seed)
                if not (path / "synset.pt").exists():
                    continue
                dest = RESULTS_DIR / "synsets" / f"{task}-medium"
                dest.mkdir(parents=True, exist_ok=True)
                for s, src in synset_files(path).items():
                    shutil.copyfile(src, dest / exported_name(objective, seed, s))
                    n += 1
                if reached_step(path) > MILESTONE:
                    keep = RESULTS_DIR / "resume" / f"{task}-medium" / f"{objective}-seed{seed}"
                    keep.mkdir(parents=True, exist_ok=True)
                    for f in path.iterdir():
                        if f.suffix in (".pt", ".json", ".csv") and f.name != "final_eval.json":
                            shutil.copyfile(f, keep / f.name)
    print(f"exported {n} synthetic set(s) to {RESULTS_DIR / 'synsets'}")
    return 0


# ------------------------------------------------------------------------------------ report
class EvalCache:
    """Evaluations of one task, cached in a JSON file by a key naming what and how, so a report is
    cheap to redo and an interrupted one continues."""

    def __init__(self, path: Path):
        self.path = path
        self.saved = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, compute) -> dict:
        if key not in self.saved:
            res = compute()
            self.saved[key] = {k: res[k] for k in ("mean", "std", "policy_std", "per_policy") if k in res}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.saved, indent=1))
        return self.saved[key]


def evaluate_task(args, task: str) -> dict:
    """Every number of one task's tables (see the module doc)."""
    from obd_fast.data import load_dataset
    from obd_fast.evaluate import (ARCHS, OPTIMIZERS, evaluate_bc_full, evaluate_synset, evaluate_teacher,
                                   random_selection)
    from obd_fast.teacher import load_teacher

    env, root = TASKS[task], Path(args.root)
    cache = EvalCache(root / task / "evals.json")
    proto = dict(episodes=args.episodes, policies=args.policies, env_seed=FINAL_ENV_SEED)
    tag = f"p{args.policies}-e{args.episodes}-env{FINAL_ENV_SEED}"
    out = {"runs": {}, "long": {}, "ensemble": {}, "cross": {}}
    first = None
    for objective in OBJECTIVES:
        for seed in args.seeds:
            for s, f in synset_files(run_dir(root, task, objective, seed)).items():
                syn = load_synset(f)
                if syn.step != s or s < MILESTONE:
                    continue  # a run still short of the milestone
                first = first or syn
                res = cache.get(f"{objective}-s{seed}-step{s}-{tag}",
                                lambda: evaluate_synset(syn, env, seed=seed, **proto))
                curve = [(h["step"], h["score_mean"]) for h in syn.history
                         if h.get("score_mean") is not None and h["step"] <= s]
                row = dict(seed=seed, step=s, score=res["mean"], policy_std=res["policy_std"], curve=curve)
                (out["runs"] if s == MILESTONE else out["long"]).setdefault(objective, []).append(row)
                if s != MILESTONE:
                    continue
                ens = cache.get(f"{objective}-s{seed}-step{s}-ensemble{args.ensemble}-p3-e{args.episodes}",
                                lambda: evaluate_synset(syn, env, episodes=args.episodes, policies=3,
                                                        ensemble=args.ensemble, seed=seed, env_seed=FINAL_ENV_SEED))
                out["ensemble"].setdefault(objective, []).append(dict(seed=seed, score=ens["mean"]))
                if objective == "av-pbc":
                    cells = [(a, "sgd") for a in ARCHS] + [("mlp3", o) for o in OPTIMIZERS if o != "sgd"]
                    for arch, opt in cells:
                        r = cache.get(f"{objective}-s{seed}-step{s}-{arch}-{opt}-p3-e{args.episodes}",
                                      lambda: evaluate_synset(syn, env, episodes=args.episodes, policies=3, arch=arch,
                                                              optimizer=opt, seed=seed, env_seed=FINAL_ENV_SEED))
                        out["cross"].setdefault(f"{arch}/{opt}", []).append(dict(seed=seed, score=r["mean"]))
    if first is None:
        return out
    data = load_dataset(data_source(task))
    # random selection: many subsets, each with its own BC policies; subset s is the starting set of seed s
    for s in range(max(args.subsets, max(args.seeds) + 1)):
        start = random_selection(data, len(first), seed=s, normalizer=first.normalizer, spec=first.spec)
        res = cache.get(f"random-s{s}-{tag}", lambda: evaluate_synset(start, env, seed=s, **proto))
        out["runs"].setdefault("random", []).append(dict(seed=s, step=0, score=res["mean"],
                                                        policy_std=res["policy_std"], curve=[]))
    out["bc"] = cache.get(f"bc-full-{tag}-steps{args.bc_steps}",
                          lambda: evaluate_bc_full(data, env, seed=0, steps=args.bc_steps, **proto))
    teacher = load_teacher(str(teacher_file(task)))
    out["teacher"] = cache.get(f"teacher-e{args.policies * args.episodes}-env{FINAL_ENV_SEED}",
                               lambda: evaluate_teacher(teacher, env, episodes=args.policies * args.episodes,
                                                        env_seed=FINAL_ENV_SEED))
    return out


def over_seeds(rows: list) -> tuple:
    v = np.array([r["score"] for r in rows], dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.1f} +- {std:.1f}" if n > 1 else f"{mean:.1f} (one seed)"


def per_seed_differences(runs: dict, objective: str):
    """Each seed's score minus its own starting set's (the random subset of the same seed)."""
    start = {r["seed"]: r["score"] for r in runs.get("random", [])}
    d = np.array([r["score"] - start[r["seed"]] for r in runs.get(objective, []) if r["seed"] in start])
    return d


def task_table(task: str, ev: dict, args) -> str:
    runs = ev["runs"]
    lines = [f"## {task}-medium (Gymnasium `{TASKS[task]}`)", "",
             "| method | outer steps | normalized return (mean +- std over seeds) | n | per seed | vs own starting set (mean +- std; higher in) |",
             "|---|---|---|---|---|---|"]
    for k in METHODS:
        if k not in runs:
            continue
        mean, std, n = over_seeds(runs[k])
        if k == "random":
            per, diff, steps = f"{n} subsets, min {min(r['score'] for r in runs[k]):.1f}, max {max(r['score'] for r in runs[k]):.1f}", "-", "0"
        else:
            per = ", ".join(f"{r['score']:.1f}" for r in runs[k])
            d = per_seed_differences(runs, k)
            diff = f"{d.mean():+.1f} +- {d.std(ddof=1) if len(d) > 1 else float('nan'):.1f}; {int((d > 0).sum())} of {len(d)}" if len(d) else "-"
            steps = str(MILESTONE)
        lines.append(f"| {LABELS[k]} | {steps} | {fmt(mean, std, n)} | {n} | {per} | {diff} |")
    if all(k in runs for k in METHODS):
        ranked = sorted(METHODS, key=lambda k: over_seeds(runs[k])[0])
        order = "the paper's order" if ranked == list(METHODS) else "not the paper's order"
        order_line = f"Means from lowest to highest: {' < '.join(LABELS[k] for k in ranked)} ({order})."
    else:
        order_line = ""
    if "bc" in ev:
        lines.append(f"| {LABELS['bc']} | - | {ev['bc']['mean']:.1f} +- {ev['bc']['policy_std']:.1f} (over {args.policies} policies) | 1 | - | - |")
    if "teacher" in ev:
        lines.append(f"| {LABELS['teacher']} | - | {ev['teacher']['mean']:.1f} +- {ev['teacher']['std']:.1f} (over episodes) | 1 | - | - |")
    for k, rows in ev["long"].items():
        mean, std, n = over_seeds(rows)
        per = ", ".join(f"{r['score']:.1f} (seed {r['seed']}, step {r['step']})" for r in rows)
        lines.append(f"| {LABELS[k]}, longer run | {', '.join(str(r['step']) for r in rows)} | {fmt(mean, std, n)} | {n} | {per} | - |")
    if order_line:
        lines += ["", order_line]
    if ev["ensemble"]:
        lines += ["", f"Ensemble evaluation (the paper's: each evaluated policy is the mean action of {args.ensemble} "
                  "BC-trained networks; 3 ensembles per set), mean +- std over seeds: "
                  + "; ".join(f"{LABELS[k]} {fmt(*over_seeds(v))}" for k, v in ev["ensemble"].items()) + "."]
    if ev["cross"]:
        cells = sorted(ev["cross"])
        lines += ["", "Av-PBC sets under other architectures (SGD, lr 0.1) and optimizers (the distillation's "
                  "3x256 MLP), 3 BC policies per set, mean +- std over seeds:", "",
                  "| " + " | ".join(cells) + " |", "|" + "---|" * len(cells),
                  "| " + " | ".join(fmt(*over_seeds(ev["cross"][c])) for c in cells) + " |"]
    lines += ["", f"![{task}](results/{task}-medium.png)", ""]
    return "\n".join(lines)


def summary_table(evs: dict) -> str:
    cols = ["random", *OBJECTIVES, "bc", "teacher"]
    lines = ["| dataset | " + " | ".join(LABELS[c] for c in cols) + " | Av-PBC / whole-data BC |",
             "|---|" + "---|" * (len(cols) + 1)]
    avg = {c: [] for c in cols}
    for task, ev in evs.items():
        cells = []
        for c in cols:
            if c in ("bc", "teacher"):
                v = ev.get(c, {}).get("mean")
            else:
                v = over_seeds(ev["runs"][c])[0] if c in ev["runs"] else None
            cells.append("-" if v is None else f"{v:.1f}")
            if v is not None:
                avg[c].append(v)
        ratio = (over_seeds(ev["runs"]["av-pbc"])[0] / ev["bc"]["mean"]) if "av-pbc" in ev["runs"] and "bc" in ev else None
        lines.append(f"| {task}-medium | " + " | ".join(cells) + f" | {'-' if ratio is None else f'{100 * ratio:.0f}%'} |")
    if len(evs) > 1:
        lines.append("| **average** | " + " | ".join(f"{np.mean(v):.1f}" if v else "-" for v in avg.values()) + " | |")
    lines.append("| paper, Table 1 average (9 D4RL datasets) | " + " | ".join(f"{PAPER_AVERAGE[c]}" for c in cols)
                 + f" | {100 * PAPER_AVERAGE['av-pbc'] / PAPER_AVERAGE['bc']:.0f}% |")
    return "\n".join(lines)


def plot_task(task: str, ev: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    runs = ev["runs"]
    fig = Figure(figsize=(11, 4))
    ax_bar, ax_curve = fig.subplots(1, 2)
    names = [k for k in METHODS if k in runs] + [k for k in ("bc", "teacher") if k in ev]
    means, errs = [], []
    for k in names:
        if k in runs:
            m, s, _ = over_seeds(runs[k])
        else:
            m, s = ev[k]["mean"], ev[k]["policy_std"] if k == "bc" else ev[k]["std"]
        means.append(m), errs.append(0.0 if np.isnan(s) else s)
    x = np.arange(len(names))
    ax_bar.bar(x, means, yerr=errs, capsize=4, color=[f"C{i}" for i in range(len(names))])
    for i, k in enumerate(names):
        if k in runs:
            ax_bar.scatter(np.full(len(runs[k]), x[i]), [r["score"] for r in runs[k]], color="k", s=8, zorder=3)
    ax_bar.set_xticks(x, [LABELS[k].replace(" (", "\n(") for k in names], fontsize=8)
    ax_bar.set_ylabel("D4RL normalized return")
    ax_bar.set_title(f"{task}-medium, final sets (error: std over seeds / subsets; dots: each)", fontsize=9)
    start = {r["seed"]: r["score"] for r in runs.get("random", [])}
    for k in OBJECTIVES:
        for j, r in enumerate(runs.get(k, []) + ev["long"].get(k, [])):
            curve = ([(0, start[r["seed"]])] if r["seed"] in start else []) + r["curve"]
            if curve:
                s, v = zip(*curve)
                ax_curve.plot(s, v, color=f"C{names.index(k)}", alpha=0.7, label=LABELS[k] if j == 0 else None)
    if "bc" in ev:
        ax_curve.axhline(ev["bc"]["mean"], ls="--", color="gray", label=LABELS["bc"])
    ax_curve.set_xlabel("outer step")
    ax_curve.set_ylabel("normalized return (periodic evaluation)")
    ax_curve.set_title("learning curves (one line per seed)", fontsize=9)
    ax_curve.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def cmd_report(args) -> int:
    evs = {}
    for task in args.tasks:
        ev = evaluate_task(args, task)
        if ev["runs"]:
            evs[task] = ev
            plot_task(task, ev, RESULTS_DIR / f"{task}-medium.png")
    if not evs:
        print(f"no finished runs under {args.root}: run `python experiments/results.py run` first", file=sys.stderr)
        return 2
    notes = Path(args.notes).read_text().strip() if Path(args.notes).is_file() else ""
    text = RESULTS_TEMPLATE.format(summary=summary_table(evs), tables="\n".join(task_table(t, e, args) for t, e in evs.items()),
                                   policies=args.policies, episodes=args.episodes, env_seed=FINAL_ENV_SEED,
                                   env_last=FINAL_ENV_SEED + args.policies * args.episodes - 1,
                                   milestone=MILESTONE, subsets=args.subsets, ensemble=args.ensemble, notes=notes)
    atomic_write_text(Path(args.out), text)
    print(text)
    return 0


RESULTS_TEMPLATE = """# Results: distillation on the bundled medium datasets

<!-- generated by `python experiments/results.py report`; the discussion comes from experiments/results_notes.md -->

Each synthetic set (256 state-action pairs) is evaluated the paper's way: {policies} fresh policies
trained by BC on it (100 SGD steps, lr 0.1), {episodes} rollouts each, D4RL normalized return. A
seed's score is the mean over its policies; tables give the mean and the standard deviation **over
seeds** (distillation seeds, or random subsets for random selection), not over pooled episodes.
All final evaluations roll out on env seeds {env_seed}-{env_last}, which no
periodic evaluation during a run used (those use seeds 0-9). Random selection is {subsets} random
subsets of 256 real pairs, each with its own BC policies; subset k is also the starting set of the
distillation runs with seed k, so each run is compared with its own start. DBC, PBC and Av-PBC
ran {milestone} outer steps with the paper's settings otherwise (bf16 products on the CPU).

{summary}

{tables}
{notes}

Reproduce (a 2-core CPU; every step is resumable and can be spread over sittings or machines):

    python experiments/results.py run --steps {milestone} --seeds 0 1 2 --parallel 2 --minutes 600
    python experiments/results.py run --tasks hopper --objectives av-pbc --seeds 0 1 --steps 20000
    python experiments/results.py export
    python experiments/results.py report
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="runs/results", help="run directories (default runs/results)")
    common.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    common.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="distill (resumable)", parents=[common])
    r.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    r.add_argument("--steps", type=int, default=MILESTONE)
    r.add_argument("--parallel", type=int, default=2)
    r.add_argument("--shard", type=parse_shard, default=(0, 1), help="I/N: run every N-th job from the I-th")
    r.add_argument("--threads", type=int, default=1, help="torch threads per run")
    r.add_argument("--minutes", type=float, default=600.0, help="wall-clock budget of this call")
    r.add_argument("--eval-every", type=int, default=250)
    r.add_argument("--eval-episodes", type=int, default=10)
    r.add_argument("--precision", default="bf16")
    r.add_argument("--distill-args", default="", help="more `obd-fast distill` arguments, quoted (e.g. for a small test)")
    sub.add_parser("export", help="copy the synthetic sets (and long runs' states) into results/", parents=[common])
    g = sub.add_parser("report", help="evaluate, write RESULTS.md and the plots", parents=[common])
    g.add_argument("--policies", type=int, default=5)
    g.add_argument("--episodes", type=int, default=10)
    g.add_argument("--subsets", type=int, default=20, help="random subsets for random selection")
    g.add_argument("--ensemble", type=int, default=10, help="networks per ensemble (the paper: 10)")
    g.add_argument("--bc-steps", type=int, default=FULL_BC["steps"], help="minibatch steps of whole-dataset BC")
    g.add_argument("--out", default=str(REPO / "RESULTS.md"))
    g.add_argument("--notes", default=str(REPO / "experiments" / "results_notes.md"),
                   help="a markdown file whose text goes under the tables (the discussion)")
    args = p.parse_args(argv)
    return {"run": cmd_run, "export": cmd_export, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
