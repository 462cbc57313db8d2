"""Per-outer-step time of the meta-gradient on the GPU at hand, at the paper setting.

    python benchmarks/gpu_meta_gradient.py [--envs hopper walker2d] [--steps 100] [--json out.json]
    python benchmarks/gpu_meta_gradient.py --replot out.json   # the chart again, no GPU needed

Prints, for each env: paper-style autograd (reference backend), a full create_graph unroll, the
fused op with its inner steps as the grid program's cooperative kernels (the default on CUDA;
eager and captured in a CUDA graph, on one or half a block per multiprocessor, with checkpoints)
and through the ATen path (cuBLAS; eager, graph, graph with tf32 and bf16 products), their ratios,
the achieved TFLOP/s against the measured float32 GEMM rate, peak GPU memory, the implied time of
50k outer steps, and how far the grid program's result is from the ATen path's (a sanity check,
not a test).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import obd_fast  # noqa: E402
from benchmarks.common import (call_meta_gradient, create_graph_meta_gradient, gemm_rate,  # noqa: E402
                               meta_gradient_flops, paper_inputs, time_it)
from obd_fast.graph import MetaGradientGraph  # noqa: E402

GRID = dict(step_kernel="grid")
LIBRARY = dict(step_kernel="library")


def peak_memory(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def graph_time(d, kernel: dict, reps: int, precision: str = "native", checkpoint_every=None):
    """Seconds per replay of a captured meta-gradient, and its outputs."""
    g = MetaGradientGraph(d["spec"], 256, 2560, steps=d["steps"], lr=0.1, precision=precision,
                          checkpoint_every=checkpoint_every, **kernel)
    out = [t.clone() for t in g(d["theta0"], d["syn_obs"], d["syn_act"], d["obs"], d["target"], d["weight"],
                                d["inner_noise"], d["outer_noise"])]
    seconds = time_it(g.replay, reps=max(reps, 20), device="cuda", best=False)
    del g
    return seconds, out


def bench_env(env: str, steps: int, reps: int, sms: int) -> dict:
    d = paper_inputs(env, steps=steps, device="cuda")
    spec = d["spec"]
    flops = meta_gradient_flops(spec, 256, 2560, steps)
    ref = lambda: call_meta_gradient(obd_fast.meta_gradient, d, backend="reference")  # noqa: E731
    unroll = lambda: call_meta_gradient(create_graph_meta_gradient, d)  # noqa: E731
    fused = lambda **kw: call_meta_gradient(obd_fast.meta_gradient, d, backend="fused", **kw)  # noqa: E731
    r = {"env": env, "steps": steps, "gflop_per_step": flops / 1e9}
    r["reference_s"] = time_it(ref, reps=2, device="cuda")
    r["create_graph_s"] = time_it(unroll, reps=2, device="cuda")
    library = lambda **kw: fused(**LIBRARY, **kw)  # noqa: E731
    grid = lambda **kw: fused(**GRID, **kw)  # noqa: E731
    r["library_eager_s"] = time_it(library, reps=reps, device="cuda", best=False)
    lib_out = library()
    r["mem_library_mb"] = peak_memory(library)
    r["grid_eager_s"] = time_it(grid, reps=reps, device="cuda", best=False)
    r["grid_ck10_eager_s"] = time_it(lambda: grid(checkpoint_every=10), reps=reps, device="cuda", best=False)
    r["mem_grid_mb"] = peak_memory(grid)
    print(f"# {env}: grid program, time per phase", file=sys.stderr, flush=True)
    grid(grid_profile=True)
    r["mem_grid_ck10_mb"] = peak_memory(lambda: grid(checkpoint_every=10))
    r["mem_reference_mb"] = peak_memory(ref)
    r["mem_create_graph_mb"] = peak_memory(unroll)
    variants = [("grid_graph_s", GRID, "native", None),
                ("grid_half_blocks_graph_s", dict(GRID, grid_blocks=sms // 2), "native", None),
                ("grid_ck10_graph_s", GRID, "native", 10), ("library_graph_s", LIBRARY, "native", None),
                ("library_graph_tf32_s", LIBRARY, "tf32", None), ("library_graph_bf16_s", LIBRARY, "bf16", None)]
    for name, kernel, precision, ck in variants:
        try:
            r[name], out = graph_time(d, kernel, reps, precision, ck)
        except Exception as e:  # one variant failing must not hide the others' numbers
            print(f"# {env}: {name} failed: {type(e).__name__}: {e}", flush=True)
            r[name], out = float("nan"), None
        if name == "grid_graph_s" and out is not None:
            r[name[:-8] + "_vs_library_rel_err"] = [((a.double() - b.double()).norm() / b.double().norm()).item()
                                                    for a, b in zip(out, lib_out)]
    best = min(v for k, v in r.items() if k.startswith("grid") and k.endswith("graph_s") and v == v)
    r["best_grid_graph_s"] = best
    r["tflops_best_grid_graph"] = flops / best / 1e12
    r["speedup_best_grid_graph_vs_reference"] = r["reference_s"] / best
    r["speedup_best_grid_graph_vs_library_graph"] = r["library_graph_s"] / best
    r["speedup_library_graph_vs_reference"] = r["reference_s"] / r["library_graph_s"]
    r["minutes_50k_best_grid_graph"] = 50000 * best / 60
    r["minutes_50k_library_graph"] = 50000 * r["library_graph_s"] / 60
    r["hours_50k_reference"] = 50000 * r["reference_s"] / 3600
    return r


# Bars of the chart: (result key, label).
CHART = [("reference_s", "autograd (reference)"), ("create_graph_s", "create_graph unroll"),
         ("library_graph_s", "fused ATen + graph"), ("library_graph_tf32_s", "fused ATen + graph, tf32"),
         ("grid_eager_s", "grid program, eager"), ("grid_graph_s", "grid program + graph"),
         ("grid_ck10_graph_s", "grid + graph, ck10")]
TARGET_MS = 10.0  # issue 7: fused + graph <= 10 ms per outer step on one H100


def plot(info: dict, path: str) -> None:
    """Per-outer-step time of each variant per env (log scale), with the issue's target."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart")
        return
    results = info["results"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(results))
    for n, r in enumerate(results):
        ms = [1e3 * r.get(key, float("nan")) for key, _ in CHART]
        xs = [i + (n - (len(results) - 1) / 2) * width for i in range(len(CHART))]
        ax.bar(xs, ms, width, label=f"{r['env']} (T={r['steps']})")
        for x, v in zip(xs, ms):
            if v == v:
                ax.text(x, v * 1.05, f"{v:.0f}" if v >= 100 else f"{v:.1f}", ha="center", fontsize=7)
    ax.axhline(TARGET_MS, color="red", linestyle="--", linewidth=1, label=f"target {TARGET_MS:.0f} ms")
    ax.set_yscale("log")
    ax.set_xticks(range(len(CHART)))
    ax.set_xticklabels([label for _, label in CHART], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("ms per outer step (meta-gradient)")
    ax.set_title(f"Paper setting on {info['device']}, torch {info['torch']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["hopper", "walker2d"])
    p.add_argument("--steps", type=int, nargs="+", default=[100])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None, help="save the results here (and the chart next to it, .png)")
    p.add_argument("--replot", default=None, metavar="JSON", help="only draw the chart of a saved run")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f), os.path.splitext(args.replot)[0] + ".png")
        return
    if not torch.cuda.is_available():
        sys.exit("gpu_meta_gradient.py needs a CUDA device")
    if "cuda" not in obd_fast.build_info():
        sys.exit(f"obd_fast._C has no CUDA kernels: {obd_fast.build_info()}")
    gemm256 = gemm_rate(256, device="cuda")
    gemm4k = gemm_rate(4096, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "multiprocessors": sms,
            "gemm256_fp32_tflops": gemm256 / 1e12, "gemm4096_fp32_tflops": gemm4k / 1e12, "results": []}
    print(f"# {info['device']} ({sms} SMs), torch {info['torch']}: fp32 GEMM 256^3 {gemm256 / 1e12:.2f} TFLOP/s, "
          f"4096^3 {gemm4k / 1e12:.1f} TFLOP/s")
    cols = ["reference_s", "create_graph_s", "library_eager_s", "library_graph_s", "library_graph_tf32_s",
            "library_graph_bf16_s", "grid_eager_s", "grid_ck10_eager_s", "grid_graph_s", "grid_half_blocks_graph_s",
            "grid_ck10_graph_s"]
    print("| env | T | " + " | ".join(c[:-2] + " ms" for c in cols) + " | best grid graph x vs reference | "
          "x vs library graph | TFLOP/s | 50k steps | mem ref / library / grid / grid ck10 MB |")
    print("|---|---|" + "---|" * (len(cols) + 5))
    for env in args.envs:
        for steps in args.steps:
            r = bench_env(env, steps, args.reps, sms)
            info["results"].append(r)
            print(f"| {env} | {steps} | " + " | ".join(f"{1e3 * r[c]:.2f}" for c in cols) +
                  f" | {r['speedup_best_grid_graph_vs_reference']:.0f} | "
                  f"{r['speedup_best_grid_graph_vs_library_graph']:.1f} | {r['tflops_best_grid_graph']:.2f} | "
                  f"{r['minutes_50k_best_grid_graph']:.1f} min | {r['mem_reference_mb']:.0f} / "
                  f"{r['mem_library_mb']:.0f} / {r['mem_grid_mb']:.0f} / {r['mem_grid_ck10_mb']:.0f} |", flush=True)
            print(f"# {env}: grid vs library (float32) relative difference, loss / d_obs / d_act: "
                  + ", ".join(f"{e:.1e}" for e in r.get("grid_vs_library_rel_err", [])), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
        plot(info, os.path.splitext(args.json)[0] + ".png")


if __name__ == "__main__":
    main()
