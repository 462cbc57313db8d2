"""benchmarks/cpu_paired.py on a tiny case: it runs every variant each round and writes its report."""
import json
import math
import os

import pytest
import torch

import obd_fast

pytestmark = pytest.mark.skipif(not obd_fast.fused_available(), reason="obd_fast._C is not built")


def test_cpu_paired_writes_a_report(tmp_path):
    from benchmarks import cpu_paired

    threads = torch.get_num_threads()
    try:
        cpu_paired.main(["--rounds", "2", "--cases", "hopper:3", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "cpu_paired.json").read_text())
    (case,) = data["cases"]
    assert case["env"] == "hopper" and case["steps"] == 3
    assert all(len(v) == 2 and min(v) > 0 for v in case["seconds"].values())
    assert set(case["seconds"]) == set(cpu_paired.VARIANTS)
    for key in cpu_paired.TARGETS:
        assert len(case["ratios"][key]) == 2 and all(math.isfinite(x) for x in case["ratios"][key])
        assert math.isfinite(case["ratios_of_minima"][key])
    # the ratio of minima is computed from the best rounds, not taken from one round
    best = {k: min(v) for k, v in case["seconds"].items()}
    assert case["ratios_of_minima"]["bf16_x_reference"] == pytest.approx(best["reference"] / best["fused_bf16"])
    table = (tmp_path / "cpu_paired.md").read_text()
    assert table.count("| hopper T=3 |") == 1
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cpu_paired.png").stat().st_size > 0


def test_gpu_benchmark_chart_redraws_from_a_saved_run(tmp_path):
    # The GPU benchmark needs a GPU; its chart does not: redraw it from the committed H100 run.
    import shutil

    from benchmarks import gpu_meta_gradient

    saved = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "gpu_meta_gradient_h100.json")
    copy = tmp_path / "run.json"
    shutil.copy(saved, copy)
    gpu_meta_gradient.main(["--replot", str(copy)])
    assert (tmp_path / "run.png").stat().st_size > 10_000
    info = json.loads(copy.read_text())
    assert {key for key, _ in gpu_meta_gradient.CHART} <= set(info["results"][0])


def test_ck_overhead_measures_the_extra_time_and_its_floor(capsys):
    from benchmarks import cpu_ck_overhead

    threads = torch.get_num_threads()
    try:
        r = cpu_ck_overhead.measure("hopper", 5, 2, "native", 2, n_syn=9, batch=13, hidden=(7, 5))
    finally:
        torch.set_num_threads(threads)
    assert set(r["seconds"]) == {"forward", "meta", "meta_ck"}
    assert all(len(v) == 2 and min(v) > 0 for v in r["seconds"].values())
    best = r["best"]
    # 3 of the 5 steps are recomputed (all segments but the last, k=2)
    assert r["floor"] == pytest.approx(0.6 * best["forward"] / best["meta"])
    assert r["extra"] == pytest.approx(best["meta_ck"] / best["meta"] - 1)


def test_obd_compat_pairs_the_official_loop_with_the_compat_one(tmp_path):
    from benchmarks import obd_compat

    threads = torch.get_num_threads()
    try:
        obd_compat.main(["--rounds", "2", "--cases", "gaussian:pbc_q,deterministic:dbc", "--steps", "2",
                         "--n-syn", "9", "--batch", "13", "--batches", "2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "obd_compat.json").read_text())
    assert [c["case"] for c in data["cases"]] == ["gaussian:pbc_q", "deterministic:dbc"]
    for case in data["cases"]:
        assert set(case["seconds"]) == set(obd_compat.VARIANTS)
        assert all(len(v) == 2 and min(v) > 0 for v in case["seconds"].values())
        assert all(len(case["ratios"][k]) == 2 and math.isfinite(case["ratios_of_minima"][k])
                   for k in obd_compat.TARGETS)
        best = {k: min(v) for k, v in case["seconds"].items()}
        assert case["ratios_of_minima"]["bf16_x_official"] == pytest.approx(best["official"] / best["compat_bf16"])
    gaussian, deterministic = data["cases"]
    # the official reverse pass draws new noise: its gradient is near the exact one, not equal
    assert 0.5 < gaussian["resampled_noise_cosine"] < 1 - 1e-6
    assert deterministic["resampled_noise_cosine"] is None
    table = (tmp_path / "obd_compat.md").read_text()
    assert table.count("| gaussian:pbc_q T=2 |") == 1 and table.count("| deterministic:dbc T=2 |") == 1
