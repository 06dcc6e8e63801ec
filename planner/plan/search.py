"""`planner compare --search`: every layout the trainer can run on a GPU count, ranked by predicted time.

The space: each strategy of `STRATEGIES` (FSDP hybrid at each of `HYBRID_NODES` nodes per copy) x tensor
parallel (powers of two up to a node) x pipeline (none, or 2..`MAX_PP` ranks with GPipe, 1F1B or
interleaved 1F1B at 2 or 4 stages per rank, m = 1, 2, 4 or 8 x pp micro-batches) x micro-batch x
checkpointing (none, op or full: what the trainer runs; op on a dense model only; none for an encoder-decoder), and for a mixture-of-experts model x expert parallelism (each
`--ep` dividing the experts and the shard ranks), kept only where the layout is valid and the trainer runs it
(`ParallelPlan.validate`, `check_runnable` and `planner.plan.trainable`: the layouts `emit` would write). Each
gets the step-time model's step (`planner.plan.estimate.predicted_time`, closed-form: microseconds); then, fastest per token
first, the memory model says whether it fits, until `top` layouts that fit are found (the memory check
is the costly part, so it runs only as far down the ranking as needed; the ranking itself is exact).
"""

from __future__ import annotations

import itertools
import time as clock
from dataclasses import replace

from planner.core.errors import PlannerError
from planner.core.parallel import STRATEGIES, ParallelPlan
from planner.memory.activations import op_policy_planned
from planner.plan import estimate as planned
from planner.plan.compare import CHECKPOINTING, pcie_bytes_per_step, timing
from planner.plan.request import EstimateRequest, gpu_of, resolve_model
from planner.plan.trainable import check_moe_trainable

MAX_PP = 32
MICRO_BATCHES = (1, 2, 4, 8, 16)
PIPELINES = [(1, "1f1b", 1, 1)] + [
    (pp, schedule, v, k * pp)
    for pp in (2, 4, 8, 16, MAX_PP) for schedule, v in (("gpipe", 1), ("1f1b", 1), ("interleaved-1f1b", 2),
                                                        ("interleaved-1f1b", 4))
    for k in (1, 2, 4, 8)]
#: FSDP hybrid: copies sharded over one node, or over 2, 4, 8 nodes' GPUs.
HYBRID_NODES = (1, 2, 4, 8)


EXPERT_PARALLEL = (1, 2, 4, 8, 16, 32, 64)


def candidates(req: EstimateRequest, layers: int, experts: int = 0):
    """Every runnable layout of the space on `req.gpus` GPUs (`experts`: an MoE model's, 0 for dense)."""
    tps = [t for t in (1, 2, 4, 8) if t <= req.gpus_per_node]
    for name, tp, (pp, schedule, v, m), mb in itertools.product(STRATEGIES, tps, PIPELINES, MICRO_BATCHES):
        if req.gpus % (tp * pp) or pp * v > layers:
            continue
        base = ParallelPlan.for_strategy(name, req.gpus, tp=tp, micro_batch=mb, gpus_per_node=req.gpus_per_node)
        shards = [n * req.gpus_per_node for n in HYBRID_NODES] if base.fsdp_mode == "hybrid" and base.engine == "fsdp" \
            else [base.dp_shard]
        for shard in shards:
            try:
                plan = replace(base, pp=pp, pp_schedule=schedule, pp_virtual=v, grad_accum=m, dp_shard=shard).validate()
                if shard is not None and (shard >= plan.dp or plan.dp % shard):
                    continue  # hybrid needs more than one copy, each over whole shards
                plan = plan.check_runnable()
            except PlannerError:
                continue
            yield from _with_expert_parallel(plan, experts)


def _with_expert_parallel(plan: ParallelPlan, experts: int):
    """`plan` at each expert-parallel degree the trainer runs for `experts` experts (just `plan` when dense)."""
    if not experts:
        yield plan
        return
    for ep in EXPERT_PARALLEL:
        if experts % ep:
            continue
        try:
            yield replace(plan, ep=ep).validate().check_runnable()
        except PlannerError:
            continue


def search(req: EstimateRequest, top: int = 10) -> dict:
    """The `top` fastest layouts (predicted time per token) that fit, and how many were explored."""
    start = clock.perf_counter()
    model, gpu = resolve_model(req), gpu_of(req)
    moe = model.shape.moe
    dtype = planned.compute_dtype(req, gpu)
    models = {}  # an MoE model is resolved per --ep (the busiest rank's planned load depends on it)
    timed = []
    for plan in candidates(req, model.shape.n_blocks, moe.experts if moe else 0):
        if moe is not None:
            if plan.ep not in models:
                models[plan.ep] = resolve_model(replace(req, layout=plan))
            model = models[plan.ep]
            try:
                check_moe_trainable(model, plan)
            except PlannerError:
                continue
        for checkpointing in CHECKPOINTING:
            if checkpointing == "op" and not op_policy_planned(model.shape):
                continue  # the op policy is planned (and run) for our dense LLaMA block
            if model.shape.arch == "encoder-decoder" and checkpointing != "none":
                continue  # its recomputation is not planned (`flops.hardware_flops_per_token` refuses it)
            t = planned.predicted_time(replace(req, checkpointing=checkpointing), model, plan, gpu, dtype)
            if t is None:
                raise PlannerError(f"--gpu: {gpu.name} lacks the bandwidths the step-time model needs (hbm_gbps, "
                                   "network_gbps, interconnect_gbps in a --gpu-catalog entry)")
            timed.append((checkpointing, plan, model, timing(t, pcie_bytes_per_step(plan, model.params))))
    timed.sort(key=lambda row: row[3]["seconds_per_token"])
    best, checked = [], 0
    for checkpointing, plan, model, t in timed:
        checked += 1
        request = replace(req, layout=plan, checkpointing=checkpointing)
        breakdown = planned.breakdown_for(request, model, plan)
        if breakdown.total > gpu.memory_bytes:
            continue
        best.append(_row(plan, checkpointing, t, breakdown.total, gpu.memory_bytes))
        if len(best) == top:
            break
    return {"gpus": req.gpus, "gpu": gpu.name, "explored": len(timed), "memory_checked": checked,
            "seconds": clock.perf_counter() - start, "top": best}


def _row(plan: ParallelPlan, checkpointing: str, t: dict, memory: float, capacity: float) -> dict:
    """One layout of the ranking: `t` is its `compare.timing` (offload's PCIe time included)."""
    step = t["step_time_s"]
    share = {k: v / step for k, v in t["time_breakdown_s"].items() if v > 0}
    name = plan.strategy + (f"/{plan.shard_degree}" if plan.fsdp_mode == "hybrid" and plan.engine == "fsdp" else "")
    return {"strategy": name + ("+offload" if plan.offload != "none" else ""), "tp": plan.tp, "ep": plan.ep, "pp": plan.pp,
            "pp_schedule": plan.pp_schedule if plan.pp > 1 else None, "pp_virtual": plan.pp_virtual,
            "microbatches": plan.grad_accum, "micro_batch": plan.micro_batch, "checkpointing": checkpointing,
            "step_time_s": step, "tokens_per_s_per_gpu": t["tokens_per_s_per_gpu"], "mfu_predicted": t["mfu_predicted"],
            "memory_per_gpu_bytes": memory, "headroom_bytes": capacity - memory, "time_shares": share,
            "why": _why(share), "layout": plan.to_dict()}


def _why(share: dict[str, float]) -> str:
    """What the step is spent on, largest first: why this layout is as fast as it is."""
    parts = sorted(share.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name.replace('_', ' ')} {value:.0%}" for name, value in parts[:3])


def render_search(r: dict) -> str:
    from tabulate import tabulate

    from planner.core.units import GiB

    moe = any(row["ep"] > 1 for row in r["top"])
    rows = [[i + 1, row["strategy"], row["tp"], *([row["ep"]] if moe else []), row["pp"] if row["pp"] == 1 else
             f"{row['pp']} {row['pp_schedule']}" + (f" v{row['pp_virtual']}" if row["pp_virtual"] > 1 else ""),
             row["micro_batch"], row["microbatches"], row["checkpointing"], f"{row['step_time_s']:.3g}",
             f"{row['tokens_per_s_per_gpu']:,.0f}", f"{row['mfu_predicted']:.1%}",
             f"{row['memory_per_gpu_bytes'] / GiB:,.1f}", row["why"]] for i, row in enumerate(r["top"])]
    table = tabulate(rows, headers=["#", "strategy", "tp", *(["ep"] if moe else []), "pp", "micro-batch", "m", "ckpt", "step s", "tok/s/GPU",
                                    "MFU", "GiB/GPU", "the step is spent on"], tablefmt="simple",
                     disable_numparse=True)
    return "\n".join([f"search: {r['explored']:,} runnable layouts on {r['gpus']:,} x {r['gpu']} ranked by predicted "
                      f"time per token; memory checked for {r['memory_checked']:,} of them ({r['seconds']:.1f} s)",
                      table])
