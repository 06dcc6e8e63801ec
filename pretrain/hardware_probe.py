"""Measure this machine as the step-time model sees a GPU: matmul FLOP/s per dtype, memory bandwidth, and the
bandwidth of a gloo all-reduce between two local processes (`planner probe`).

The step-time model (`planner.compute.step_time`) takes a catalog entry's peak FLOP/s, HBM bandwidth and link
bandwidths. A GPU's come from its data sheet; a CPU has none that the trainer reaches, so they are measured
here, with the thread count the trainer's processes run with, and written as a catalog entry
(`planner/model/hardware.py`'s YAML) that `--gpu-catalog` reads. Each figure is the median of a few repeats:
what a sustained run sees (on the shared 2-core VM the best of them ran ~10% above what training steps get,
and steps themselves move by a third from one to the next):

- matmul: `n x n @ n x n` (2 n^3 FLOPs) in fp32 and bf16;
- memory: a 256 MiB copy (it reads and writes every byte: 2 x size moved);
- attention: a causal SDPA forward and backward at a small LLaMA shape (64-wide heads, 256 positions),
  priced as the step-time model counts attention (3 passes of 4 s^2 heads head_dim FLOPs per sequence, the
  causal half skipped): CPU SDPA runs far below the GEMM rate (about a quarter here);
- link: a ring all-reduce of 64 MiB over gloo between two processes on this machine; the bus bandwidth
  `2 (n - 1) / n x size / time` is what the model's ring formula divides by; and an all-gather plus a
  reduce-scatter of 16 MiB (what FSDP and ZeRO send; gloo runs them at a quarter to a third of its
  all-reduce's bus bandwidth), `2 (n - 1) / n x size / (time of both)`; and the all-gather alone, `(n - 1) x
  piece / time` (its output's (n - 1) / n): DeepSpeed's ZeRO 1-2 all-reduce the gradients and all-gather the
  updated parameters (`planner.compute.step_time.data_parallel_traffic`), so their gather is priced at its own
  rate (gloo's all-gather runs ~1.5x its reduce-scatter here).
"""

from __future__ import annotations

import os
import statistics
import time

import torch

MATMUL_N = 1024
BF16_MATMUL_N = 512  # bf16 GEMMs on CPUs without bf16 instructions run ~100x slower: a smaller one
COPY_BYTES = 256 * 2**20
ALLREDUCE_BYTES = 64 * 2**20
SHARD_BYTES = 16 * 2**20


def median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops(dtype: torch.dtype, n: int = MATMUL_N) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b)


def attention_flops(dtype: torch.dtype, batch: int = 4, heads: int = 8, seq: int = 256, head_dim: int = 64) -> float:
    q, k, v = (torch.randn(batch, heads, seq, head_dim, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.ones(batch, heads, seq, head_dim, dtype=dtype)

    def step():
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

    return 3 * 4 * batch * seq**2 * heads * head_dim / 2 / median_seconds(step, repeats=3)


def copy_bytes_per_s(nbytes: int = COPY_BYTES) -> float:
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src))


def _collectives_worker(rank: int, port: int, nbytes: int, out) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x = torch.ones(nbytes // 4)
    seconds = median_seconds(lambda: dist.all_reduce(x), repeats=3)
    piece = torch.ones(SHARD_BYTES // 4)
    gathered, shard = torch.empty(2 * piece.numel()), torch.empty(piece.numel() // 2)
    gather = median_seconds(lambda: dist.all_gather_single(gathered, piece), repeats=3)
    pair = gather + median_seconds(lambda: dist.reduce_scatter_single(shard, piece), repeats=3)
    if rank == 0:
        out.put((seconds, pair, gather))
    dist.destroy_process_group()


def collective_bus_bytes_per_s(nbytes: int = ALLREDUCE_BYTES) -> tuple[float, float, float]:
    """Two processes on this machine, gloo over loopback: the bus bandwidth of an all-reduce, of an all-gather
    with a reduce-scatter (each moves (n - 1) / n of its size per rank: the pair moves what one all-reduce does),
    and of the all-gather alone ((n - 1) / n of its output, the piece of each other rank)."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_collectives_worker, args=(r, port, nbytes, out)) for r in range(2)]
    for p in procs:
        p.start()
    seconds, pair, gather = out.get(timeout=180)
    for p in procs:
        p.join(timeout=60)
    return 2 * (2 - 1) / 2 * nbytes / seconds, 2 * (2 - 1) / 2 * SHARD_BYTES / pair, (2 - 1) * SHARD_BYTES / gather


def memory_gib() -> float:
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return kib / 2**20


def probe(threads: int = 1) -> dict:
    """This machine's figures for one trainer process running `threads` threads (the trainer's processes run
    one thread each when several share the cores: `OMP_NUM_THREADS`)."""
    torch.set_num_threads(threads)
    bus, shard_bus, gather_bus = collective_bus_bytes_per_s()
    return {"threads": threads, "cpus": os.cpu_count(), "memory_gib": memory_gib(),
            "fp32_flops": matmul_flops(torch.float32), "bf16_flops": matmul_flops(torch.bfloat16, BF16_MATMUL_N),
            "fp32_attention_flops": attention_flops(torch.float32),
            "bf16_attention_flops": attention_flops(torch.bfloat16, batch=1),
            "copy_bytes_per_s": copy_bytes_per_s(), "allreduce_bus_bytes_per_s": bus,
            "shard_bus_bytes_per_s": shard_bus, "all_gather_bus_bytes_per_s": gather_bus}
