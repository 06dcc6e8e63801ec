"""`planner compare`: every strategy side by side for one model and cluster, and the one to run.

Each row is exactly what `planner estimate` gives for that strategy alone (same request, one flag
changed), plus:

- the largest micro-batch that fits, and the fewest whole nodes on which the strategy fits;
- data-parallel traffic per GPU per step: the bytes the step time prices (`data_parallel_traffic`: each
  engine's collectives as it runs them, on every micro-batch where it has no `no_sync`), and beside them the
  ZeRO paper's parameters' worth of 16-bit elements (Rajbhandari et al. 2019, §7.2.1): data parallelism
  all-reduces the gradients, 2Ψ (reduce-scatter + all-gather); ZeRO-1 and -2 (and FSDP shard-grad-op) move the
  same 2Ψ; ZeRO-3 and FSDP full/hybrid also all-gather the parameters again in backward, 3Ψ (1.5x). The two
  differ where the engines do: DeepSpeed's ZeRO 1-2 all-reduce the whole gradient and then gather the
  parameters, and torch's DDP and FSDP2 reduce every micro-batch. Offload adds PCIe traffic per step
  (gradients down, parameters up), shown as its own column, not as network volume.

Rows are ordered by predicted time per token (`planner.compute.step_time` through the estimate, plus
offload's PCIe traffic at `PCIE_BYTES_PER_S`), the layouts that fit first; the best row is the fastest
that fits (ties: the most headroom). `search` explores the whole layout space for a GPU count.
"""

from __future__ import annotations

import math
from dataclasses import replace

from planner.core.errors import PlannerError
from planner.core.parallel import STRATEGIES, ParallelPlan
from planner.plan import estimate as planned
from planner.plan.estimate import estimate
from planner.plan.request import EstimateRequest

#: What the trainer recomputes (`planner.core.schema.ACTIVATION_CHECKPOINTING`), cheapest memory last.
CHECKPOINTING = ("none", "op", "full")
MAX_NODES = 1 << 16
#: Host-device bandwidth per GPU for offload traffic: PCIe 4.0 x16 is 32 GB/s each way (PCI-SIG); ~25 GB/s
#: is what a pinned copy achieves. Offload's traffic is counted as exposed (not overlapped), and the
#: optimizer step it moves to the CPU is not modelled.
PCIE_BYTES_PER_S = 25e9


def comm_params_per_step(plan: ParallelPlan) -> float:
    """Parameters' worth of elements each GPU sends per step (ZeRO §7.2.1): 2Ψ, or 3Ψ when the
    parameters are sharded too (ZeRO-3, FSDP full/hybrid: they are gathered again in backward)."""
    return 3.0 if plan.stage == 3 else 2.0


def comm(row: dict) -> str:
    """A row's data-parallel traffic per GPU per step as the step time prices it, beside the ZeRO paper's
    parameters' worth (the engines' own collectives differ: DeepSpeed ZeRO 1-2 all-reduce and then gather,
    torch's engines reduce on every micro-batch)."""
    from planner.core.units import GiB

    priced = "-" if row["comm_bytes_per_step"] is None else f"{row['comm_bytes_per_step'] / GiB:,.1f}"
    return f"{priced} ({row['comm_params_per_step']:g}x params)"


def pcie_bytes_per_step(plan: ParallelPlan, params: float) -> float:
    """Offload's host traffic per GPU per step in bytes (16-bit elements, partitioned over data parallel)."""
    return 2 * pcie_params_per_step(plan) * params / plan.dp


def pcie_params_per_step(plan: ParallelPlan) -> float:
    """Offload's host traffic per step, in parameters' worth of 16-bit elements: gradients to the host
    and updated parameters back (2Ψ/GPUs each way); parameter offload re-streams weights (+2Ψ)."""
    return {"none": 0.0, "optimizer": 2.0, "params": 4.0, "all": 4.0}[plan.offload]


def _request(req: EstimateRequest, name: str, checkpointing: str, gpus: int | None = None) -> EstimateRequest:
    """`req` with its layout replaced by strategy `name` (same world, tp and micro-batch, unless `gpus`)."""
    plan = ParallelPlan.for_strategy(name, gpus or req.gpus, tp=req.tp, micro_batch=req.micro_batch,
                                     gpus_per_node=req.gpus_per_node, pipeline=req.layout, ep=req.layout.ep)
    return replace(req, layout=plan, checkpointing=checkpointing)


def fewest_nodes(req: EstimateRequest, name: str, checkpointing: str) -> int | None:
    """The fewest whole nodes on which this strategy fits (memory per GPU never grows with more GPUs)."""
    def fits(nodes: int) -> bool:
        try:
            return planned.fits(_request(req, name, checkpointing, nodes * req.gpus_per_node))
        except PlannerError:  # e.g. the GPU count is not a multiple of --tp
            return False

    if not fits(MAX_NODES):
        return None
    lo, hi = 1, MAX_NODES
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def _row(req: EstimateRequest, name: str, checkpointing: str) -> dict:
    try:
        request = _request(req, name, checkpointing)
        r = estimate(request, fewest_gpus=False)
    except PlannerError as exc:
        return {"strategy": name, "checkpointing": checkpointing, "error": str(exc)}
    nodes = fewest_nodes(req, name, checkpointing)
    plan = request.layout
    pcie = pcie_bytes_per_step(plan, r.params)
    return {
        "strategy": name, "checkpointing": checkpointing, "request": r.request,
        "memory_per_gpu_bytes": r.memory.lines, "peak_moment": r.memory.peak_moment, "fits": r.fit.fits,
        "headroom_bytes": r.fit.headroom_bytes, "max_micro_batch": r.fit.max_micro_batch,
        "comm_params_per_step": comm_params_per_step(plan),
        # what the step time prices: the engine's collectives as it runs them (every micro-batch's reductions)
        "comm_bytes_per_step": r.time["data_parallel_bytes_per_step"] if r.time else None,
        "pcie_bytes_per_step": pcie,
        "fewest_nodes": nodes, "fewest_gpus": None if nodes is None else nodes * req.gpus_per_node,
        **timing(r.time, pcie),
    }


def timing(time: dict | None, pcie_bytes: float = 0.0) -> dict:
    """A row's predicted step (with offload's PCIe time), tokens/s per GPU, MFU and time per token."""
    if not time:
        return {"step_time_s": None, "tokens_per_s_per_gpu": None, "mfu_predicted": None, "seconds_per_token": None}
    step = time["step_time_s"] + pcie_bytes / PCIE_BYTES_PER_S
    scale = time["step_time_s"] / step
    return {"step_time_s": step, "tokens_per_s_per_gpu": time["tokens_per_s_per_gpu"] * scale,
            "mfu_predicted": time["mfu_predicted"] * scale, "seconds_per_token": step / time["tokens_per_step"],
            "time_breakdown_s": {**time["breakdown_s"], "offload_pcie": pcie_bytes / PCIE_BYTES_PER_S}}


def _speed_key(row: dict) -> tuple:
    """Fitting rows first, fastest first (rows without a time after), then the most headroom."""
    per_token = row.get("seconds_per_token")
    return (not row.get("fits"), per_token is None, per_token or 0.0, -row.get("headroom_bytes", 0.0))


def compare(req: EstimateRequest) -> dict:
    rows = sorted((_row(req, name, checkpointing) for name in STRATEGIES for checkpointing in CHECKPOINTING),
                  key=_speed_key)
    best = 0 if rows and rows[0].get("fits") else None
    for i, row in enumerate(rows):
        row["best"] = i == best
    base = estimate(_request(req, "ddp", "none"))
    layout = req.layout
    return {"gpu": base.hardware.gpu, "gpus": req.gpus, "gpus_per_node": req.gpus_per_node, "tp": layout.tp,
            "pipeline": None if layout.pp == 1 else {"pp": layout.pp, "schedule": layout.pp_schedule,
                                                     "virtual_stages_per_rank": layout.pp_virtual,
                                                     "microbatches": layout.grad_accum},
            "nodes": math.ceil(req.gpus / req.gpus_per_node), "params": base.params,
            "capacity_bytes": base.fit.gpu_memory_bytes, "model": base.to_dict()["model"], "rows": rows,
            "best": None if best is None else f"{rows[best]['strategy']} (checkpointing {rows[best]['checkpointing']})"}


def bar(used: float, capacity: float, width: int = 12) -> str:
    """A compact terminal bar of memory used against capacity ('>' past it)."""
    filled = min(width, round(width * used / capacity))
    return "#" * filled + "." * (width - filled) + (">" if used > capacity else " ")


def render_compare(r: dict) -> str:
    from tabulate import tabulate

    from planner.core.units import GiB, human_count

    m, cap = r["model"], r["capacity_bytes"]
    head = (f"{human_count(r['params'])} parameters ({m['layers']} x {m['hidden']}, seq {m['seq_len']}) on "
            f"{r['gpus']} x {r['gpu']} ({cap / GiB:.0f} GiB), {r['gpus_per_node']} per node"
            + (f", tensor parallel {r['tp']}" if r["tp"] > 1 else "")
            + (f", pipeline {pp['pp']} ({pp['schedule']}, {pp['virtual_stages_per_rank']} stage(s) per rank, "
               f"{pp['microbatches']} micro-batches)" if (pp := r["pipeline"]) else ""))
    rows = []
    for row in r["rows"]:
        if "error" in row:
            rows.append(["", row["strategy"], row["checkpointing"], "-", "-", "-", "-", "", "-", "-", "-", "-",
                         row["error"][:40]])
            continue
        total = row["memory_per_gpu_bytes"]["total"]
        nodes = "-" if row["fewest_nodes"] is None else f"{row['fewest_nodes']} ({row['fewest_gpus']} GPUs)"
        speed = ["-", "-", "-"] if row["step_time_s"] is None else [
            f"{row['step_time_s']:.3g}", f"{row['tokens_per_s_per_gpu']:,.0f}", f"{row['mfu_predicted']:.1%}"]
        rows.append(["*" if row["best"] else "", row["strategy"], row["checkpointing"], *speed, f"{total / GiB:,.1f}",
                     bar(total, cap), f"{row['headroom_bytes'] / GiB:,.1f}", row["max_micro_batch"],
                     comm(row), f"{row['pcie_bytes_per_step'] / GiB:,.1f}", nodes])
    table = tabulate(rows, headers=["", "strategy", "ckpt", "step s", "tok/s/GPU", "MFU", "GiB/GPU", "memory",
                                    "headroom", "max micro-batch", "DP GiB/step (ZeRO)", "PCIe GiB/step",
                                    "fewest nodes that fit"],
                     tablefmt="simple", disable_numparse=True)
    timed = any(row.get("step_time_s") is not None for row in r["rows"])
    why = "the fastest predicted step per token that fits (planner.compute.step_time)" if timed else \
        "the most headroom of those that fit (no step time: the GPU's catalog entry lacks a bandwidth)"
    verdict = f"Best: {r['best']}: {why}." if r["best"] else "No strategy fits on this cluster: see the fewest nodes column."
    return "\n".join([head, table, verdict])
