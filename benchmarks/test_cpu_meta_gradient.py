"""CPU benchmark of one outer step (meta-gradient), fused vs the two autograd baselines.

    ./run.sh bench                      # or: python -m pytest benchmarks -o addopts=""
    ./run.sh bench -k "hopper and T100" # one case
    ./run.sh bench --threads 1          # one torch thread (steadier on a shared 2-core VM)

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
from obd_fast.fused import stored_state_bytes
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
    """The yardstick: the best 256^3 GEMM rate seen at the start and at the end of the run (this
    machine's speed drifts; the better rate makes our percentages conservative)."""
    rates = [(gemm_rate(256), gemm_rate(256, dtype=torch.bfloat16))]
    yield
    rates.append((gemm_rate(256), gemm_rate(256, dtype=torch.bfloat16)))
    conftest.SUMMARY["fp32_gflops"] = max(r[0] for r in rates) / 1e9
    conftest.SUMMARY["bf16_gflops"] = max(r[1] for r in rates) / 1e9


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
                                              gflop=meta_gradient_flops(d["spec"], 256, 2560, steps) / 1e9,
                                              stored_mb=stored_mb(d["spec"], steps, variant))


def stored_mb(spec, steps, variant):
    """What each variant keeps for its reverse pass: the reference keeps theta_t of every step
    (activations are recomputed); create_graph keeps the whole autograd graph (not counted here)."""
    if variant == "reference":
        return (steps + 1) * spec.num_params * 4 / 2 ** 20
    if variant == "create_graph":
        return float("nan")
    ck = 10 if variant == "fused_ck10" else None
    precision = "bf16" if variant == "fused_bf16" else "native"
    return stored_state_bytes(spec, 256, steps, ck, precision=precision) / 2 ** 20


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
    conftest.SUMMARY["peak_rss_growth_mb_hopper_T100"] = peaks
    with capsys.disabled():
        print("\npeak RSS growth per outer step (hopper, T=100), MB: "
              + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    assert peaks["fused_ck10"] < peaks["fused"]


def test_bf16_cosine_to_float64(capsys):
    """Quality of precision="bf16" at the paper setting: cosine of its meta-gradient to float64."""
    d32 = paper_inputs("hopper", steps=100, seed=2)
    d64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in d32.items()}
    ref = call_meta_gradient(obd_fast.meta_gradient, d64, backend="fused")
    out = {p: call_meta_gradient(obd_fast.meta_gradient, d32, backend="fused", precision=p)
           for p in ("native", "bf16")}
    cos = {p: [torch.nn.functional.cosine_similarity(o.double().flatten(), r.flatten(), dim=0).item()
               for o, r in zip(v[1:], ref[1:])] for p, v in out.items()}
    conftest.SUMMARY["cosine_to_float64_hopper_T100"] = cos
    with capsys.disabled():
        print("\ncosine to float64 (hopper, T=100), (d syn_obs, d syn_act): "
              + ", ".join(f"{p} {c[0]:.4f} / {c[1]:.4f}" for p, c in cos.items()))
    assert min(cos["native"]) > 0.999
