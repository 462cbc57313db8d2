"""Where the GPU time of one fused meta-gradient goes: kernels by total CUDA time, and how many
launches each inner step makes. For planning kernel fusion (issue 7).

    python benchmarks/gpu_profile.py [--steps 10] [--precision native|tf32|bf16] [--step-kernel library|grid|auto]

It profiles the ATen path (--step-kernel library, the default here). With the grid program (the
default on CUDA) the inner steps are two cooperative kernels per segment, so this table says
little about them: grid_profile=True prints their per-phase times instead
(benchmarks/gpu_meta_gradient.py does both).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import obd_fast  # noqa: E402
from benchmarks.common import call_meta_gradient, paper_inputs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", default="native")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--step-kernel", default="library", choices=("library", "grid", "auto"))
    args = p.parse_args(argv)
    d = paper_inputs("hopper", steps=args.steps, device="cuda")
    run = lambda: call_meta_gradient(obd_fast.meta_gradient, d, backend="fused", precision=args.precision,  # noqa
                                     step_kernel=args.step_kernel)
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    launches = sum(e.count for e in events)
    print(f"precision={args.precision}, T={args.steps}: {launches} kernels, {launches / args.steps:.0f} per inner "
          f"step, {total / 1e3:.2f} ms of kernel time ({total / launches:.1f} us per kernel)")
    print("| kernel | count | total us | us each |")
    print("|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:args.rows]:
        print(f"| {e.key[:90]} | {e.count} | {e.self_device_time_total:.0f} | "
              f"{e.self_device_time_total / e.count:.1f} |")


if __name__ == "__main__":
    main()
