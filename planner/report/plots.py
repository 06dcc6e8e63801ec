"""PNG plots of fits (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from planner.core.io import atomic_write_bytes
from planner.laws.fit import FitResult, curve_band, predict_nd


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(7, 4.5), dpi=110)


def _save(plt, fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_curve(result: FitResult, x, loss, path, x_label: str = "x", envelope=None) -> Path:
    """Data, fit, 95% bootstrap band, and the extrapolation to the target, on log-log axes."""
    plt, fig, ax = _figure()
    ax.scatter(x, loss, s=6, alpha=0.35, color="grey", label="runs")
    if envelope is not None:
        ax.scatter(*envelope, s=10, color="black", label="lower envelope (fitted)")
    target = result.extra.get("target", {}).get("x")
    hi_x = max(np.max(x), target or 0) * 1.05
    xs = np.geomspace(np.min(x), hi_x, 200)
    mid, lo, hi = curve_band(result, xs)
    p = result.params
    ax.plot(xs, mid, color="C0", label=f"fit: {p['E']:.3f} + {p['A']:.3g}·x^-{p['alpha']:.3f}")
    ax.fill_between(xs, lo, hi, color="C0", alpha=0.2, label="95% bootstrap band")
    ax.axvline(np.max(x), color="grey", ls=":", lw=1, label=f"largest measured {x_label}")
    if target:
        t = result.extra["target"]
        ax.scatter([target], [t["loss"]], marker="*", s=120, color="C3", zorder=5,
                   label=f"extrapolated: {t['loss']:.3f} at {target:.3g}")
    ax.set(xscale="log", yscale="log", xlabel=x_label, ylabel="loss",
           title="Loss curve power-law fit" + ("" if result.converged else " (NOT converged)"))
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_nd(result: FitResult, n, d, loss, path, held_out: dict | None = None) -> Path:
    """Loss against N, coloured by training FLOPs, with the law's isoFLOP curves, each labelled with its budget.

    A fit that did not converge says so across the plot. `held_out` ({n, d, measured, predicted}) adds a
    run the law did not see, with its prediction.
    """
    plt, fig, ax = _figure()
    flops = 6 * np.asarray(n) * np.asarray(d)
    sc = ax.scatter(n, loss, c=np.log10(flops), s=18, cmap="viridis", label="runs (fitted)", zorder=3)
    fig.colorbar(sc, ax=ax, label="log10 training FLOPs (6ND)")
    hi_n = max(np.max(n), held_out["n"] if held_out else 0)
    ns = np.geomspace(np.min(n), hi_n, 100)
    for i, c in enumerate(np.geomspace(flops.min(), flops.max(), 4)):
        ax.plot(ns, predict_nd(result.params, ns, c / (6 * ns)), color=f"C{i}", lw=1, alpha=0.8,
                label=f"law at C = {c:.2g} FLOPs")
    if held_out:
        ax.scatter([held_out["n"]], [held_out["measured"]], marker="s", s=60, color="C3", zorder=4,
                   label=f"held-out run: measured {held_out['measured']:.3f}")
        ax.scatter([held_out["n"]], [held_out["predicted"]], marker="*", s=140, color="C3", zorder=4,
                   label=f"held-out run: predicted {held_out['predicted']:.3f}")
    p = result.params
    ax.set(xscale="log", xlabel="parameters N", ylabel="eval loss",
           title=f"L = {p['E']:.3f} + {p['A']:.4g}/N^{p['alpha']:.3f} + {p['B']:.4g}/D^{p['beta']:.3f}")
    ax.title.set_fontsize(9)
    if not result.converged:
        ax.text(0.5, 0.5, "FIT NOT CONVERGED\n(not used to re-plan)", transform=ax.transAxes, ha="center",
                va="center", fontsize=16, color="C3", alpha=0.5, fontweight="bold")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_isoflop(result: FitResult, n, flops, loss, path) -> Path:
    plt, fig, (ax) = _figure()
    sc = ax.scatter(n, loss, c=np.log10(flops), s=12, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="log10 training FLOPs")
    minima = result.extra["minima"]
    ax.scatter([m["params"] for m in minima], [m["loss"] for m in minima], marker="x", color="C3", s=40,
               label=f"per-budget minima; N* ∝ C^{result.params['a']:.3f}")
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP profiles (approaches 1-2)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


#: Stacked in this order, bottom to top.
MEMORY_LINES = ("weights", "master_weights", "gradients", "optimizer", "activations", "logits", "overhead",
                "fragmentation")


def plot_strategies(result: dict, path: str | Path) -> Path:
    """Stacked bars of memory per GPU by line for every strategy, with the GPU's capacity as a line."""
    plt, fig, ax = _figure()
    fig.set_size_inches(11, 5.5)
    rows = [r for r in result["rows"] if "error" not in r]
    labels = [f"{'* ' if r['best'] else ''}{r['strategy']}{' +ckpt' if r['checkpointing'] == 'full' else ''}"
              for r in rows]
    bottom = np.zeros(len(rows))
    gib = 2**30
    for line in MEMORY_LINES:
        values = np.array([r["memory_per_gpu_bytes"][line] / gib for r in rows])
        ax.bar(range(len(rows)), values, bottom=bottom, label=line.replace("_", " "))
        bottom += values
    ax.axhline(result["capacity_bytes"] / gib, color="black", linestyle="--", linewidth=1.2,
               label=f"{result['gpu']} capacity ({result['capacity_bytes'] / gib:.0f} GiB)")
    ax.set_xticks(range(len(rows)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("memory per GPU (GiB)")
    ax.set_title(f"{result['params'] / 1e9:.2f}B parameters on {result['gpus']} x {result['gpu']}: "
                 "memory per GPU by strategy (* = best)")
    ax.legend(fontsize=7, ncol=3, loc="upper right")
    return _save(plt, fig, path)
