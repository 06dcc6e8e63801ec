"""torchtitan's Llama 3.1 405B pipeline rows (Table 5 of its benchmarks/llama3_h100_202412_torchtitan.md:
FSDP 8 x TP 8 x PP 8 on 512 H100s, 1F1B and interleaved 1F1B) next to the planner's per-GPU peak for the
same layout, from data/published/torchtitan_llama3_h100.csv.

The source does not give the sequence length (torchtitan's default, 8192, is used), the micro-batch
size, nor the interleaved row's stages per rank: the planner is run for micro-batch 1 x 32 and 4 x 8
(the local batch of 32 sequences either way) and v = 2. Reported whatever it is; the reasons for the
gap are in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_pipeline_405b.py
"""

from __future__ import annotations

import csv
from pathlib import Path

from planner.model.shapes import ModelShape
from planner.plan.estimate import estimate
from planner.plan.request import EstimateRequest

DATA = Path(__file__).resolve().parents[1] / "data" / "published" / "torchtitan_llama3_h100.csv"
#: Llama 3.1 405B (its config.json): 126 layers, 16384 wide, 128 heads, 8 kv heads, ffn 53248, vocab 128256.
LLAMA_405B = ModelShape(layers=126, hidden=16384, heads=128, vocab=128256, seq_len=8192, kv_heads=8, ffn_hidden=53248)
GIB = 2**30


def planner_peak(schedule: str, micro_batch: int, microbatches: int) -> tuple[float, float]:
    """(worst stage's peak GiB, bubble) for the Table 5 layout."""
    virtual = 2 if schedule == "interleaved-1f1b" else 1
    req = EstimateRequest.from_flags(shape=LLAMA_405B, gpu="h100-sxm", gpus=512, gpus_per_node=8, fsdp="full", tp=8,
                                     pp=8, pp_schedule=schedule, pp_virtual=virtual, micro_batch=micro_batch,
                                     microbatches=microbatches, checkpointing="full")
    result = estimate(req)
    return result.memory.lines["total"] / GIB, result.to_dict()["pipeline"]["bubble_fraction"]


def main() -> None:
    rows = [r for r in csv.DictReader(DATA.open()) if r["table"] == "5"]
    print(f"{'schedule':18} {'torchtitan GiB':>14} {'tok/s/GPU':>9} | {'planner GiB (mb 1 x 32)':>23} "
          f"{'(mb 4 x 8)':>10} {'bubble 1 x 32':>13} {'4 x 8':>6}")
    for r in rows:
        schedule = "interleaved-1f1b" if r["pp_schedule"].startswith("Interleaved") else "1f1b"
        one, bubble_one = planner_peak(schedule, 1, 32)
        four, bubble_four = planner_peak(schedule, 4, 8)
        print(f"{r['pp_schedule']:18} {float(r['memory_gib']):14.1f} {r['tps_per_gpu']:>9} | {one:23.1f} {four:10.1f} "
              f"{bubble_one:13.3f} {bubble_four:6.3f}")


if __name__ == "__main__":
    main()
