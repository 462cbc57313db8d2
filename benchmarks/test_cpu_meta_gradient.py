"""CPU benchmark of one outer step (meta-gradient), fused vs the two autograd baselines.

    ./run.sh bench                      # or: python -m pytest benchmarks -o addopts=""
    ./run.sh bench -k "hopper and T100" # one case

The side-by-side table (ratios, achieved GFLOP/s against the fp32 GEMM rate measured in the same
run) is printed at the end and saved in .benchmarks/ with a chart.
"""
import os
import subprocess
import sys

import pytest
import torch

import obd_fast
from benchmarks import conftest
from benchmarks.common import (call_meta_gradient, create_graph_meta_gradient, gemm_rate, meta_gradient_flops,
                               paper_inputs)

pytestmark = pytest.mark.skipif(not obd_fast.fused_available(), reason="obd_fast._C is not built")

VARIANTS = {
    "reference": dict(backend="reference"),
    "create_graph": None,
    "fused": dict(backend="fused"),
    "fused_ck10": dict(backend="fused", checkpoint_every=10),
    "fused_bf16": dict(backend="fused", precision="bf16"),
}
ROUNDS = {"reference": 2, "create_graph": 2}


@pytest.fixture(scope="session", autouse=True)
def gemm_rates():
    conftest.GEMM["fp32_gflops"] = gemm_rate(256) / 1e9
    conftest.GEMM["bf16_gflops"] = gemm_rate(256, dtype=torch.bfloat16) / 1e9


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("steps", [100, 20], ids=["T100", "T20"])
@pytest.mark.parametrize("env", ["hopper", "walker2d"])
def test_meta_gradient(benchmark, env, steps, variant):
    d = paper_inputs(env, steps=steps)
    kw = VARIANTS[variant]
    fn = (lambda: call_meta_gradient(create_graph_meta_gradient, d)) if kw is None else \
        (lambda: call_meta_gradient(obd_fast.meta_gradient, d, **kw))
    group = f"{env}-T{steps}"
    benchmark.group = group
    benchmark.pedantic(fn, rounds=ROUNDS.get(variant, 4), warmup_rounds=1, iterations=1)
    conftest.RESULTS[(group, variant)] = dict(seconds=benchmark.stats.stats.min,
                                              gflop=meta_gradient_flops(d["spec"], 256, 2560, steps) / 1e9)


# VmHWM (peak RSS of this process image) rather than ru_maxrss, which Linux carries over from the
# parent across fork and exec.
MEMORY_SCRIPT = r"""
import sys, torch, obd_fast
def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
sys.path.insert(0, {root!r})
from benchmarks.common import paper_inputs, call_meta_gradient, create_graph_meta_gradient
d = paper_inputs("hopper", steps=100)
base = hwm_mb()
variant = {variant!r}
if variant == "create_graph":
    call_meta_gradient(create_graph_meta_gradient, d)
else:
    call_meta_gradient(obd_fast.meta_gradient, d, **{kw!r})
print(hwm_mb() - base)
"""


def test_peak_memory(capsys):
    """Peak RSS growth of one paper-setting step per variant, each in a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    peaks = {}
    for variant, kw in VARIANTS.items():
        code = MEMORY_SCRIPT.format(root=root, variant=variant, kw=kw or {})
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        peaks[variant] = float(out.stdout.strip().splitlines()[-1])
    conftest.GEMM["peak_rss_growth_mb_hopper_T100"] = peaks
    with capsys.disabled():
        print("\npeak RSS growth per outer step (hopper, T=100), MB: "
              + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    assert peaks["fused_ck10"] < peaks["fused"]
