"""`planner compare`: every strategy side by side for one model and cluster, and the one to run.

Each row is exactly what `planner estimate` gives for that strategy alone (same request, one flag
changed), plus:

- the largest micro-batch that fits, and the fewest whole nodes on which the strategy fits;
- communication per GPU per step in parameters' worth of 16-bit elements (Rajbhandari et al. 2019,
  ZeRO, §7.2.1): data parallelism all-reduces the gradients, 2Ψ (reduce-scatter + all-gather);
  ZeRO-1 and -2 (and FSDP shard-grad-op) move the same 2Ψ; ZeRO-3 and FSDP full/hybrid also
  all-gather the parameters again in backward, 3Ψ (1.5x). Offload adds PCIe traffic per step
  (gradients down, parameters up), shown as its own column, not as network volume.

The best row fits, then moves the least data, then avoids offload and recomputation (both cost
step time), then keeps the most headroom.
"""

from __future__ import annotations

import math
from dataclasses import replace

from planner.core.errors import PlannerError
from planner.core.parallel import STRATEGIES, ParallelPlan
from planner.plan import estimate as planned
from planner.plan.estimate import estimate
from planner.plan.request import EstimateRequest

CHECKPOINTING = ("none", "full")
MAX_NODES = 1 << 16


def comm_params_per_step(plan: ParallelPlan) -> float:
    """Parameters' worth of elements each GPU sends per step (ZeRO §7.2.1): 2Ψ, or 3Ψ when the
    parameters are sharded too (ZeRO-3, FSDP full/hybrid: they are gathered again in backward)."""
    return 3.0 if plan.stage == 3 else 2.0


def pcie_params_per_step(plan: ParallelPlan) -> float:
    """Offload's host traffic per step, in parameters' worth of 16-bit elements: gradients to the host
    and updated parameters back (2Ψ/GPUs each way); parameter offload re-streams weights (+2Ψ)."""
    return {"none": 0.0, "optimizer": 2.0, "params": 4.0, "all": 4.0}[plan.offload]


def _request(req: EstimateRequest, name: str, checkpointing: str, gpus: int | None = None) -> EstimateRequest:
    """`req` with its layout replaced by strategy `name` (same world, tp and micro-batch, unless `gpus`)."""
    plan = ParallelPlan.for_strategy(name, gpus or req.gpus, tp=req.tp, micro_batch=req.micro_batch,
                                     gpus_per_node=req.gpus_per_node, pipeline=req.layout)
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
    return {
        "strategy": name, "checkpointing": checkpointing, "request": r.request,
        "memory_per_gpu_bytes": r.memory.lines, "peak_moment": r.memory.peak_moment, "fits": r.fit.fits,
        "headroom_bytes": r.fit.headroom_bytes, "max_micro_batch": r.fit.max_micro_batch,
        "comm_params_per_step": comm_params_per_step(plan),
        "comm_bytes_per_step": 2 * comm_params_per_step(plan) * r.params / plan.tp,
        "pcie_bytes_per_step": 2 * pcie_params_per_step(plan) * r.params / plan.dp,
        "fewest_nodes": nodes, "fewest_gpus": None if nodes is None else nodes * req.gpus_per_node,
    }


def compare(req: EstimateRequest) -> dict:
    rows = [_row(req, name, checkpointing) for name in STRATEGIES for checkpointing in CHECKPOINTING]
    ok = [i for i, row in enumerate(rows) if row.get("fits")]
    best = min(ok, key=lambda i: (rows[i]["comm_params_per_step"], rows[i]["pcie_bytes_per_step"] > 0,
                                  rows[i]["checkpointing"] != "none", -rows[i]["headroom_bytes"]), default=None)
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
            rows.append(["", row["strategy"], row["checkpointing"], "-", "", "-", "-", "-", "-", row["error"][:40]])
            continue
        total = row["memory_per_gpu_bytes"]["total"]
        nodes = "-" if row["fewest_nodes"] is None else f"{row['fewest_nodes']} ({row['fewest_gpus']} GPUs)"
        rows.append(["*" if row["best"] else "", row["strategy"], row["checkpointing"], f"{total / GiB:,.1f}",
                     bar(total, cap), f"{row['headroom_bytes'] / GiB:,.1f}", row["max_micro_batch"],
                     f"{row['comm_params_per_step']:g}x params", f"{row['pcie_bytes_per_step'] / GiB:,.1f}", nodes])
    table = tabulate(rows, headers=["", "strategy", "ckpt", "GiB/GPU", "memory", "headroom", "max micro-batch",
                                    "comm/step", "PCIe GiB/step", "fewest nodes that fit"],
                     tablefmt="simple", disable_numparse=True)
    verdict = f"Best: {r['best']}: fits, least communication, no offload or recomputation where possible, most " \
              "headroom." if r["best"] else "No strategy fits on this cluster: see the fewest nodes column."
    return "\n".join([head, table, verdict])
