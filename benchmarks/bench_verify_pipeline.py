"""`planner verify` of a pipeline at full scale: Llama-2-70B at TP 8 x PP 8 x FSDP 8 (512 ranks), micro-batch 1,
16 micro-batches, full activation checkpointing, 1F1B (issue 23).

Every pipeline rank's stage (its 10 blocks, the embedding on the first, the head and loss on the last) is laid
out by the trainer's own `parallelize` and run under FSDPMemTracker in torch's 1F1B order; the planner's
per-rank peak is set beside it. Prints the per-rank table and the wall-clock of the whole dry run for each
process count asked for. Figures go to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_verify_pipeline.py [--jobs 1,2]
"""

from __future__ import annotations

import sys
import time

from planner.cli.verify import verify_request
from planner.core.units import GiB
from planner.plan.request import EstimateRequest


def main(argv: list[str]) -> int:
    jobs = [int(j) for j in (argv[argv.index("--jobs") + 1] if "--jobs" in argv else "2").split(",")]
    req = EstimateRequest.from_flags(model="llama2-70b", gpu="h100-sxm", gpus=512, fsdp="full", tp=8, pp=8,
                                     micro_batch=1, checkpointing="full")
    for n in jobs:
        start = time.perf_counter()
        r = verify_request(req, jobs=n)
        wall = time.perf_counter() - start
        ranks = r["stages"]
        print(f"\njobs {n}: {wall:.0f} s wall (estimate + measurement), every stage within 5%: "
              f"{all(abs(s['lines']['allocated']['ratio'] - 1) <= 0.05 for s in ranks)}")
        print("| pipeline rank | " + " | ".join(str(s["pp_rank"]) for s in ranks) + " |")
        print("|---|" + "---|" * len(ranks))
        print("| in flight | " + " | ".join(str(s["microbatches_in_flight"]) for s in ranks) + " |")
        for label, key in (("tracker GiB", "tracker_at_peak"), ("planner GiB", "planner")):
            print(f"| {label} | " + " | ".join(f"{s['lines']['allocated'][key] / GiB:.2f}" for s in ranks) + " |")
        print("| planner / tracker | " + " | ".join(f"{s['lines']['allocated']['ratio']:.3f}" for s in ranks) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
