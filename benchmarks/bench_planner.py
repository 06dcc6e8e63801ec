"""Planner speed: `planner estimate` as a whole process, and a 10,000-configuration sweep in-process.

Targets: the process under 0.3 s wall on a 2-core machine; the sweep under 1 s.
Each figure is printed with a baseline measured in the same run (a bare `python -c pass` for the
process; one estimate for the sweep) so the ratio, not the absolute time, carries across machines.

    .venv/bin/python benchmarks/bench_planner.py
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

from planner.core.parallel import ParallelPlan
from planner.plan.estimate import estimate, sweep_memory
from planner.plan.request import EstimateRequest

PLANNER = Path(sys.executable).with_name("planner")
REPEATS = 15


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_wall(cmd: list[str]) -> float:
    wall(cmd)  # warm the page cache
    return statistics.median(wall(cmd) for _ in range(REPEATS))


def main() -> None:
    bare = median_wall([sys.executable, "-c", "pass"])
    cli = median_wall([str(PLANNER), "estimate", "--params", "7e9"])
    print(f"process  python -c pass          {bare * 1e3:7.1f} ms")
    print(f"process  planner estimate 7e9    {cli * 1e3:7.1f} ms  ({cli / bare:.1f}x bare python; "
          f"target < 300 ms: {'OK' if cli < 0.3 else 'MISSED'})")

    strategies = [{}, {"zero": 1}, {"zero": 2}, {"zero": 3}, {"fsdp": "shard-grad-op"}, {"fsdp": "full"}]
    gpu_counts = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 4096]
    micro_batches = range(1, 36)
    configs = [(ParallelPlan.from_flags(gpus, micro_batch=mb, **kw), ckpt) for kw, gpus, mb, ckpt
               in itertools.product(strategies, gpu_counts, micro_batches, ("none", "selective", "full"))]
    req = EstimateRequest(model="llama2-7b")
    start = time.perf_counter()
    results = sweep_memory(req, configs)
    sweep = time.perf_counter() - start
    start = time.perf_counter()
    estimate(req)
    single = time.perf_counter() - start
    fitting = sum(fit for _, fit in results)
    print(f"in-proc  one full estimate        {single * 1e3:7.2f} ms (incl. min-GPU search per strategy)")
    print(f"in-proc  sweep of {len(configs):,} configs   {sweep * 1e3:7.1f} ms  ({sweep / len(configs) * 1e6:.1f} us each; "
          f"{fitting:,} fit; target < 1 s: {'OK' if sweep < 1 else 'MISSED'})")


if __name__ == "__main__":
    main()
