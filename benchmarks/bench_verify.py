"""`planner verify` at real scale: LLaMA-7B (32 x 4096) under FSDP full shard, world sizes 8 and 64; with
`--moe`, Mixtral-8x7B and OLMoE-1B-7B at expert parallelism 8 x FSDP 8 (64 ranks); with `--wide`, 4-layer
blocks 1,024-3,072 wide at sequences 128-2,048, micro-batch 1, world 8, where the layers' backward is the peak
and a block's weight gradients can outweigh its saved tensors.

For each case: the planner's per-rank peak against PyTorch's FSDPMemTracker on the real model and
engine (fake tensors, fake process group), every line's ratio, and the wall-clock the dry run takes
on this machine. Figures go to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_verify.py [--quick] [--moe | --wide]
"""

from __future__ import annotations

import sys
from dataclasses import replace

from planner.cli.verify import verify_request
from planner.core.parallel import ParallelPlan
from planner.core.units import GiB, MiB
from planner.model.shapes import ModelShape
from planner.plan.request import EstimateRequest

CASES = [(ws, seq, mb) for ws in (8, 64) for seq in (2048, 4096) for mb in (1, 2)]


WIDE_CASES = [(2048, 256), (2048, 512), (2048, 1024), (2048, 2048), (1024, 128), (1024, 512), (3072, 256)]
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


def wide(argv: list[str]) -> int:
    """The layers' backward of small-vocabulary models: the activations line (the layers' saved tensors, the
    block's freed, its weight gradients added) and the total against the tracker's peak."""
    print("| hidden | seq | planner's peak moment | activations MiB planner / tracker = ratio | allocated MiB planner / "
          "tracker = ratio | seconds |")
    print("|---|---|---|---|---|---|")
    for hidden, seq in WIDE_CASES[:1] if "--quick" in argv else WIDE_CASES:
        shape = ModelShape(4, hidden, hidden // 128, 1024, seq)
        r = verify_request(EstimateRequest.from_flags(shape=shape, gpus=8, micro_batch=1, fsdp="full"))
        a, t = r["lines"]["activations"], r["lines"]["allocated"]
        print(f"| {hidden} | {seq} | {r['peak_moment']} | {a['planner'] / MiB:.1f} / {a['tracker_at_peak'] / MiB:.1f} = "
              f"{a['ratio']:.3f} | {t['planner'] / MiB:.1f} / {t['tracker_at_peak'] / MiB:.1f} = {t['ratio']:.3f} | "
              f"{r['seconds']:.0f} |", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if "--moe" in argv:
        return moe(argv)
    if "--wide" in argv:
        return wide(argv)
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
