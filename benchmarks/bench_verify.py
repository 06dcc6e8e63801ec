"""`planner verify` at real scale: LLaMA-7B (32 x 4096) under FSDP full shard, world sizes 8 and 64.

For each case: the planner's per-rank peak against PyTorch's FSDPMemTracker on the real model and
engine (fake tensors, fake process group), every line's ratio, and the wall-clock the dry run takes
on this machine. Figures go to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_verify.py [--quick]
"""

from __future__ import annotations

import sys
from dataclasses import replace

from planner.cli.verify import verify_request
from planner.core.parallel import ParallelPlan
from planner.core.units import GiB
from planner.plan.request import EstimateRequest

CASES = [(ws, seq, mb) for ws in (8, 64) for seq in (2048, 4096) for mb in (1, 2)]


def main(argv: list[str]) -> int:
    cases = CASES[:1] if "--quick" in argv else CASES
    base = EstimateRequest(model="llama-7b", gpu="a100-80gb")
    print("| world | seq | micro-batch | planner peak GiB | tracker peak GiB | ratio | worst line over 1% of the peak "
          "(ratio) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for world, seq, mb in cases:
        layout = ParallelPlan.from_flags(world, fsdp="full", micro_batch=mb)
        r = verify_request(replace(base, layout=layout, seq_len=seq))
        lines = r["lines"]
        total = lines["allocated"]
        peak = total["tracker_at_peak"]
        worst = max((k for k, v in lines.items() if v["ratio"] is not None and v["tracker_at_peak"] > 0.01 * peak),
                    key=lambda k: abs(lines[k]["ratio"] - 1))
        print(f"| {world} | {seq} | {mb} | {total['planner'] / GiB:.2f} | {total['tracker_at_peak'] / GiB:.2f} | "
              f"{total['ratio']:.3f} | {worst} ({lines[worst]['ratio']:.3f}) | {r['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
