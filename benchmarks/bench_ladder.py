"""The ladder on the dense Markov source: wall-clock, the held-out run's prediction error, and the fitted E
against the source's exact entropy rate (targets: E within 3%, held-out within 2%, < 10 min).

Baseline in the same run: the naive law "the held-out run will match the best ladder run's loss",
whose error the fitted law must beat.

    .venv/bin/python benchmarks/bench_ladder.py [--ladder-flops 4e12] [--target-flops 2e12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from planner.laws import ladder
from pretrain.data.synthetic import write_dense_shards


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ladder-flops", default="4e12")
    ap.add_argument("--target-flops", default="2e12")
    ap.add_argument("--out", help="keep the ladder here (default: a temp folder)")
    a = ap.parse_args()
    root = Path(a.out or tempfile.mkdtemp(prefix="bench-ladder-"))
    start = time.perf_counter()
    write_dense_shards(root / "train", vocab=128, seq_len=128, rows=32768)
    write_dense_shards(root / "eval", vocab=128, seq_len=128, rows=512, seed=7)
    subprocess.run([sys.executable, "-m", "planner.cli", "ladder", "design", "--out", str(root / "lad"), "--data",
                    str(root / "train"), "--eval-data", str(root / "eval"), "--vocab", "128", "--seq-len", "128",
                    "--ladder-flops", a.ladder_flops, "--target-flops", a.target_flops], check=True)
    subprocess.run(["bash", str(root / "lad/run_ladder.sh")], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    r = json.loads((root / "lad" / ladder.REPORT_FILE).read_text())
    runs = ladder.finished_runs(json.loads((root / "lad" / ladder.LADDER_FILE).read_text()))
    best = min(v["eval_loss"] for k, v in runs.items() if k != r["held_out"])
    naive = ladder.relative_error(best, r["loss_measured"])
    print(f"ladder wall-clock {seconds:.0f} s ({seconds / 60:.1f} min) on this machine")
    print(f"held-out {r['held_out']}: predicted {r['loss_predicted']:.4f} band {r['band'][0]:.4f}-{r['band'][1]:.4f}, "
          f"measured {r['loss_measured']:.4f}: error {r['error']:+.2%} (naive best-run baseline {naive:+.2%}; "
          f"ratio {abs(naive) / max(abs(r['error']), 1e-9):.1f}x)")
    print(f"fitted E {r['law']['E']:.4f} vs entropy rate {r['true_entropy_rate']:.4f}: {r['E_error']:+.2%}; "
          f"converged {r['converged']}; usable {r['usable']} {r['refusal']}")


if __name__ == "__main__":
    main()
