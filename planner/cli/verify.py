"""`planner verify`: the planner's memory lines next to PyTorch's tracker on the real model and engine.

The measurement (`pretrain.verify`) needs torch and is imported only here, when asked for, so
`planner estimate` stays torch-free. Both sides describe the moment of the peak (the planner's
`MemoryBreakdown`: the start of backward, or the optimizer step); each line's own maximum over the
step is shown beside it for reference. The tracker sees tensors only: the planner's CUDA runtime and
allocator-fragmentation lines have no counterpart there and are compared out of the total
("allocated" = total - runtime - fragmentation).
"""

from __future__ import annotations

from tabulate import tabulate

from planner.core.errors import PlannerError
from planner.core.units import GiB
from planner.plan.estimate import estimate
from planner.plan.request import EstimateRequest, resolve_model
from planner.plan.result import tracked

COMPARED = ("weights", "master_weights", "gradients", "optimizer", "activations", "overhead")
#: The issue's bar: the planner within 10% of the tracker, in total and per line.
TOLERANCE = 0.10


def verify_request(req: EstimateRequest, steps: int = 2, jobs: int = 1) -> dict:
    """The planner's lines next to the tracker's; a pipeline's ranks are measured in `jobs` processes."""
    from planner.plan.trainable import check_arch_trainable, check_moe_trainable

    model = resolve_model(req)
    if model.shape.arch != "decoder":  # pretrain.verify lays out the decoder's blocks only
        raise PlannerError(f"--arch: verify measures decoders; {model.source} is {model.shape.arch} (its activations "
                           "are checked against our model's saved tensors by the tests, its states by training runs)")
    check_arch_trainable(model)
    check_moe_trainable(model, req.layout)  # an MoE layout as the trainer runs it, or one line why
    from pretrain.verify import measure  # torch: only when verifying

    planned = estimate(req)
    measured = measure(req, steps, jobs)
    head = {"engine": measured["engine"], "world_size": measured["world_size"], "seconds": measured["seconds"],
            "strategy": planned.training.strategy, "peak_moment": planned.memory.peak_moment,
            "model": planned.to_dict()["model"], "micro_batch": req.micro_batch}
    if "stages" not in measured:
        return {**head, **compare(planned.tracked_lines(), measured),
                "not_tracked": {"runtime": planned.memory.lines["overhead"] - planned.tracked_lines()["overhead"],
                                "fragmentation": planned.memory.lines["fragmentation"]}}
    runtime = req.runtime_gib * 2**30
    planned_stages = planned.to_dict()["pipeline"]["stages"]
    stages = [{"pp_rank": got["pp_rank"], "stages": got["stages"], "peak_moment": want["peak_moment"],
               "microbatches_in_flight": got["microbatches_in_flight"],
               **compare(_as_the_tracker_files_them(tracked(want["memory_bytes"], runtime), want["peak_moment"]), got)}
              for want, got in zip(planned_stages, measured["stages"], strict=True)]
    return {**head, "stages": stages, "within_tolerance": all(s["within_tolerance"] for s in stages),
            "not_tracked": {"runtime": runtime, "fragmentation": planned.memory.lines["fragmentation"]}}


def _as_the_tracker_files_them(lines: dict[str, float], moment: str) -> dict[str, float]:
    """In a pipeline's backward (`planner.memory.peak.pipeline_fsdp_backward`) the gradients accumulate as
    FSDP's unsharded buffers, which FSDPMemTracker counts as activations: compare them there."""
    if moment != "layer-backward":
        return lines
    return {**lines, "gradients": 0.0, "activations": lines["activations"] + lines["gradients"]}


def compare(predicted: dict[str, float], measured: dict) -> dict:
    """The planner's tracked lines against the tracker's at its peak (and each line's own maximum)."""
    if predicted["master_weights"] == 0:  # no separate master copy: the sharded parameters are the weights
        for view in ("at_peak", "category_max"):
            measured[view]["weights"] += measured[view].pop("master_weights")
            measured[view]["master_weights"] = 0.0
    rows = {}
    for line in (*COMPARED, "allocated"):
        got = measured["peak_bytes"] if line == "allocated" else measured["at_peak"][line]
        want = predicted[line]
        rows[line] = {"planner": want, "tracker_at_peak": got,
                      "tracker_max": measured["peak_bytes"] if line == "allocated" else measured["category_max"][line],
                      "ratio": want / got if got else None}
    return {"lines": rows,
            "within_tolerance": all(r["ratio"] is not None and abs(r["ratio"] - 1) <= TOLERANCE
                                    for r in rows.values() if max(r["tracker_at_peak"], r["planner"])
                                    > 0.01 * measured["peak_bytes"])}


def render_verify(r: dict) -> str:
    m = r["model"]
    head = (f"verify: {m['layers']} x {m['hidden']} ({m['heads']} heads, {m['kv_heads']} kv), seq {m['seq_len']}, "
            f"micro-batch {r['micro_batch']}, {r['engine']} at world size {r['world_size']}: real model and engine, "
            f"fake tensors, PyTorch memory tracker ({r['seconds']:.1f} s)")
    nt = r["not_tracked"]
    verdict = "within" if r["within_tolerance"] else "NOT within"
    parts = [head]
    for stage in r.get("stages") or [r]:
        if "pp_rank" in stage:
            parts.append(f"pipeline rank {stage['pp_rank']} (stages {stage['stages']}, "
                         f"{stage['microbatches_in_flight']} stage-forwards in flight):")
        parts.append(_table(stage["lines"]))
    return "\n".join([*parts,
                      f"Not seen by the tracker (planner only): CUDA runtime {nt['runtime'] / GiB:.2f} GiB, "
                      f"fragmentation {nt['fragmentation'] / GiB:.2f} GiB.",
                      f"Every line that is over 1% of the peak is {verdict} {TOLERANCE:.0%} of the tracker."])


def _table(lines: dict) -> str:
    rows = []
    for line, v in lines.items():
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.3f}"
        rows.append([line.replace("_", " "), f"{v['planner'] / GiB:,.3f}", f"{v['tracker_at_peak'] / GiB:,.3f}",
                     ratio, f"{v['tracker_max'] / GiB:,.3f}"])
    return tabulate(rows, headers=["at the peak, per rank", "planner GiB", "tracker GiB", "planner/tracker",
                                   "(line's own max GiB)"], tablefmt="simple", disable_numparse=True)
