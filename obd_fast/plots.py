"""Every figure the runs write, as PNGs saved atomically.

Figures are drawn on matplotlib's object API (``matplotlib.figure.Figure``, which renders with the
Agg canvas): no ``pyplot``, so no global backend or figure registry is touched and a caller's own
matplotlib setup is left as it was.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .atomic import atomic_write


def figure(width: float, height: float, cols: int = 1):
    """A new figure and its ``cols`` axes side by side."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, cols)
    return fig, axes


def save(fig, path, dpi: int = 100, title: str = "") -> None:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def moving_mean(values: np.ndarray, k: int, fill: float) -> np.ndarray:
    """Means of ``k`` consecutive values (NaN counted as ``fill``): ``len(values) - k + 1`` of them."""
    return np.convolve(np.nan_to_num(values, nan=fill), np.ones(k) / k, mode="valid")


def distill_curve(log: dict, history: List[dict], path, title: str = "") -> None:
    """A distillation: the outer objective per step, and its evaluations (normalized returns when
    there are rollouts, else the held-out objective)."""
    steps = np.asarray(log["step"], dtype=float)
    loss = np.asarray(log["loss"], dtype=float)
    fig, (ax, ax_eval) = figure(10, 3.6, 2)
    if len(steps):
        k = max(1, len(loss) // 50)
        ax.plot(steps, loss, lw=0.5 if k > 1 else 1.0, alpha=0.4 if k > 1 else 1.0, color="C0",
                label="outer objective H")
        if k > 1:
            fill = np.nanmean(loss) if np.isfinite(loss).any() else 0.0
            ax.plot(steps[k - 1:], moving_mean(loss, k, fill), color="C0", label=f"mean of {k}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("outer step")
    ax.set_ylabel("objective")
    scored = [h for h in history if h.get("score_mean") is not None]
    if scored:
        ax_eval.errorbar([h["step"] for h in scored], [h["score_mean"] for h in scored],
                         yerr=[h.get("score_std") or 0.0 for h in scored], marker="o", capsize=3)
        ax_eval.set_ylabel("normalized return (0-100)")
    else:
        evals = [h for h in history if h.get("eval_loss") is not None]
        ax_eval.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], marker="o")
        ax_eval.set_ylabel("held-out objective after BC")
    ax_eval.set_xlabel("outer step")
    save(fig, path, title=title)


def teacher_curve(path, rows: List[dict], evals: List[dict], actor_loss_key: str, title: str = "") -> None:
    """Teacher training: evaluations, and the critic and actor losses (means per logging window)."""
    fig, (ax1, ax2) = figure(10, 3.6, 2)
    if evals:
        ax1.plot([e["step"] for e in evals], [e["normalized_score"] for e in evals], marker="o")
    else:
        ax1.text(0.5, 0.5, "no evaluation", ha="center", va="center", transform=ax1.transAxes)
    ax1.ticklabel_format(axis="y", useOffset=False)
    ax1.set_xlabel("update")
    ax1.set_ylabel("normalized return (0-100)")
    ax1.set_title("evaluation")
    critic = [(r["step"], r["critic_loss"]) for r in rows if r.get("critic_loss") is not None]
    if critic:
        ax2.plot(*zip(*critic), label="critic loss")
        actor = [(r["step"], r[actor_loss_key]) for r in rows if r.get(actor_loss_key) is not None]
        if actor:
            label = actor_loss_key.replace("_", " ")
            twin = ax2.twinx()
            twin.plot(*zip(*actor), color="tab:orange", label=label)
            twin.set_ylabel(label, color="tab:orange")
    ax2.set_xlabel("update")
    ax2.set_ylabel("critic loss")
    ax2.set_title("losses (window means)")
    save(fig, path, dpi=110, title=title)


def recipe_curve(path, evals: Sequence[tuple], target: float, behavior: Optional[dict] = None,
                 title: str = "") -> None:
    """The dataset recipe's SAC run: normalized return per evaluation, the target, and the
    snapshot chosen as the behavior policy."""
    fig, ax = figure(6, 3.5)
    if evals:
        steps, _, scores = zip(*evals)
        ax.plot(steps, scores, marker="o", ms=3)
    if behavior is not None and np.isfinite(behavior["score"]):
        ax.plot([behavior["env_steps"]], [behavior["score"]], "r*", ms=14, label="behavior policy")
    ax.axhline(target, ls="--", c="gray", label="target")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("normalized return")
    ax.set_title(title)
    ax.legend()
    save(fig, path, dpi=120)


def demo_summary(results: Dict[str, dict], curves: Dict[str, dict], order: Sequence[str], labels: Dict[str, str],
                 path) -> None:
    """The demo: normalized return of each method, and each distillation's objective relative to
    its first steps."""
    fig, (ax, ax_curves) = figure(11, 4, 2)
    means = [np.nan if results[k]["mean"] is None else results[k]["mean"] for k in order]
    stds = [results[k]["std"] or 0.0 for k in order]
    ax.bar([labels[k] for k in order], means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(order))])
    ax.set_ylabel("D4RL normalized return")
    ax.set_title("BC on 256 pairs vs the teacher")
    for key, log in curves.items():
        loss = np.asarray(log["loss"], dtype=float)
        if not len(loss):
            continue
        loss = loss / np.nanmean(loss[: max(1, min(10, len(loss)))])
        k = max(1, len(loss) // 20)
        ax_curves.plot(np.asarray(log["step"])[k - 1:], moving_mean(loss, k, 1.0), label=labels[key])
    ax_curves.set_xlabel("outer step")
    ax_curves.set_ylabel("outer objective / its start")
    ax_curves.set_title("distillation")
    ax_curves.legend()
    save(fig, path)
