"""Prints the side-by-side table (ratios, GFLOP/s against the GEMM rate of the same run) after
the pytest-benchmark run of test_cpu_meta_gradient.py, and saves it as markdown and a PNG chart."""
import json
import os
from collections import defaultdict

RESULTS = {}  # filled by the benchmark tests: (group, variant) -> dict
SUMMARY = {}  # GEMM rates, memory and precision figures of the run


def pytest_addoption(parser):
    parser.addoption("--threads", type=int, default=None,
                     help="torch intra-op threads for the run (default: torch's); 1 is the steadiest on a shared VM")


def pytest_configure(config):
    import torch

    threads = config.getoption("--threads", default=None)
    if threads:
        torch.set_num_threads(threads)
    SUMMARY["threads"] = torch.get_num_threads()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    rows = defaultdict(dict)
    for (group, variant), r in RESULTS.items():
        rows[group][variant] = r
    gemm = SUMMARY.get("fp32_gflops")
    lines = [f"{SUMMARY['threads']} torch thread(s); fp32 GEMM (256^3, this run): {gemm:.0f} GFLOP/s; "
             f"bf16 GEMM: {SUMMARY.get('bf16_gflops', 0):.0f} GFLOP/s",
             "", "| case | variant | s/step (min) | x vs reference | x vs create_graph | GFLOP/s | % of fp32 GEMM | "
             "stored state MB |", "|---|---|---|---|---|---|---|---|"]
    for group in sorted(rows):
        ref = rows[group].get("reference", {}).get("seconds")
        cg = rows[group].get("create_graph", {}).get("seconds")
        for variant, r in sorted(rows[group].items(), key=lambda kv: -kv[1]["seconds"]):
            s = r["seconds"]
            gf = r["gflop"] / s
            lines.append(f"| {group} | {variant} | {s:.3f} | {ref / s if ref else float('nan'):.2f} | "
                         f"{cg / s if cg else float('nan'):.2f} | {gf:.0f} | {100 * gf / gemm:.0f}% | "
                         f"{r.get('stored_mb', float('nan')):.0f} |")
    for key in ("peak_rss_growth_mb_hopper_T100", "cosine_to_float64_hopper_T100"):
        if key in SUMMARY:
            lines += ["", f"{key}: {SUMMARY[key]}"]
    text = "\n".join(lines)
    terminalreporter.write_sep("=", "obd-fast CPU meta-gradient: side by side")
    terminalreporter.write_line(text)
    out = os.environ.get("OBD_FAST_BENCH_OUT", ".benchmarks")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "cpu_meta_gradient.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "cpu_meta_gradient.json"), "w") as f:
        json.dump({"summary": SUMMARY, "results": {f"{g}/{v}": r for (g, v), r in RESULTS.items()}}, f, indent=2)
    try:
        _plot(rows, os.path.join(out, "cpu_meta_gradient.png"))
    except Exception as exc:  # matplotlib is optional
        terminalreporter.write_line(f"(no chart: {exc})")


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(rows)
    variants = sorted({v for g in groups for v in rows[g]})
    fig, ax = plt.subplots(figsize=(1.8 * len(groups) + 3, 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs = [j + i * width for j, g in enumerate(groups) if v in rows[g]]
        ys = [rows[g][v]["seconds"] for g in groups if v in rows[g]]
        ax.bar(xs, ys, width, label=v)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups)
    ax.set_ylabel("seconds per outer step")
    ax.set_title("meta-gradient per outer step, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
