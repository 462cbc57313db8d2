"""Where the CPU time of one fused meta-gradient goes: ATen ops by self time and input shape,
next to the 256^3 GEMM rate of this process. For planning the CPU work (issue 3).

    python benchmarks/cpu_profile.py [--env hopper|walker2d] [--steps 100] [--precision native|bf16] [--threads 1]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import obd_fast  # noqa: E402
from benchmarks.common import call_meta_gradient, gemm_rate, meta_gradient_flops, paper_inputs, time_it  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--env", default="hopper")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--precision", default="native")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    d = paper_inputs(args.env, steps=args.steps)
    run = lambda: call_meta_gradient(obd_fast.meta_gradient, d, backend="fused", precision=args.precision)  # noqa
    seconds = time_it(run, reps=3)
    rate = gemm_rate(256, dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32)
    flops = meta_gradient_flops(d["spec"], 256, 2560, args.steps)
    print(f"{args.env} T={args.steps} precision={args.precision} threads={args.threads}: {seconds:.3f} s per step, "
          f"{flops / seconds / 1e9:.0f} GFLOP/s = {100 * flops / seconds / rate:.0f}% of the 256^3 GEMM rate "
          f"({rate / 1e9:.0f} GFLOP/s, same process)")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
