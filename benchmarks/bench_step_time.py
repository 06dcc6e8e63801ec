"""The step-time model (planner/compute/step_time.py) against published iteration times.

Fitted on one named table only: Narayanan et al. 2021, Table 1 (Megatron-LM weak scaling, 1.7B to
1T on A100 80GB, data/published/megatron_narayanan2021_table1.csv). Its three constants (matmul
efficiency at large width, the width at half of it, achieved link fraction) are least squares on
log time, shared by every row. Reported:

- every row's error with all ten rows in the fit, and with that row left out (leave-one-out);
- checks never fitted: Korthikanti et al. 2022, Table 5, full-recompute column (the same software
  family and GPU, other layouts and batches), from data/published/other_checks.csv.

    .venv/bin/python benchmarks/bench_step_time.py
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from planner.compute.step_time import A100_80GB_DGX, Efficiency, megatron_flops, step_time
from planner.core.parallel import ParallelPlan
from planner.model.shapes import ModelShape

DATA = Path(__file__).resolve().parents[1] / "data" / "published"


def _row(r: dict, heads: str, micro_batch: str, pp_virtual: int) -> tuple[ModelShape, ParallelPlan]:
    """A table row as the planner's own types: the model's shape and the layout."""
    shape = ModelShape(layers=int(r["num_layers"]), hidden=int(r["hidden_size"]), heads=int(r[heads]),
                       vocab=int(r["vocab_size"]), seq_len=int(r["seq_len"]), mlp="gelu", norm="layernorm",
                       position="learned")
    tp, pp, gpus, mb = int(r["tp"]), int(r["pp"]), int(r["num_gpus"]), int(r[micro_batch])
    dp = gpus // (tp * pp)
    schedule = "interleaved-1f1b" if pp_virtual > 1 else "1f1b"
    plan = ParallelPlan(engine="ddp", world=gpus, tp=tp, pp=pp, pp_virtual=pp_virtual, pp_schedule=schedule, micro_batch=mb,
                        grad_accum=int(r["global_batch_size"]) // (dp * mb))
    return shape, plan


def calibration_rows() -> list[tuple[str, ModelShape, ParallelPlan, float]]:
    """(name, shape, layout, measured seconds per iteration) of Narayanan et al. 2021, Table 1: the time
    follows from the achieved teraFLOP/s per GPU and the paper's own FLOP count."""
    rows = []
    for r in csv.DictReader((DATA / "megatron_narayanan2021_table1.csv").open()):
        layers_per_virtual = int(r["num_layers_per_virtual_pipeline_stage_script"] or 0)
        virtual = int(r["num_layers"]) // (int(r["pp"]) * layers_per_virtual) if layers_per_virtual else 1
        shape, plan = _row(r, "attention_heads", "micro_batch_size_script", virtual)
        measured = megatron_flops(shape, plan.batch) / (plan.world * float(r["tflops_per_gpu"]) * 1e12)
        rows.append((r["model"], shape, plan, measured))
    return rows


def check_rows() -> list[tuple[str, ModelShape, ParallelPlan, float]]:
    """Korthikanti et al. 2022, Table 5, full recomputation (iteration times as published)."""
    return [(r["check_id"], *_row(r, "attention_heads", "micro_batch_size", int(r["pp_virtual"] or 1)),
             float(r["iteration_time_s"]))
            for r in csv.DictReader((DATA / "other_checks.csv").open())
            if r["check_id"].startswith("korthikanti2022") and r["recompute"] == "full"]


def torchtitan_fsdp_check(theta) -> list[float]:
    """torchtitan's Llama 3.1 8B FSDP rows on H100 without torch.compile or Float8 (Tables 1 and 3), as
    the estimate predicts them (selective checkpointing, data-parallel traffic overlapped): tokens/s/GPU."""
    from dataclasses import replace

    from planner.compute.step_time import hardware_of
    from planner.model.hardware import BUILTIN_GPUS
    from planner.model.presets import get_preset

    shape = replace(get_preset("llama3-8b").shape, seq_len=8192)  # torchtitan's default sequence length
    hw = hardware_of(BUILTIN_GPUS["h100-sxm"], "bf16", 8)
    print("\ncheck, never fitted: torchtitan Llama 3.1 8B, FSDP on H100, bf16 without compile or Float8 (tokens/s/GPU)")
    errors = []
    for r in csv.DictReader((DATA / "torchtitan_llama3_h100.csv").open()):
        if r["model"] != "Llama 3.1 8B" or r["torch_compile"] == "true" or r["float8"] == "true":
            continue
        gpus, mb = int(r["num_gpus"]), int(r["local_batch_size"])
        plan = ParallelPlan(engine="fsdp", world=gpus, fsdp_mode="full", micro_batch=mb, grad_accum=1)
        t = step_time(shape, plan, hw, Efficiency(*theta), checkpointing="selective", overlap_dp=True)
        predicted = plan.batch * shape.seq_len / t.total_s / gpus
        measured = float(r["tps_per_gpu"])
        errors.append(abs(predicted / measured - 1))
        print(f"table {r['table']}, {gpus:>4} GPUs   measured {measured:>7,.0f}  predicted {predicted:>7,.0f}  "
              f"{predicted / measured - 1:+.1%}")
    return errors


def predict(shape: ModelShape, plan: ParallelPlan, theta) -> float:
    return step_time(shape, plan, A100_80GB_DGX, Efficiency(*theta)).total_s


def fit(rows) -> np.ndarray:
    def residuals(theta):
        return [math.log(predict(shape, plan, theta) / t) for _, shape, plan, t in rows]

    start = Efficiency()
    return least_squares(residuals, [start.matmul_max, start.matmul_half_k, start.link],
                         bounds=([0.1, 1.0, 0.05], [1.0, 1e5, 1.0])).x


def report(title: str, rows, theta, loo: dict[str, float] | None = None) -> list[float]:
    print(f"\n{title}")
    print(f"{'row':<28} {'measured s':>10} {'predicted s':>11} {'error':>8}" + ("  left out" if loo else ""))
    errors = []
    for name, shape, plan, t in rows:
        p = predict(shape, plan, theta)
        e = p / t - 1
        errors.append(abs(e))
        held = f"  {loo[name]:+8.1%}" if loo else ""
        print(f"{name:<28} {t:>10.3f} {p:>11.3f} {e:>+8.1%}{held}")
    print(f"mean |error| {np.mean(errors):.1%}, worst {np.max(errors):.1%}")
    return errors


def main() -> None:
    cal, checks = calibration_rows(), check_rows()
    theta = fit(cal)
    print(f"fitted on Narayanan et al. 2021 Table 1: matmul_max {theta[0]:.3f}, matmul_half_k {theta[1]:.1f}, "
          f"link {theta[2]:.3f}")
    loo = {}
    for i, (name, shape, plan, t) in enumerate(cal):
        loo[name] = predict(shape, plan, fit(cal[:i] + cal[i + 1:])) / t - 1
    report("calibration: Narayanan et al. 2021, Table 1 (in the fit; right column: fit without that row)",
           cal, theta, loo)
    print(f"leave-one-out mean |error| {np.mean(np.abs(list(loo.values()))):.1%}, "
          f"worst {np.max(np.abs(list(loo.values()))):.1%}")
    report("check, never fitted: Korthikanti et al. 2022, Table 5 (full recomputation)", checks, theta)
    torchtitan_fsdp_check(theta)


if __name__ == "__main__":
    main()
