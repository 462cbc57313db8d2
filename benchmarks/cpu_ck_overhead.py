"""How far checkpointing's extra time is from its floor: the time of the forward steps it redoes.

`checkpoint_every=k` (meta_gradient, fused) recomputes every segment but the last in the reverse
pass, and each recomputed segment skips its last step's weight-gradient products and update. So
its extra time over keeping every step is at least (T - k) inner forward steps (a little less for
the skipped ends). This script times, round-robin in one process: the forward phase alone (the
op's own unroll with the same checkpoints, no reverse), the meta-gradient keeping every step,
and with checkpoint_every=k; it reports the measured extra time next to that floor,
(T - k) / T * forward phase / meta-gradient.

    python benchmarks/cpu_ck_overhead.py                   # hopper and walker2d, T=100, k=10
    python benchmarks/cpu_ck_overhead.py --cases hopper:20 --precision bf16 --rounds 3
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import obd_fast  # noqa: E402
from benchmarks.common import call_meta_gradient, paper_inputs  # noqa: E402


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(env: str, steps: int, k: int, precision: str, rounds: int, **size) -> dict:
    d = paper_inputs(env, steps=steps, **size)

    def forward():
        with torch.no_grad():
            obd_fast.unroll_bc(d["theta0"], d["syn_obs"], d["syn_act"], d["spec"], steps=steps, lr=d["lr"],
                               noise=d["inner_noise"], backend="fused", checkpoint_every=k, precision=precision)

    runs = {
        "forward": forward,
        "meta": lambda: call_meta_gradient(obd_fast.meta_gradient, d, backend="fused", precision=precision),
        "meta_ck": lambda: call_meta_gradient(obd_fast.meta_gradient, d, backend="fused", precision=precision,
                                              checkpoint_every=k),
    }
    for fn in runs.values():  # warm-up: oneDNN primitives, the tape pool
        fn()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(seconds(fn))
    best = {name: min(v) for name, v in times.items()}
    recomputed = (steps - min(k, steps)) / steps  # share of the inner steps done twice
    per_round = [(c / m - 1, recomputed * f / m) for f, m, c in zip(times["forward"], times["meta"], times["meta_ck"])]
    return dict(env=env, steps=steps, k=k, precision=precision, seconds=times, best=best,
                extra=best["meta_ck"] / best["meta"] - 1, floor=recomputed * best["forward"] / best["meta"],
                extra_median=statistics.median(e for e, _ in per_round),
                floor_median=statistics.median(f for _, f in per_round))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="hopper:100,walker2d:100", help="env:T, comma-separated")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--precision", default="native", choices=["native", "bf16"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the timings here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for case in args.cases.split(","):
        env, steps = case.split(":")
        results.append(measure(env, int(steps), args.checkpoint_every, args.precision, args.rounds))
    print(f"{args.threads} torch thread(s), {args.rounds} rounds, precision={args.precision}; best rounds, then the "
          "median of per-round ratios\n")
    print("| case | k | s/step: forward phase / meta / meta ck | extra time of ck | floor: recomputed forward |")
    print("|---|---|---|---|---|")
    for r in results:
        b = r["best"]
        print(f"| {r['env']} T={r['steps']} | {r['k']} | {b['forward']:.3f} / {b['meta']:.3f} / {b['meta_ck']:.3f} "
              f"| +{100 * r['extra']:.1f}%; +{100 * r['extra_median']:.1f}% "
              f"| +{100 * r['floor']:.1f}%; +{100 * r['floor_median']:.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, rounds=args.rounds, results=results), f, indent=1)
    return results


if __name__ == "__main__":
    main()
