"""`planner verify` at real scale: LLaMA-7B (32 x 4096) under FSDP full shard, world sizes 8 and 64; with
`--moe`, Mixtral-8x7B and OLMoE-1B-7B at expert parallelism 8 x FSDP 8 (64 ranks).

For each case: the planner's per-rank peak against PyTorch's FSDPMemTracker on the real model and
engine (fake tensors, fake process group), every line's ratio, and the wall-clock the dry run takes
on this machine. Figures go to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_verify.py [--quick] [--moe]
"""

from __future__ import annotations

import sys
from dataclasses import replace

from planner.cli.verify import verify_request
from planner.core.parallel import ParallelPlan
from planner.core.units import GiB
from planner.plan.request import EstimateRequest

CASES = [(ws, seq, mb) for ws in (8, 64) for seq in (2048, 4096) for mb in (1, 2)]


MOE_CASES = [("mixtral-8x7b", 1), ("mixtral-8x7b", 2), ("olmoe-1b-7b", 1), ("olmoe-1b-7b", 2)]


def moe(argv: list[str]) -> int:
    """Every line of each MoE case: the planner's peak moment and lines against the tracker's peak."""
    for model, mb in MOE_CASES[:1] if "--quick" in argv else MOE_CASES:
        layout = ParallelPlan.from_flags(64, fsdp="full", ep=8, micro_batch=mb)
        r = verify_request(EstimateRequest(model=model, gpu="h100-sxm", tokens=1e12, layout=layout))
        lines = r["lines"]
        peak = lines["allocated"]["tracker_at_peak"]
        cells = ", ".join(f"{k} {v['planner'] / GiB:.3f}/{v['tracker_at_peak'] / GiB:.3f} = {v['ratio']:.3f}"
                          for k, v in lines.items() if max(v["planner"], v["tracker_at_peak"]) > 0.01 * peak)
        print(f"| {model} | EP 8 x FSDP 8 | {mb} | {r['peak_moment']} | {cells} | {r['seconds']:.0f} |", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if "--moe" in argv:
        return moe(argv)
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
