"""The longer experiment behind RESULTS.md: DBC, PBC and Av-PBC on the bundled hopper-medium data,
several seeds each, then the paper's Table-1 style summary.

    # distill (resumable: run the same command again to continue; stops cleanly at --minutes)
    python experiments/results.py run --steps 2000 --seeds 0 1 2 --parallel 2 --minutes 600
    # evaluate the final synthetic sets and random selection, write RESULTS.md and results.png
    python experiments/results.py report

``run`` starts one ``obd-fast distill`` process per (objective, seed), ``--parallel`` at a time
with one torch thread each (on a small CPU two single-thread runs outdo one two-thread run), seed
0 of every objective first so that a short budget still gives one of each. Each process gets
what is left of ``--minutes`` as its own ``--max-minutes`` and saves before it stops; a run that
already reached ``--steps`` is skipped. Logs: ``ROOT/logs/``.

``report`` evaluates every run's final synthetic set with ``--policies`` BC-trained policies x
``--episodes`` rollouts (cached in the run directory by step, so a report is cheap to redo), does
the same for random selection (256 random real pairs, the runs' starting point) with each seed,
and writes the table (mean and spread over seeds of each seed's mean normalized return), the
learning curves and the comparison with the paper's ordering.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from obd_fast.checkpoint import atomic_write, atomic_write_text  # noqa: E402
from obd_fast.demo import BUNDLED_DATA, BUNDLED_TEACHER, ENV_ID, LABELS, PAPER_AVERAGE  # noqa: E402

OBJECTIVES = ("dbc", "pbc", "av-pbc")
METHODS = ("random", *OBJECTIVES)  # the table's rows, in the paper's order


def run_name(objective: str, seed: int) -> str:
    return f"{objective}-s{seed}"


def reached_step(run_dir: Path) -> int:
    """Outer steps a run has saved (0 when it has not started)."""
    from obd_fast.distill import load_state

    state = run_dir / "state.pt"
    return int(load_state(state)["step"]) if state.exists() else 0


def take_lock(path: Path):
    """An open file holding an exclusive lock on ``path`` (None when another process holds it), so
    that two schedulers never drive the same run; the lock ends with the file or the process."""
    import fcntl

    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def distill_command(args, objective: str, seed: int, minutes: float) -> list:
    out = Path(args.root) / run_name(objective, seed)
    # DBC needs no teacher; without one the run normalizes states with the data's statistics, the
    # same numbers a teacher trained on this data carries
    teacher = [] if objective == "dbc" else ["--teacher", args.teacher]
    cmd = [sys.executable, "-m", "obd_fast.cli", "--threads", str(args.threads), "distill", "--data", args.data,
           *teacher, "--objective", objective, "--steps", str(args.steps), "--seed", str(seed),
           "--out", str(out), "--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes),
           "--precision", args.precision, "--max-minutes", f"{minutes:.2f}", "--no-progress"]
    if (out / "state.pt").exists():
        cmd.append("--resume")
    return cmd + shlex.split(args.distill_args)


def cmd_run(args) -> int:
    root = Path(args.root)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    jobs = [(o, s) for s in args.seeds for o in args.objectives]
    jobs = [j for j in jobs if reached_step(root / run_name(*j)) < args.steps]
    deadline = time.time() + args.minutes * 60
    running = []
    print(f"{len(jobs)} run(s) to go, {args.parallel} at a time, until {time.strftime('%H:%M', time.localtime(deadline))}")
    while jobs or running:
        still = []
        for p, name, lock in running:
            if p.poll() is None:
                still.append((p, name, lock))
            else:
                lock.close()  # releases the lock
                print(f"{name}: exited with {p.returncode}", flush=True)
        running = still
        left = (deadline - time.time()) / 60
        while jobs and len(running) < args.parallel and left > 2:
            objective, seed = jobs.pop(0)
            name = run_name(objective, seed)
            lock = take_lock(root / "logs" / f"{name}.lock")
            if lock is None:
                print(f"{name}: another process is running it; skipped")
                continue
            with open(root / "logs" / f"{name}.log", "a") as log:  # the child keeps its own handle
                log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M')} start, {left:.1f} min left\n")
                log.flush()
                p = subprocess.Popen(distill_command(args, objective, seed, left - 1), cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT)
            running.append((p, name, lock))
            print(f"started {name} (pid {p.pid})", flush=True)
        if not running:
            break
        time.sleep(5)
    for name in (run_name(o, s) for s in args.seeds for o in args.objectives):
        print(f"{name}: {reached_step(root / name)}/{args.steps} steps")
    return 0


# ------------------------------------------------------------------------------------ report
def final_evaluation(syn, cache: Path, episodes: int, policies: int, seed: int) -> dict:
    """evaluate_synset of ``syn``, cached in ``cache`` under its step and the protocol."""
    from obd_fast.evaluate import evaluate_synset

    key = f"step{syn.step}-p{policies}-e{episodes}"
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in saved:
        res = evaluate_synset(syn, ENV_ID, episodes=episodes, policies=policies, seed=seed)
        saved[key] = dict(mean=res["mean"], policy_std=res["policy_std"], per_policy=res["per_policy"])
        atomic_write_text(cache, json.dumps(saved, indent=1))
    return saved[key]


def collect(args) -> dict:
    from obd_fast.data import load_dataset
    from obd_fast.evaluate import random_selection
    from obd_fast.synset import SyntheticSet

    root = Path(args.root)
    rows, first = {}, None
    for objective in OBJECTIVES:
        for seed in args.seeds:
            run_dir = root / run_name(objective, seed)
            if not (run_dir / "synset.pt").exists():
                continue
            syn = SyntheticSet.load(run_dir / "synset.pt")
            first = first or syn
            res = final_evaluation(syn, run_dir / "final_eval.json", args.episodes, args.policies, seed)
            curve = [(h["step"], h["score_mean"]) for h in syn.history if h.get("score_mean") is not None]
            rows.setdefault(objective, []).append(dict(seed=seed, step=syn.step, score=res["mean"],
                                                       policy_std=res["policy_std"], curve=curve))
    if first is not None:
        # random selection with the runs' own normalization and network (their starting point)
        data = load_dataset(args.data, env_id=ENV_ID if args.data == BUNDLED_DATA else None)
        for seed in args.seeds:
            start = random_selection(data, len(first), seed=seed, normalizer=first.normalizer, spec=first.spec)
            res = final_evaluation(start, root / f"random-s{seed}.json", args.episodes, args.policies, seed)
            rows.setdefault("random", []).append(dict(seed=seed, step=0, score=res["mean"],
                                                      policy_std=res["policy_std"], curve=[]))
    return rows


def summarize(rows: dict) -> dict:
    out = {}
    for key, runs in rows.items():
        scores = np.array([r["score"] for r in runs])
        out[key] = dict(mean=float(scores.mean()), spread=float(scores.std()), seeds=[r["seed"] for r in runs],
                        per_seed=[float(s) for s in scores], policy_std=[float(r["policy_std"]) for r in runs],
                        steps=[r["step"] for r in runs])
    return out


def ordering_text(summary: dict) -> str:
    have = [k for k in METHODS if k in summary]
    ranked = sorted(have, key=lambda k: summary[k]["mean"])
    lines = [f"Measured order (lowest to highest mean): {' < '.join(LABELS[k] for k in ranked)}.",
             f"Paper's Table 1 order: {' < '.join(LABELS[k] for k in have)}: "
             + ("**reproduced**." if ranked == have else "**not reproduced** here.")]
    if any(len(summary[k].get("seeds", [0, 1])) < 2 for k in have):
        lines.append("With one seed the order is within the spread of the BC policies: not conclusive yet.")
    if "random" in summary:
        above = [LABELS[k] for k in OBJECTIVES if k in summary and summary[k]["mean"] > summary["random"]["mean"]]
        lines.append(f"Above random selection: {', '.join(above) if above else 'none'}.")
        paired = paired_text(summary)
        if paired:
            lines.append(paired)
    return "\n".join(lines)


def paired_text(summary: dict) -> str:
    """Each objective against its own starting point, seed by seed: a run of seed s starts from
    the random selection of seed s, so the per-seed difference removes the (large) spread that the
    choice of starting pairs adds to both."""
    rand = dict(zip(summary["random"].get("seeds", []), summary["random"].get("per_seed", [])))
    parts = []
    for k in OBJECTIVES:
        if k not in summary:
            continue
        diffs = [v - rand[s] for s, v in zip(summary[k].get("seeds", []), summary[k].get("per_seed", [])) if s in rand]
        if len(diffs) < 2:
            continue
        d = np.array(diffs)
        parts.append(f"{LABELS[k]} {d.mean():+.1f} +- {d.std():.1f} (higher in {int((d > 0).sum())} of {len(d)} seeds)")
    if not parts:
        return ""
    return ("Against its own starting set (each seed's random selection), mean +- std over seeds of the "
            "difference: " + "; ".join(parts) + ".")


def plot(rows: dict, summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax_bar, ax_curve = fig.subplots(1, 2)
    order = [k for k in METHODS if k in summary]
    x = np.arange(len(order))
    one_seed = all(len(summary[k]["seeds"]) == 1 for k in order)
    err = [summary[k]["policy_std"][0] if one_seed else summary[k]["spread"] for k in order]
    ax_bar.bar(x, [summary[k]["mean"] for k in order], yerr=err, capsize=4, color=[f"C{i}" for i in range(len(order))])
    for i, k in enumerate(order):
        ax_bar.scatter(np.full(len(summary[k]["per_seed"]), x[i]), summary[k]["per_seed"], color="k", s=10, zorder=3)
    ax_bar.set_xticks(x, [LABELS[k] for k in order])
    ax_bar.set_ylabel("D4RL normalized return")
    ax_bar.set_title("final synthetic sets (error: std over " + ("its BC policies)" if one_seed else "seeds; dots: seeds)"))
    start = {r["seed"]: r["score"] for r in rows.get("random", [])}  # every run starts from its seed's random selection
    for k in (o for o in OBJECTIVES if o in rows):
        for j, r in enumerate(rows[k]):
            curve = ([(0, start[r["seed"]])] if r["seed"] in start else []) + r["curve"]
            if curve:
                s, v = zip(*curve)
                ax_curve.plot(s, v, color=f"C{order.index(k)}", alpha=0.8, label=LABELS[k] if j == 0 else None)
    ax_curve.set_xlabel("outer step")
    ax_curve.set_ylabel("normalized return (periodic evaluation)")
    ax_curve.set_title("learning curves (one line per seed)")
    ax_curve.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def cmd_report(args) -> int:
    rows = collect(args)
    if not rows:
        print(f"no finished runs under {args.root}: run `python experiments/results.py run` first", file=sys.stderr)
        return 2
    summary = summarize(rows)
    out = Path(args.out)
    plot(rows, summary, out.parent / args.plot)
    table = ["| method | seeds | outer steps | normalized return, mean +- std over seeds | per seed (mean +- std over its BC policies) | paper Table 1 (avg of 9 datasets) |",
             "|---|---|---|---|---|---|"]
    for k in METHODS:
        if k in summary:
            s = summary[k]
            steps = "-" if k == "random" else ", ".join(str(v) for v in s["steps"])
            spread = f" +- {s['spread']:.1f}" if len(s["seeds"]) > 1 else " (one seed)"
            per_seed = ", ".join(f"{v:.1f} +- {p:.1f}" for v, p in zip(s["per_seed"], s["policy_std"]))
            table.append(f"| {LABELS[k]} | {len(s['seeds'])} | {steps} | {s['mean']:.1f}{spread} | {per_seed} | "
                         f"{PAPER_AVERAGE[k]} |")
    notes = Path(args.notes).read_text().strip() if Path(args.notes).is_file() else ""
    text = RESULTS_TEMPLATE.format(table="\n".join(table), ordering=ordering_text(summary), policies=args.policies,
                                   episodes=args.episodes, plot=args.plot, notes=notes)
    atomic_write_text(out, text)
    atomic_write_text(Path(args.root) / "summary.json", json.dumps(summary, indent=1))
    print(text)
    return 0


RESULTS_TEMPLATE = """# Results: distillation on the bundled hopper-medium data

<!-- generated by `python experiments/results.py report`; the discussion comes from experiments/results_notes.md -->

Each synthetic set (256 state-action pairs) is evaluated the paper's way: {policies} fresh policies
trained by BC on it (100 SGD steps, lr 0.1), {episodes} rollouts each in Gymnasium `Hopper-v5`, D4RL
normalized return; a seed's score is the mean over its policies, and the table gives mean and
standard deviation over seeds. Random selection is the runs' common starting point (256 random
real pairs, the same normalization and network).

{table}

{ordering}

![results]({plot})

{notes}

Reproduce (a 2-core CPU; resumable, so it can be spread over several sittings):

    python experiments/results.py run --steps 2000 --seeds 0 1 2 --parallel 2 --minutes 600
    python experiments/results.py report
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="runs/results", help="run directories (default runs/results)")
    common.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    common.add_argument("--data", default=BUNDLED_DATA)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="distill (resumable)", parents=[common])
    r.add_argument("--teacher", default=str(BUNDLED_TEACHER))
    r.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    r.add_argument("--steps", type=int, default=2000)
    r.add_argument("--parallel", type=int, default=2)
    r.add_argument("--threads", type=int, default=1, help="torch threads per run")
    r.add_argument("--minutes", type=float, default=600.0, help="wall-clock budget of this call")
    r.add_argument("--eval-every", type=int, default=250)
    r.add_argument("--eval-episodes", type=int, default=10)
    r.add_argument("--precision", default="bf16")
    r.add_argument("--distill-args", default="", help="more `obd-fast distill` arguments, quoted (e.g. for a small test)")
    g = sub.add_parser("report", help="evaluate the final sets, write RESULTS.md and its plot", parents=[common])
    g.add_argument("--policies", type=int, default=5)
    g.add_argument("--episodes", type=int, default=10)
    g.add_argument("--out", default=str(REPO / "RESULTS.md"))
    g.add_argument("--plot", default="results.png", help="written beside --out")
    g.add_argument("--notes", default=str(REPO / "experiments" / "results_notes.md"),
                   help="a markdown file whose text goes under the plot (the discussion)")
    args = p.parse_args(argv)
    return cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
