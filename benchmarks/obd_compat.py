"""One outer step of the official OBD code: its plain-autograd BPTT against ``obd_fast.compat.obd.inner_loop``.

Both run ``SynSetBPTT.inner_loop(backbone, backbone_opt, test_dataloader)`` on the same stand-in
(benchmarks/obd_standin.py: the official networks' parameter structure, the official algorithm in
plain autograd) at the paper setting: hopper dimensions, 256 synthetic pairs, 100 inner SGD steps
at lr 0.1, 10 test batches of 256. Each call gets a fresh backbone and optimizer (built outside
the timing, as the official ``forward`` builds them). The variants run round-robin, one torch
thread, and every ratio is taken within a round (see cpu_paired.py for why).

    python benchmarks/obd_compat.py                          # 5 rounds, the three cases below
    python benchmarks/obd_compat.py --rounds 3 --cases gaussian:pbc_q --steps 20

Saves .benchmarks/obd_compat.{md,json}.
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
from benchmarks.obd_standin import paper_problem  # noqa: E402

# policy type : objective -> paper_problem arguments
OBJECTIVES = {
    "pbc_q": dict(match_objective="offline_policy", q_weight=True),    # Av-PBC
    "pbc": dict(match_objective="offline_policy", q_weight=False),
    "dbc": dict(match_objective="offline_data", q_weight=False),
}
CASES = ("gaussian:pbc_q", "gaussian:dbc", "deterministic:dbc")
VARIANTS = {
    "official": None,
    "compat": obd_fast.compat.obd.make_inner_loop(),
    "compat_bf16": obd_fast.compat.obd.make_inner_loop(precision="bf16"),
}
TARGETS = {"compat_x_official": 2.0, "bf16_x_official": 3.5}


def one_step(obd, loader, inner_loop) -> float:
    backbone = obd.create_policy()
    opt = obd.create_optimizer(backbone)
    run = obd.official_style_inner_loop if inner_loop is None else (lambda *a: inner_loop(obd, *a))
    t0 = time.perf_counter()
    run(backbone, opt, loader)
    return time.perf_counter() - t0


def run_case(case: str, rounds: int, steps: int, n_syn: int, batch: int, batches: int) -> dict:
    policy_type, objective = case.split(":")
    obd, loader = paper_problem(policy_type, **OBJECTIVES[objective], n_syn=n_syn, batch=batch, batches=batches,
                                inner_steps=steps)
    names = list(VARIANTS)
    for name in names:  # warm-up: extension, allocator, the tape pool
        one_step(obd, loader, VARIANTS[name])
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order per round
            times[name].append(one_step(obd, loader, VARIANTS[name]))
    ratios = {"compat_x_official": [o / c for o, c in zip(times["official"], times["compat"])],
              "bf16_x_official": [o / b for o, b in zip(times["official"], times["compat_bf16"])]}
    best = {name: min(v) for name, v in times.items()}
    cosine = resampled_noise_cosine(obd, loader) if policy_type == "gaussian" else None
    of_minima = {"compat_x_official": best["official"] / best["compat"],
                 "bf16_x_official": best["official"] / best["compat_bf16"]}
    return dict(case=case, steps=steps, n_syn=n_syn, batch=batch, batches=batches, rounds=rounds, seconds=times,
                ratios=ratios, ratios_of_minima=of_minima, resampled_noise_cosine=cosine)


def resampled_noise_cosine(obd, loader, seed: int = 0) -> dict:
    """Cosine between the official meta-gradient, whose reverse pass draws new noise, and the exact
    one (compat), both from the same forward pass (its noise replayed from one generator)."""
    grads = {}
    for name in ("official", "exact"):
        torch.manual_seed(seed)
        backbone = obd.create_policy()
        opt = obd.create_optimizer(backbone)
        obd.replay_generator, obd.resample_in_reverse = torch.Generator().manual_seed(seed), name == "official"
        torch.manual_seed(seed + 1)
        if name == "official":
            _, (d_obs, d_act), _ = obd.official_style_inner_loop(backbone, opt, loader)
        else:
            loop = obd_fast.compat.obd.make_inner_loop(generator=torch.Generator().manual_seed(seed))
            _, (d_obs, d_act), _ = loop(obd, backbone, opt, loader)
        grads[name] = torch.cat([d_obs.reshape(-1), d_act.reshape(-1)]).double()
    obd.replay_generator, obd.resample_in_reverse = None, False
    a, b = grads["official"], grads["exact"]
    return float(a @ b / (a.norm() * b.norm()))


def table(cases) -> str:
    lines = ["| case | official s | compat s | bf16 s | compat x official | bf16 x official | cosine |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        best = {k: min(v) for k, v in c["seconds"].items()}
        cosine = "-" if c["resampled_noise_cosine"] is None else f"{c['resampled_noise_cosine']:.4f}"
        cells = [f"{c['ratios_of_minima'][k]:.2f}; {statistics.median(c['ratios'][k]):.2f} "
                 f"[{min(c['ratios'][k]):.2f}, {max(c['ratios'][k]):.2f}]" for k in TARGETS]
        lines.append(f"| {c['case']} T={c['steps']} | {best['official']:.3f} | {best['compat']:.3f} | "
                     f"{best['compat_bf16']:.3f} | {cells[0]} | {cells[1]} | {cosine} |")
    lines.append("")
    lines.append("Seconds: best round. Ratios: of the best rounds; median [min, max] of the per-round ratios. "
                 f"Targets: compat >= {TARGETS['compat_x_official']}x, bf16 >= {TARGETS['bf16_x_official']}x. "
                 "Cosine: the official meta-gradient (d syn_obs, d syn_act; its reverse pass draws new noise) "
                 "against the exact one of the same forward pass, float32.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cases", default=",".join(CASES), help="policy_type:objective, comma separated "
                   f"(objectives: {', '.join(OBJECTIVES)})")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--n-syn", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=".benchmarks")
    args = p.parse_args(argv)
    if not obd_fast.fused_available():
        raise SystemExit("obd_fast._C is not built: the compat inner loop would time the reference backend")
    torch.set_num_threads(args.threads)
    cases = [run_case(c, args.rounds, args.steps, args.n_syn, args.batch, args.batches)
             for c in args.cases.split(",")]
    info = dict(threads=args.threads, torch=torch.__version__, build=obd_fast.build_info(), cases=cases)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "obd_compat.json"), "w") as f:
        json.dump(info, f, indent=1)
    md = table(cases)
    with open(os.path.join(args.out, "obd_compat.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
