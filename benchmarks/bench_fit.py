"""Approach-3 fit speed on the 240 Chinchilla Figure 4 runs: ours against the naive full-grid loop.

Ours scores all 4,500 grid starts in one vectorised pass and runs L-BFGS (analytic gradient) from
the best 40. The baseline, measured in the same run, is what a plain scipy loop does: L-BFGS from
every grid start, here on a random tenth of the grid (450 starts) and scaled up by 10.
Target: under 20 s on this machine, same fitted values.

    .venv/bin/python benchmarks/bench_fit.py [path/to/chinchilla_fig4_epoch.csv]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from planner.laws import fit

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "chinchilla_fig4_epoch.csv"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    df = pd.read_csv(path)
    n, c, loss = df["Model Size"].to_numpy(), df["Training FLOP"].to_numpy(), df["loss"].to_numpy()
    keep = np.argsort(loss)[:-5]
    n, d, loss = n[keep], c[keep] / (6 * n[keep]), loss[keep]

    start = time.perf_counter()
    ours = fit.fit_nd(n, d, loss)
    t_ours = time.perf_counter() - start

    grid = fit._grid_starts()
    sample = grid[np.random.default_rng(0).choice(len(grid), len(grid) // 10, replace=False)]
    start = time.perf_counter()
    naive = fit._lbfgs_best(sample, np.log(n), np.log(d), np.log(loss))
    t_naive = (time.perf_counter() - start) * len(grid) / len(sample)

    p = ours.params
    print(f"fit nd, {len(loss)} runs: ours {t_ours:.2f} s | naive full grid ~{t_naive:.0f} s (extrapolated from "
          f"{len(sample)} starts) | speed-up {t_naive / t_ours:.0f}x | target < 20 s: {'OK' if t_ours < 20 else 'MISSED'}")
    print(f"  ours : E {p['E']:.4f} A {p['A']:.1f} B {p['B']:.1f} alpha {p['alpha']:.4f} beta {p['beta']:.4f} "
          f"(objective {ours.extra['objective']:.6g})")
    q = fit._nd_params(naive.x)
    print(f"  naive: E {q['E']:.4f} A {q['A']:.1f} B {q['B']:.1f} alpha {q['alpha']:.4f} beta {q['beta']:.4f} "
          f"(objective {naive.fun:.6g})")
    print("  Epoch AI (Besiroglu et al. 2024, Huber): E 1.817 A 477.8 B 2143.9 alpha 0.3473 beta 0.3672")


if __name__ == "__main__":
    main()
