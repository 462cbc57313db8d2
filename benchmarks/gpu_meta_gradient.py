"""Per-outer-step time of the meta-gradient on the GPU at hand, at the paper setting.

    python benchmarks/gpu_meta_gradient.py [--envs hopper walker2d] [--steps 100] [--json out.json]

Prints, for each env: paper-style autograd (reference backend), a full create_graph unroll,
fused eager, fused + CUDA graph (float32 and bf16 products), their ratios, the achieved TFLOP/s
against the measured float32 GEMM rate, peak GPU memory, and the implied time of 50k outer steps.
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


def peak_memory(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def bench_env(env: str, steps: int, reps: int) -> dict:
    d = paper_inputs(env, steps=steps, device="cuda")
    spec = d["spec"]
    flops = meta_gradient_flops(spec, 256, 2560, steps)
    ref = lambda: call_meta_gradient(obd_fast.meta_gradient, d, backend="reference")  # noqa: E731
    unroll = lambda: call_meta_gradient(create_graph_meta_gradient, d)  # noqa: E731
    eager = lambda: call_meta_gradient(obd_fast.meta_gradient, d, backend="fused")  # noqa: E731
    ck10 = lambda: call_meta_gradient(obd_fast.meta_gradient, d, backend="fused", checkpoint_every=10)  # noqa: E731
    r = {"env": env, "steps": steps, "gflop_per_step": flops / 1e9}
    r["reference_s"] = time_it(ref, reps=2, device="cuda")
    r["create_graph_s"] = time_it(unroll, reps=2, device="cuda")
    r["fused_eager_s"] = time_it(eager, reps=reps, device="cuda", best=False)
    r["fused_ck10_eager_s"] = time_it(ck10, reps=reps, device="cuda", best=False)
    for name, precision in (("fused_graph_s", "native"), ("fused_graph_tf32_s", "tf32"),
                            ("fused_graph_bf16_s", "bf16")):
        g = MetaGradientGraph(spec, 256, 2560, steps=steps, lr=0.1, precision=precision)
        g(d["theta0"], d["syn_obs"], d["syn_act"], d["obs"], d["target"], d["weight"], d["inner_noise"],
          d["outer_noise"])
        r[name] = time_it(g.replay, reps=max(reps, 20), device="cuda", best=False)
        del g
    r["mem_reference_mb"] = peak_memory(ref)
    r["mem_create_graph_mb"] = peak_memory(unroll)
    r["mem_fused_mb"] = peak_memory(eager)
    r["mem_fused_ck10_mb"] = peak_memory(ck10)
    r["tflops_graph"] = flops / r["fused_graph_s"] / 1e12
    r["speedup_graph_vs_reference"] = r["reference_s"] / r["fused_graph_s"]
    r["speedup_graph_vs_create_graph"] = r["create_graph_s"] / r["fused_graph_s"]
    r["speedup_eager_vs_reference"] = r["reference_s"] / r["fused_eager_s"]
    r["hours_50k_graph"] = 50000 * r["fused_graph_s"] / 3600
    r["hours_50k_graph_bf16"] = 50000 * r["fused_graph_bf16_s"] / 3600
    r["hours_50k_graph_tf32"] = 50000 * r["fused_graph_tf32_s"] / 3600
    r["speedup_graph_tf32_vs_reference"] = r["reference_s"] / r["fused_graph_tf32_s"]
    r["hours_50k_reference"] = 50000 * r["reference_s"] / 3600
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["hopper", "walker2d"])
    p.add_argument("--steps", type=int, nargs="+", default=[100])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_meta_gradient.py needs a CUDA device")
    if "cuda" not in obd_fast.build_info():
        sys.exit(f"obd_fast._C has no CUDA kernels: {obd_fast.build_info()}")
    gemm256 = gemm_rate(256, device="cuda")
    gemm4k = gemm_rate(4096, device="cuda")
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "gemm256_fp32_tflops": gemm256 / 1e12, "gemm4096_fp32_tflops": gemm4k / 1e12, "results": []}
    print(f"# {info['device']}, torch {info['torch']}: fp32 GEMM 256^3 {gemm256 / 1e12:.2f} TFLOP/s, "
          f"4096^3 {gemm4k / 1e12:.1f} TFLOP/s")
    print("| env | T | reference ms | create_graph ms | fused eager ms | fused graph ms | graph tf32 ms | graph bf16 ms | "
          "x vs reference | x vs create_graph | TFLOP/s (graph) | 50k steps (graph) | mem ref / fused / ck10 MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for env in args.envs:
        for steps in args.steps:
            r = bench_env(env, steps, args.reps)
            info["results"].append(r)
            print(f"| {env} | {steps} | {1e3 * r['reference_s']:.1f} | {1e3 * r['create_graph_s']:.1f} | "
                  f"{1e3 * r['fused_eager_s']:.2f} | {1e3 * r['fused_graph_s']:.2f} | "
                  f"{1e3 * r['fused_graph_tf32_s']:.2f} | "
                  f"{1e3 * r['fused_graph_bf16_s']:.2f} | {r['speedup_graph_vs_reference']:.0f} | "
                  f"{r['speedup_graph_vs_create_graph']:.0f} | {r['tflops_graph']:.2f} | "
                  f"{60 * r['hours_50k_graph']:.1f} min | {r['mem_reference_mb']:.0f} / {r['mem_fused_mb']:.0f} / "
                  f"{r['mem_fused_ck10_mb']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
